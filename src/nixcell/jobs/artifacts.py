"""A finished job's workspace as a tar stream, read the way a hostile tree must be read.

The cell controlled every byte and name of ``{job_dir}/workspace``. The walk (``treewalk.walk``)
opens each directory and file relative to its parent's fd with ``O_NOFOLLOW`` and checks it is
the inode ``lstat`` saw; symlinks go into the tar as symlinks (their targets are never opened),
devices, FIFOs and sockets are left out, hard links become plain copies of what the cell could
read anyway, and the depth is bounded. A workspace the cell replaced with a symlink (or
anything but a directory) is an error, not the file it points to. A file that shrinks while it
is read is padded with zeros to its recorded size, one that grows is cut: the tar stays valid.
"""

from __future__ import annotations

import logging
import os
import stat
import tarfile
from collections.abc import Iterator

from nixcell.jobs.contract import Conflict, JobError
from nixcell.jobs.treewalk import DIR_FLAGS, MAX_DEPTH, WalkStats, walk

log = logging.getLogger(__name__)

CHUNK = 1 << 16


def open_workspace(job_dir: str) -> int:
    """An fd of ``job_dir``/workspace (the job dir is the server's; the name in it is not)."""
    try:
        parent = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise JobError("the job has no workspace", status=404) from None
    try:
        return os.open("workspace", DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        raise JobError("the job has no workspace", status=404) from None
    except OSError:
        raise Conflict(
            "the job's workspace is no longer a directory (the job replaced it)"
        ) from None
    finally:
        os.close(parent)


def tar_stream(job_dir: str, *, max_depth: int = MAX_DEPTH) -> Iterator[bytes]:
    """The tar (pax format) of the workspace, in chunks; the workspace is opened at once, so
    a refusal comes before the first chunk."""
    top = open_workspace(job_dir)
    return _chunks(top, max_depth)


def _chunks(top: int, max_depth: int) -> Iterator[bytes]:
    stats = WalkStats()
    try:
        for entry in walk(top, max_depth=max_depth, stats=stats):
            info = tarfile.TarInfo(entry.path)
            info.mode = stat.S_IMODE(entry.st.st_mode) & 0o1777
            info.mtime = max(0, int(entry.st.st_mtime))
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target or ""
            else:
                info.size = entry.st.st_size
            yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            if entry.kind == "file":
                assert entry.fd is not None
                reader = _Reader(entry.fd, info.size)
                while chunk := reader.read(CHUNK):
                    yield chunk
                if info.size % tarfile.BLOCKSIZE:
                    yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
        yield b"\0" * (2 * tarfile.BLOCKSIZE)
    finally:
        os.close(top)
    if stats.skipped or stats.too_deep:
        log.info(
            "artifacts: left out %d special or changing entries, %d directories too deep",
            stats.skipped,
            stats.too_deep,
        )


class _Reader:
    """Exactly ``size`` bytes of an open file: zeros if it got shorter, cut if longer."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left = fd, size

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else min(n, self.left)
        if want <= 0:
            return b""
        try:
            data = os.read(self.fd, want)
        except BlockingIOError:
            data = b""
        if not data:
            data = b"\0" * want
        self.left -= len(data)
        return data
