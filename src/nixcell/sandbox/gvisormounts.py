"""A gVisor cell's mount points inside host directories it binds, made by nixcell first.

runsc makes a missing mount point itself, resolving the destination in the sandbox: a symlink
planted in a bound host directory (a workdir a previous cell wrote) moves the mount elsewhere in
the cell, or makes runsc create directories where the link leads on the host, and what it makes
is owned by the cell's raw slot uid. So nixcell walks each such destination from an fd of the
bound directory (as the backend binds it: a staged bind's host source reached with no link
followed), one component at a time with O_NOFOLLOW: a symbolic link, or a component of the wrong
kind, is refused in one line; a missing one is made there, as the invoker (mkdirat, or an
O_EXCL|O_NOFOLLOW create for a file's mount point). runsc then finds every point in place.
"""

from __future__ import annotations

import contextlib
import os
import stat

from nixcell.errors import SandboxError

O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def make(points: list[tuple[str, str, str, bool]], staged: dict[str, str]) -> None:
    """Make (or check) each ``gvisorspec.nested_points`` entry; ``staged``: the idmapped
    bind's path under the cell directory -> its host source (walked instead: made through the
    idmapped mount, a directory would belong to the cell's uid)."""
    for dest, source, rel, is_dir in points:
        host = staged.get(source, source)
        base = _open_base(host, source in staged, dest)
        try:
            _walk(base, host, rel, is_dir, dest)
        finally:
            os.close(base)


def _open_base(host: str, staged: bool, dest: str) -> int:
    if staged:
        from nixcell.sandbox.bwrapio import open_nofollow

        return open_nofollow(host)
    try:  # a path the invoker named (runsc resolves it the same way)
        return os.open(host, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"cannot mount at {dest}: {host}: {exc.strerror}") from None


def _refuse(dest: str, where: str, why: str) -> SandboxError:
    return SandboxError(f"the gvisor backend refuses the mount at {dest}: {where} {why}")


def _walk(base: int, host: str, rel: str, is_dir: bool, dest: str) -> None:
    parts = [p for p in rel.split("/") if p]
    fd = os.dup(base)
    try:
        for i, part in enumerate(parts):
            where = os.path.join(host, *parts[: i + 1])
            last = i == len(parts) - 1
            want_dir = is_dir or not last
            try:
                nxt = _child(fd, part, want_dir)
            except OSError as exc:
                raise _refuse(dest, where, f"cannot be made: {exc.strerror}") from None
            try:
                mode = os.fstat(nxt).st_mode
                if stat.S_ISLNK(mode):
                    raise _refuse(dest, where, "is a symbolic link (a mount must not pass one)")
                if want_dir != stat.S_ISDIR(mode) or not (want_dir or stat.S_ISREG(mode)):
                    kind = "a directory" if want_dir else "a regular file"
                    raise _refuse(dest, where, f"is not {kind}")
            except BaseException:
                os.close(nxt)
                raise
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def _child(fd: int, name: str, is_dir: bool) -> int:
    """An O_PATH fd of ``name`` in ``fd``, never through a link; made first if missing."""
    with contextlib.suppress(FileNotFoundError):
        return os.open(name, O_PATH, dir_fd=fd)
    with contextlib.suppress(FileExistsError):  # (someone else made it meanwhile: checked next)
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=fd)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(name, flags, 0o644, dir_fd=fd))
    return os.open(name, O_PATH, dir_fd=fd)
