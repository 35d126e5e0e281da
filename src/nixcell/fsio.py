"""Host-side file operations that a cell, or another user, cannot redirect.

Three helpers, used for every file nixcell itself writes:

- ``private_dir``: the directory for a cache or for state, created 0700 and refused when it, or
  any directory above it, could be changed by someone else (another user, a group).
- ``write_atomic``: replace a file whole; readers see the old contents or the new. The directory
  is opened once and everything happens relative to that fd, so a symlink swapped into the path
  meanwhile cannot move the write elsewhere; a planted link at the target name is replaced, never
  written through.
- ``open_output``: open a file the user named (``--audit``) without following a symlink or
  writing into a hard link, FIFO or device that someone planted at that name.

The symlink-safe tree removal lives in ``treeremove.py`` and is re-exported here.
"""

from __future__ import annotations

import os
import stat

from nixcell.errors import StateError
from nixcell.quiet import suppress
from nixcell.treeremove import remove_tree

__all__ = [
    "open_dir",
    "open_output",
    "open_output_dir",
    "private_dir",
    "remove_tree",
    "write_atomic",
]

_checked: set[str] = set()  # directories already found safe by this process


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int | None = None,
    durable: bool = False,
    dir_fd: int | None = None,
) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it over ``path``.

    ``mode``: exact permissions (default: 0666 minus the umask). ``durable``: fsync the file and
    its directory (for keys and certificates, not for caches). ``dir_fd``: an already open
    directory (``path`` is then a bare name in it), e.g. opened before a cell ran.
    """
    target = os.fspath(path)
    if dir_fd is None:
        parent, name = os.path.split(target)
        dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    else:
        name, dfd = target, dir_fd
    if not name or "/" in name or name in (".", ".."):
        raise StateError(f"cannot write {target!r}: not a file name")
    try:
        _write_in(dfd, name, data.encode() if isinstance(data, str) else data, mode, durable)
    finally:
        if dir_fd is None:
            os.close(dfd)


def _write_in(dfd: int, name: str, data: bytes, mode: int | None, durable: bool) -> None:
    # pid + random: threads and processes never share a temp name; O_EXCL|O_NOFOLLOW: a name
    # planted in advance (symlink, FIFO) makes the open fail instead of being written through.
    tmp = f".{name}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600 if mode is not None else 0o666, dir_fd=dfd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    if durable:
        os.fsync(dfd)


def open_dir(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(fd of the directory that will hold ``path``, the file's name in it), opened now.

    For outputs written after a cell ran: the directory fd is taken before the cell starts, so
    a cell that swaps a directory of the path for a symlink meanwhile does not redirect us.
    """
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    if not name:
        raise StateError(f"cannot write {target}: not a file name")
    try:
        return os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), name
    except OSError as exc:
        raise StateError(f"cannot write {target}: {parent}: {exc.strerror}") from None


