"""Reading a file the user named (a policy, a CA, a config, a credential file): never a hang.

``/dev/zero``, a FIFO with no writer, a directory or a 2 GiB file given by mistake must each be
one line, not a process that blocks or fills memory. So the file is opened non-blocking, must be
a regular file, and is read up to a limit that no real policy or certificate bundle comes near.
"""

from __future__ import annotations

import os
import stat

from nixcell.errors import NixcellError, UsageError

MAX_INPUT = 1 << 20  # 1 MiB: a policy, CA bundle or config file is kilobytes


def read_input(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: type[NixcellError] = UsageError,
    limit: int = MAX_INPUT,
) -> bytes:
    """The bytes of ``path``; ``error(f"{what} {path}: reason")`` for anything else."""
    name = os.fspath(path)

    def fail(reason: str) -> NixcellError:
        return error(f"{what} {name}: {reason}")

    try:  # O_NONBLOCK: opening a FIFO with no writer returns at once (and is refused below)
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise fail("Is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"is a {_kind(st.st_mode)}, not a regular file")
        if st.st_size > limit:
            raise fail(f"is {_mib(st.st_size)}, over the {_mib(limit)} limit")
        chunks, total = [], 0
        while True:  # the size can change while we read: the limit holds for what is read
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise fail(f"is over the {_mib(limit)} limit")
    except OSError as exc:
        raise fail(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)


def read_text(
    path: str | os.PathLike[str],
    what: str,
    *,
    error: type[NixcellError] = UsageError,
    limit: int = MAX_INPUT,
) -> str:
    """``read_input`` decoded as UTF-8; a bad byte is reported as ``path:line``."""
    data = read_input(path, what, error=error, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{os.fspath(path)}:{line}: not valid UTF-8") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB" if size >= 1 << 20 else f"{size} bytes"
