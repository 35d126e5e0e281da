"""The host side of cell-written trees without a cell: hypothesis-made tar uploads land only
inside; artifacts and copies of a tree that a thread keeps swapping (directories for symlinks
to a host canary, files for FIFOs) never show the canary nor block."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.test_jobs_tar import make_tar, member

from nixcell.jobs.contract import JobError
from nixcell.jobs.model import Caller
from nixcell.jobs.treewalk import DIR_FLAGS, copy_tree
from nixcell.jobs.workspace import Workspaces

OWNER = Caller("uid:5", "u")
NAME = st.lists(
    st.sampled_from(["a", "b", "..", ".", "", "/", "c\n", "d\x00e", "é", "x" * 300]),
    min_size=1,
    max_size=5,
).map("".join)
MEMBER = st.tuples(
    NAME,
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
    st.sampled_from(["a", "..", "../..", "/etc", "b/../..", ".", "a/b", ""]),
    st.sampled_from([0o644, 0o755, 0o4755, 0o2775, 0o1777]),
)


def _inside(root: Path, path: Path) -> bool:
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + "/")


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(MEMBER, min_size=1, max_size=6))
def test_any_upload_is_refused_in_one_line_or_lands_inside(tmp_path_factory, members):
    base = tmp_path_factory.mktemp("up")
    ws = Workspaces(SimpleNamespace(state_dir=str(base / "state")))
    tar = []
    for name, kind, target, mode in members:
        attrs = {"mode": mode}
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            attrs["linkname"] = target
        tar.append(member(name, kind, b"x" if kind == tarfile.REGTYPE else b"", **attrs))
    try:
        body = make_tar(*tar)
    except (ValueError, UnicodeError):
        return  # tarfile itself cannot write it

    async def chunks():
        yield body

    uploads = base / "state" / "uploads"
    try:
        upload_id = asyncio.run(ws.store_upload(OWNER, chunks()))
    except JobError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("upload refused: ")
        assert os.listdir(uploads) == []
        return
    root = (uploads / upload_id / "tree").resolve()
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(here) / name
            assert _inside(root, path), path
            st_ = path.lstat()
            assert not st_.st_mode & 0o6000 or (path.is_dir() and not st_.st_mode & 0o4000)
            assert st_.st_nlink == 1 or path.is_dir()


def _swapper(root: Path, canary: Path, stop: threading.Event) -> None:
    """Keep replacing ``d`` (a directory with a file) by a symlink to the canary and back, and
    ``f`` (a file) by a FIFO and back."""
    while not stop.is_set():
        with contextlib.suppress(OSError):
            os.rename(root / "d", root / "d.old")
            os.symlink(canary, root / "d")
            os.unlink(root / "f")
            os.mkfifo(root / "f")
            time.sleep(0.001)  # each state holds a while, so the walk meets both
            os.unlink(root / "d")
            os.rename(root / "d.old", root / "d")
            os.unlink(root / "f")
            (root / "f").write_text("plain\n")
            time.sleep(0.001)


def test_artifacts_and_copies_of_a_tree_swapped_underneath(tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "secret").write_text("HOST-CANARY\n")
    job = tmp_path / "job"
    root = job / "workspace"
    (root / "d").mkdir(parents=True)
    (root / "d" / "inner").write_text("inner\n")
    (root / "f").write_text("plain\n")
    ws = Workspaces(SimpleNamespace(state_dir=str(tmp_path / "state")))
    stop = threading.Event()
    thread = threading.Thread(target=_swapper, args=(root, canary, stop), daemon=True)
    thread.start()
    try:
        for i in range(150):
            data = b"".join(ws.artifacts(str(job)))
            assert b"HOST-CANARY" not in data
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:  # always a valid tar
                names = tar.getnames()
            assert "d/secret" not in names
            dest = tmp_path / f"copy{i}"
            dest.mkdir()
            src, dst = os.open(root, DIR_FLAGS), os.open(dest, DIR_FLAGS)
            try:
                copy_tree(src, dst)
            finally:
                os.close(src)
                os.close(dst)
            for here, _, files in os.walk(dest):  # links were copied as links: not followed
                for name in files:
                    path = Path(here) / name
                    assert path.is_symlink() or path.is_file(), path  # no FIFO, no device
                    if not path.is_symlink():
                        assert b"HOST-CANARY" not in path.read_bytes()
    finally:
        stop.set()
        thread.join()
    assert (canary / "secret").read_text() == "HOST-CANARY\n"