def open_output_dir(path: str | os.PathLike[str]) -> tuple[int, str]:
    """``open_dir`` for a file written after a cell ran (``--learn-output``), checked now:
    the name must not be a directory, and a probe file must be creatable in the directory, so
    what the run produces is not lost to a mistake that was visible before it started."""
    target = os.path.abspath(os.fspath(path))
    dfd, name = open_dir(target)
    try:
        with suppress(FileNotFoundError):
            if stat.S_ISDIR(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                raise StateError(f"cannot write {target}: it is a directory (name a file in it)")
        probe = f".{name}.{os.getpid()}.{os.urandom(6).hex()}.probe"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            os.close(os.open(probe, flags, 0o600, dir_fd=dfd))
            os.unlink(probe, dir_fd=dfd)
        except OSError as exc:
            raise StateError(f"cannot write {target}: {exc.strerror}") from None
    except BaseException:
        os.close(dfd)
        raise
    return dfd, name


def open_output(path: str | os.PathLike[str], *, append: bool = True) -> int:
    """An fd for writing the file the user named, never one planted under that name.

    The last component is opened without following symlinks (O_PATH|O_NOFOLLOW), checked to be
    a regular file with one link (a hard link planted at the name would be another file), then
    reopened through that very inode; a missing file is created with O_EXCL. No O_TRUNC: an
    existing file is appended to (``append``) or refused.
    """
    target = os.path.abspath(os.fspath(path))
    dfd, name = open_dir(target)
    try:
        for _ in range(8):  # a racing creator/remover: look again
            try:
                return os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=dfd,
                )
            except FileExistsError:
                pass
            except OSError as exc:
                raise StateError(f"cannot open {target}: {exc.strerror}") from None
            if not append:
                raise StateError(f"refusing to write {target}: it exists already")
            try:
                pfd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except FileNotFoundError:
                continue
            try:
                _check_plain_file(os.fstat(pfd), target)
                return os.open(f"/proc/self/fd/{pfd}", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except OSError as exc:
                raise StateError(f"cannot open {target}: {exc.strerror}") from None
            finally:
                os.close(pfd)
        raise StateError(f"cannot open {target}: it keeps changing")
    finally:
        os.close(dfd)


def _check_plain_file(st: os.stat_result, target: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise StateError(f"refusing to write {target}: it is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise StateError(f"refusing to write {target}: it is not a regular file")
    if st.st_nlink != 1:
        raise StateError(f"refusing to write {target}: it has {st.st_nlink} hard links")


def private_dir(path: str | os.PathLike[str]) -> str:
    """Create ``path`` (and missing parents) 0700 and check nobody else can change it.

    Refused (``StateError``) when the directory is not ours, is writable by group or others, or
    any directory above it is owned by another user (root is fine) or writable by group or
    others without the sticky bit (``/tmp`` is fine) — checked for the path as written and for
    where its symlinks lead. Each directory is checked once per process.
    """
    target = os.path.abspath(os.fspath(path))
    if target in _checked:
        return target
    _make(target)
    real = os.path.realpath(target)
    _check_owned(real)
    for chain in (target, real):
        _check_ancestors(chain)
    _checked.add(target)
    return target


def _make(target: str) -> None:
    missing = []
    here = target
    while not os.path.lexists(here):
        missing.append(here)
        here = os.path.dirname(here)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create {d}: {exc.strerror}") from None


def _check_owned(real: str) -> None:
    try:
        st = os.lstat(real)
    except OSError as exc:
        raise StateError(f"cannot use {real}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"cannot use {real}: not a directory")
    if st.st_uid != os.geteuid():
        raise StateError(
            f"refusing to use {real}: owned by uid {st.st_uid}, not by you (uid {os.geteuid()})"
        )
    if _writable_by_others(st):
        raise StateError(
            f"refusing to use {real}: writable by others (mode {stat.S_IMODE(st.st_mode):o}); "
            f"`chmod 700 {real}` if its contents are yours"
        )
    if st.st_mode & 0o077:
        os.chmod(real, 0o700)  # ours and only readable by others: tighten (older nixcell)


def _writable_by_others(st: os.stat_result) -> bool:
    """World-writable, or group-writable by a group that is not just us.

    Debian-style user private groups (umask 002: group named after the user, no other members)
    make ``~/.cache`` 0775 without letting anyone else in; any other group-writable dir counts.
    """
    if st.st_mode & 0o002:
        return True
    if not st.st_mode & 0o020:
        return False
    import grp
    import pwd

    try:
        group = grp.getgrgid(st.st_gid)
        me = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return True
    return group.gr_name != me or any(member != me for member in group.gr_mem)


def _check_ancestors(path: str) -> None:
    me = os.geteuid()
    here = os.path.dirname(path)
    while True:
        try:
            st = os.lstat(here)
        except OSError as exc:
            raise StateError(f"cannot use {path}: {here}: {exc.strerror}") from None
        if st.st_uid not in (0, me):
            raise StateError(
                f"refusing to use {path}: {here} is owned by uid {st.st_uid} (not you or root)"
            )
        link = stat.S_ISLNK(st.st_mode)
        if not link and not st.st_mode & stat.S_ISVTX and _writable_by_others(st):
            raise StateError(
                f"refusing to use {path}: {here} is writable by others "
                f"(mode {stat.S_IMODE(st.st_mode):o})"
            )
        if here == "/":
            return
        here = os.path.dirname(here)
