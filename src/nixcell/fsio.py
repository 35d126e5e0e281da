"""Replacing a file whole: readers see the old contents or the new, never a torn file.

Caches, the plan cache, learned policies, the offline set's state and the CA all write this way.
Temp names carry the pid and a random part, so threads of one process never share one.
"""

from __future__ import annotations

import contextlib
import os


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int | None = None,
    durable: bool = False,
) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over ``path``.

    ``mode``: exact permissions (default: 0666 minus the umask). ``durable``: fsync the file and
    its directory (for keys and certificates, not for caches).
    """
    target = os.fspath(path)
    tmp = f"{target}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        dir_fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
