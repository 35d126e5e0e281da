"""``submit --upload DIR``: DIR as a tar stream, made while it is sent (never whole in memory).

Walked without following links: a symlink is stored as a link (the daemon checks where it
points when it unpacks), files are opened with O_NOFOLLOW and described by ``fstat`` of what was
opened (no swap between the check and the read), devices, FIFOs and sockets are skipped.
"""

from __future__ import annotations

import os
import stat
import tarfile
import threading
from collections.abc import Iterator

from nixcell.errors import UsageError

_CHUNK = 1 << 16


class _Pipe:
    """A file-like sink tarfile writes to; the chunks come out of ``chunks``."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.write_fd, view) :]
        return len(data)

    def chunks(self) -> Iterator[bytes]:
        while chunk := os.read(self.read_fd, _CHUNK):
            yield chunk


def _add(tar: tarfile.TarFile, top: str, rel: str) -> None:
    path = os.path.join(top, rel)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or stat.S_ISDIR(st.st_mode):
        info = tar.gettarinfo(path, arcname=rel)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info)
        return
    if not stat.S_ISREG(st.st_mode):
        return  # devices, FIFOs, sockets: not workspace content
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = tar.gettarinfo(arcname=rel, fileobj=f)
        if not info.isreg():
            return
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, f)


def _write(top: str, pipe: _Pipe, errors: list[BaseException]) -> None:
    try:
        with tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for here, dirs, files in os.walk(top, followlinks=False):
                dirs.sort()
                for name in sorted(dirs) + sorted(files):
                    _add(tar, top, os.path.relpath(os.path.join(here, name), top))
    except BaseException as exc:  # handed to the reading side
        errors.append(exc)
    finally:
        os.close(pipe.write_fd)


def tar_chunks(directory: str) -> Iterator[bytes]:
    """The tar of ``directory``'s contents (member names relative to it), chunk by chunk."""
    top = os.path.abspath(directory)
    try:
        if not stat.S_ISDIR(os.lstat(top).st_mode):
            raise UsageError(f"--upload {directory}: not a directory")
    except FileNotFoundError:
        raise UsageError(f"--upload {directory}: no such directory") from None
    pipe = _Pipe()
    errors: list[BaseException] = []
    writer = threading.Thread(target=_write, args=(top, pipe, errors), daemon=True)
    writer.start()
    try:
        yield from pipe.chunks()
    finally:
        os.close(pipe.read_fd)
        writer.join()
    if errors:
        exc = errors[0]
        if isinstance(exc, OSError):
            raise UsageError(f"--upload {directory}: {exc.strerror} ({exc.filename})") from None
        raise exc
