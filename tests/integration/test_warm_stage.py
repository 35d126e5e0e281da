"""A root-run cell's binds on the warm path: the stage is built in the process becoming bwrap.

``sandbox/stage.build_here`` runs in the forked child of ``direct.py`` (as root, before it drops
to the cell's uid), in place of the namespace helper and ``nsenter``. What must hold is what held
before: the cell sees its binds owned by its own uid, nothing is mounted in the host's mount
namespace, no process of the cell (bwrap included) holds host root, what is bound is what was
checked (never a link planted since), and a bind that cannot be staged is refused in one line.
Each run here is the real CLI, twice in a fresh home: the first plans and caches, the second is
warm (the cache entry is read, not rewritten).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli
from tests.integration.test_fast_path import _entry

from nixcell.sandbox.identity import subordinate_range

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the idmapped stage is root-run only")
PACKAGES = ("-p", "bash", "-p", "coreutils")
STAGE, SCRATCH = "/run/nixcell/stage", "/run/nixcell/scratch"


def _warm(home: Path, flags: list[str], command: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Cache the plan of ``flags`` (a first run of ``true``), then run ``command`` warm."""
    env = {"NIXCELL_HOME": str(home)}
    first = cli("run", *PACKAGES, *flags, "--", "true", env=env, input=b"")
    assert (home / "cache" / "plans").is_dir(), first.stderr
    before = _entry(home)
    done = cli("run", *PACKAGES, *flags, "--", *command, env=env, input=b"")
    after = _entry(home)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "planned again"
    return done


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_warm_binds_are_owned_by_the_cell_and_written_as_the_invoker(offline_set, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "f").write_text("ro\n")
    (tmp_path / "file").write_text("file\n")
    flags = ["--bind", f"{rw}:/rw", "--ro-bind", f"{ro}:/ro", "--ro-bind", f"{tmp_path}/file:/f"]
    script = (
        "id -u; stat -c '%u %g' /rw /ro /ro/f /f; echo made > /rw/new; mkdir /rw/d; cat /f;"
        " if echo x > /ro/g 2>/dev/null; then echo ro-written; fi"
    )
    done = _warm(tmp_path / "home", flags, ["bash", "-c", script])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode().splitlines()
    uid = lines[0]
    assert lines[1:5] == [f"{uid} {uid}"] * 4, lines  # the cell's own uid sees its binds
    assert lines[5] == "file" and "ro-written" not in lines
    for made in (rw / "new", rw / "d"):  # written on disk as whoever ran nixcell (root)
        st = made.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), made
    assert not (ro / "g").exists()


@pytest.mark.parametrize(
    ("flags", "mounted"),
    [
        (["--bind", "{data}:/data"], [STAGE]),
        (["--disk", "16M"], [SCRATCH]),
        (["--disk", "16M", "--ro-bind", "{data}:/data"], [STAGE, SCRATCH]),
    ],
    ids=["stage", "scratch", "both"],
)
def test_warm_stage_lives_only_in_bwraps_namespace_and_nothing_holds_root(
    offline_set, tmp_path, flags, mounted
):
    """Seen from the host while a warm cell runs: bwrap and the cell's pid-1 run as the cell's
    host uid with no capability; the stage and the --disk tmpfs are mounted in bwrap's mount
    namespace, not the host's; and the namespace is gone with the cell."""
    data = tmp_path / "data"
    data.mkdir()
    home = tmp_path / "home"
    flags = [f.format(data=data) for f in flags]
    env = {**os.environ, "NIXCELL_HOME": str(home)}
    assert cli("run", *PACKAGES, *flags, "--", "true", env=env).returncode == 0
    argv = [NIXCELL, "run", *PACKAGES, *flags, "--", "bash", "-c", "echo ready; read -r _"]
    with subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            (bwrap,) = (p for p in _children(proc.pid) if _status(p)["Name"] == "bwrap")
            host_ns = os.readlink("/proc/self/ns/mnt")
            assert os.readlink(f"/proc/{bwrap}/ns/mnt") != host_ns
            for point in mounted:
                assert f" {point} " in Path(f"/proc/{bwrap}/mountinfo").read_text()
                assert point not in Path("/proc/self/mountinfo").read_text()
            rng = subordinate_range()
            for pid in (bwrap, *_children(bwrap)):
                status = _status(pid)
                uids = {int(u) for u in status["Uid"].split()}
                gids = {int(g) for g in status["Gid"].split()}
                assert len(uids) == 1 and uids.pop() in rng, status["Uid"]
                assert len(gids) == 1 and gids.pop() in rng, status["Gid"]
                assert status["Groups"] == ""
            assert int(_status(bwrap)["CapEff"], 16) == 0  # (in the host's user namespace)
        finally:
            proc.communicate(b"\n", timeout=60)
    assert proc.returncode == 0
    assert "nixcell" not in Path("/proc/self/mountinfo").read_text()


