"""Host-side file operations on paths a cell controls: removal, atomic writes, output files.

Each test plants what a hostile cell would (symlinks to a victim directory, hard links to a
victim file, FIFOs, device nodes, unreadable directories, very deep trees, a thread renaming
directories mid-walk) and checks the victim is untouched and the operation did what it said.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.errors import StateError
from nixcell.fsio import open_output, remove_tree, write_atomic


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A host directory and file the cell must not be able to change through us."""
    v = tmp_path / "victim"
    v.mkdir(mode=0o755)
    v.chmod(0o755)
    (v / "secret").write_text("host data")
    (v / "sub").mkdir()
    return v


def _victim_intact(v: Path) -> None:
    assert stat.S_IMODE(v.stat().st_mode) == 0o755
    assert stat.S_IMODE((v / "sub").stat().st_mode) != 0o700 or os.getuid() != 0
    assert (v / "secret").read_text() == "host data"
    assert sorted(p.name for p in v.iterdir()) == ["secret", "sub"]


PLANTS = {
    "symlink to dir": lambda w, v: os.symlink(v, w / "link"),
    "symlink to file": lambda w, v: os.symlink(v / "secret", w / "flink"),
    "nested symlink": lambda w, v: ((w / "a").mkdir(), os.symlink(v, w / "a" / "l")),
    "symlink as dir name": lambda w, v: os.symlink(v / "sub", w / "sub"),
    "hard link": lambda w, v: os.link(v / "secret", w / "hard"),
    "fifo": lambda w, v: os.mkfifo(w / "fifo"),
    "device node": lambda w, v: os.mknod(w / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
    "unix socket name": lambda w, v: os.mknod(w / "sock", 0o600 | stat.S_IFIFO),
    "unreadable dir": lambda w, v: ((w / "u").mkdir(), (w / "u/f").touch(), (w / "u").chmod(0)),
    "read-only dir": lambda w, v: ((w / "r").mkdir(), (w / "r/f").touch(), (w / "r").chmod(0o500)),
    "dir symlink inside unreadable": lambda w, v: (
        (w / "x").mkdir(),
        os.symlink(v, w / "x" / "l"),
        (w / "x").chmod(0),
    ),
}


@pytest.mark.parametrize("plant", list(PLANTS), ids=list(PLANTS))
def test_remove_tree_never_follows_what_the_cell_planted(tmp_path, victim, plant):
    work = tmp_path / "ws"
    work.mkdir()
    PLANTS[plant](work, victim)
    remove_tree(work)
    assert not os.path.lexists(work)
    _victim_intact(victim)
    assert (victim / "secret").stat().st_nlink == 1


def test_remove_tree_of_a_symlink_removes_only_the_link(tmp_path, victim):
    link = tmp_path / "ws"
    os.symlink(victim, link)
    remove_tree(link)
    assert not os.path.lexists(link)
    _victim_intact(victim)


def test_remove_tree_handles_trees_deeper_than_any_recursion_or_fd_limit(tmp_path, victim):
    work = tmp_path / "ws"
    work.mkdir()
    fd = os.open(work, os.O_RDONLY)
    for i in range(2500):  # deeper than PATH_MAX allows by name, and than MAX_OPEN fds
        os.mkdir("d", dir_fd=fd)
        if i % 500 == 0:
            os.symlink(victim, "l", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)
    before = len(os.listdir("/proc/self/fd"))
    remove_tree(work)
    assert not os.path.lexists(work)
    assert len(os.listdir("/proc/self/fd")) == before  # no fd leaked
    _victim_intact(victim)


def test_remove_tree_survives_a_cell_renaming_directories_mid_walk(tmp_path, victim):
    """A racing thread keeps swapping directories for symlinks to the victim and back."""
    for round_ in range(5):
        work = tmp_path / f"ws{round_}"
        for i in range(30):
            (work / f"d{i}" / "deeper" / "x").mkdir(parents=True)
            (work / f"d{i}" / "deeper" / "x" / "f").touch()
        stop = threading.Event()

        def renamer(work: Path = work, stop: threading.Event = stop) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                src, dst = work / f"d{n % 30}", work / f"moved{n}"
                try:
                    os.rename(src, dst)
                    os.symlink(victim, src)  # the old name now leads to the host directory
                    os.rename(work / f"d{(n + 7) % 30}", dst / "into")
                except OSError:
                    pass

        thread = threading.Thread(target=renamer)
        thread.start()
        try:
            remove_tree(work)
        except StateError:
            pass  # giving up is allowed; following a link is not
        finally:
            stop.set()
            thread.join()
        remove_tree(work)
        assert not os.path.lexists(work)
        _victim_intact(victim)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=4),
            st.sampled_from(["dir", "file", "dirlink", "filelink", "hardlink", "fifo", "chmod0"]),
        ),
        max_size=25,
    )
)
def test_remove_tree_property_any_planted_tree(tmp_path_factory, entries):
    base = tmp_path_factory.mktemp("prop")
    victim = base / "victim"
    victim.mkdir(mode=0o755)
    victim.chmod(0o755)
    (victim / "secret").write_text("host data")
    (victim / "sub").mkdir()
    work = base / "ws"
    work.mkdir()
    for parts, kind in entries:
        where = work.joinpath(*parts)
        try:
            where.mkdir(parents=True, exist_ok=True)
            name = where / f"n{len(os.listdir(where))}"
            match kind:
                case "dir":
                    name.mkdir()
                case "file":
                    name.write_text("x")
                case "dirlink":
                    os.symlink(victim, name)
                case "filelink":
                    os.symlink(victim / "secret", name)
                case "hardlink":
                    os.link(victim / "secret", name)
                case "fifo":
                    os.mkfifo(name)
                case "chmod0":
                    name.mkdir()
                    (name / "f").touch()
                    name.chmod(0)
        except OSError:
            continue  # e.g. a path through a symlink or an unreadable dir: fine, skip
    remove_tree(work)
    assert not os.path.lexists(work)
    _victim_intact(victim)
    assert (victim / "secret").stat().st_nlink == 1