@pytest.mark.parametrize(
    "flags",
    [
        ["--bind", "{w}:/w"],
        ["--ro-bind", "{w}:/w", "--ro-bind", "{w}/f:/f"],
        ["--workdir", "{w}"],
    ],
    ids=["rw", "ro-dir-and-file", "workdir"],
)
def test_warm_staged_cell_inherits_no_file_descriptor(offline_set, tmp_path, flags):
    """The bind sources' O_PATH fds, the idmap user namespace, the stage clones: none reaches
    the cell (the child closes all but bwrap's before exec)."""
    work = tmp_path / "w"
    work.mkdir()
    (work / "f").write_text("")
    given = [f.format(w=work) for f in flags]
    done = _warm(tmp_path / "home", given, ["ls", "/proc/self/fd"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"0", b"1", b"2", b"3"]  # (3: ls's own listing)


# A bind the stage cannot honour, from several sides: each is refused before the cell runs, in
# one line, by the warm path as by the normal path (never bound some other way).
def _plant_link(tmp: Path) -> None:
    (tmp / "src").rename(tmp / "moved")
    (tmp / "src").symlink_to("/etc")


def _plant_parent_link(tmp: Path) -> None:
    (tmp / "outer").rename(tmp / "outer-moved")
    (tmp / "outer").symlink_to("/etc")


@pytest.mark.parametrize(
    ("source", "change", "words"),
    [
        ("/sys/kernel/mm", None, "does not support idmapped mounts"),
        ("{t}/src", _plant_link, "is a symbolic link"),
        ("{t}/outer/inner", _plant_parent_link, "symbolic link"),
    ],
    ids=["no-idmap-filesystem", "source-now-a-link", "parent-now-a-link"],
)
def test_warm_stage_refusals_are_one_line(offline_set, tmp_path, source, change, words):
    (tmp_path / "src").mkdir()
    (tmp_path / "outer" / "inner").mkdir(parents=True)
    src = source.format(t=tmp_path)
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    argv = ("run", *PACKAGES, "--ro-bind", f"{src}:/b", "--", "ls", "/b")
    first = cli(*argv, env=env, input=b"")
    if change is not None:
        assert first.returncode == 0, first.stderr
        change(tmp_path)
    for done in (cli(*argv, env=env, input=b""), cli(*argv, env=env, input=b"")):
        err = [ln for ln in done.stderr.decode().splitlines() if "offline package set" not in ln]
        assert done.returncode in (1, 2) and len(err) == 1, done.stderr
        assert words in err[0] and "Traceback" not in err[0]
        assert done.stdout == b""  # the cell never ran: nothing of /etc was listed


def test_warm_disk_bounds_every_writable_area_together(offline_set, tmp_path):
    script = (
        "head -c 6M /dev/zero > /tmp/a && echo tmp; head -c 6M /dev/zero > /dev/shm/b && echo shm;"
        " head -c 6M /dev/zero > ~/c 2>/dev/null && echo home; stat -c %u /tmp /dev/shm ~; id -u"
    )
    done = _warm(tmp_path / "home", ["--disk", "16M"], ["bash", "-c", script])
    lines = done.stdout.decode().split()
    assert lines[:2] == ["tmp", "shm"] and "home" not in lines, done.stdout  # 18M > 16M
    assert lines[-4:] == [lines[-1]] * 4  # the areas belong to the cell's own uid