# -- write_atomic and open_output -------------------------------------------------------------


OUTPUT_PLANTS = {
    "symlink to victim file": lambda p, v: os.symlink(v / "secret", p),
    "dangling symlink": lambda p, v: os.symlink(v / "new-file", p),
    "hard link to victim file": lambda p, v: os.link(v / "secret", p),
    "fifo": lambda p, v: os.mkfifo(p),
    "device node": lambda p, v: os.mknod(p, 0o600 | stat.S_IFCHR, os.makedev(1, 3)),
    "directory": lambda p, v: p.mkdir(),
}


@pytest.mark.parametrize("plant", list(OUTPUT_PLANTS), ids=list(OUTPUT_PLANTS))
def test_open_output_refuses_what_was_planted_at_its_name(tmp_path, victim, plant):
    target = tmp_path / "audit.jsonl"
    OUTPUT_PLANTS[plant](target, victim)
    with pytest.raises(StateError) as info:
        open_output(target)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    _victim_intact(victim)
    assert not (victim / "new-file").exists()


def test_open_output_appends_to_a_plain_file_and_creates_a_missing_one(tmp_path):
    existing = tmp_path / "a.jsonl"
    existing.write_text("one\n")
    for path in (existing, tmp_path / "b.jsonl"):
        fd = open_output(path)
        os.write(fd, b"two\n")
        os.close(fd)
    assert existing.read_text() == "one\ntwo\n"
    assert (tmp_path / "b.jsonl").read_text() == "two\n"
    assert stat.S_IMODE((tmp_path / "b.jsonl").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "plant", [p for p in OUTPUT_PLANTS if p != "directory"], ids=lambda p: str(p)
)
def test_write_atomic_replaces_a_planted_link_not_writing_through_it(tmp_path, victim, plant):
    target = tmp_path / "learned.toml"
    OUTPUT_PLANTS[plant](target, victim)
    write_atomic(target, "policy")
    assert not target.is_symlink() and target.read_text() == "policy"
    assert target.stat().st_nlink == 1
    _victim_intact(victim)
    assert not (victim / "new-file").exists()


def test_write_atomic_with_a_dir_fd_is_not_redirected_by_a_swapped_directory(tmp_path, victim):
    """The directory is opened before the cell runs; swapping it for a symlink changes nothing."""
    out = tmp_path / "out"
    out.mkdir()
    dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(out, tmp_path / "out.old")
        os.symlink(victim, out)  # the cell's swap: out/ now leads to the victim
        write_atomic("learned.toml", "policy", dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    assert (tmp_path / "out.old" / "learned.toml").read_text() == "policy"
    _victim_intact(victim)


def test_write_atomic_temp_names_planted_in_advance_are_not_followed(tmp_path, victim):
    target = tmp_path / "f"
    stop = threading.Event()

    def planter() -> None:  # a cell watching the directory plants links under temp-like names
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(OSError):
                os.symlink(victim / "secret", tmp_path / f".f.{os.getpid()}.{i:012x}.tmp")

    thread = threading.Thread(target=planter)
    thread.start()
    try:
        for _ in range(200):
            write_atomic(target, "ok")
    finally:
        stop.set()
        thread.join()
    assert target.read_text() == "ok"
    _victim_intact(victim)
