"""Removing a directory tree a cell controlled, without ever following a link it planted.

A session workspace (or any directory a cell could write) may hold symlinks to host
directories, hard links to host files, FIFOs, device nodes, trees deeper than any recursion
limit, and directories the cell made unreadable; a live cell could even rename directories while
we walk. ``shutil.rmtree`` plus ``chmod`` by path got this wrong (a chmod through a planted
symlink changed a host directory to 0700 as root). Here:

- every directory is opened relative to its parent's fd with ``O_NOFOLLOW|O_DIRECTORY``; a name
  that is not (or no longer) a directory is unlinked, which removes the link, never its target;
- ``chmod`` is only ever applied to a directory reached by fd (``fchmod``, or the O_PATH fd's
  ``/proc/self/fd`` entry), and only when we cannot read or empty it otherwise;
- the walk is iterative; at most ``MAX_OPEN`` directory fds are held, deeper ancestors are
  reopened through ``..`` and accepted only if they are still the same inode — otherwise the
  cell moved something and the walk starts over from the top (which we never let go of).
"""

from __future__ import annotations

import errno
import os
import stat

from nixcell.errors import StateError

MAX_OPEN = 128  # directory fds held at once, whatever the depth
_PASSES = 64  # restarts after a concurrent change, before giving up
_STEPS = 20_000_000  # directories visited in one pass, at most (a tree refilled as we go)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RACED = (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR)


class _Moved(Exception):
    """An ancestor reopened through '..' is not the directory we left: start over."""


class _Frame:
    __slots__ = ("fd", "ident", "name", "pending")

    def __init__(self, fd: int, name: str) -> None:
        st = os.fstat(fd)
        self.fd: int | None = fd
        self.ident = (st.st_dev, st.st_ino)
        self.name = name
        self.pending: list[str] | None = None


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` and everything below it; a symlink at ``path`` is removed, not followed.

    The directories above ``path`` are the caller's (trusted); from ``path`` down nothing is.
    A missing ``path`` is not an error. Raises ``StateError`` when something cannot be removed.
    """
    target = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(target)
    if not name:
        raise StateError("refusing to remove /")
    try:
        pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_at(pfd, name, target)
    except OSError as exc:
        raise StateError(f"cannot remove {target}: {exc.strerror or exc}") from None
    finally:
        os.close(pfd)


def _remove_at(pfd: int, name: str, shown: str) -> None:
    for _ in range(_PASSES):
        if _unlink(pfd, name):
            return
        fd = _open_dir(pfd, name)
        if fd is None:
            continue  # replaced by a non-directory, or gone: unlink again
        try:
            _empty(fd, name)
        except _Moved:
            continue
        try:
            os.rmdir(name, dir_fd=pfd)
            return
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return
            if exc.errno not in _RACED:
                raise
    raise StateError(f"cannot remove {shown}: it keeps changing while being removed")


def _unlink(dfd: int, name: str) -> bool:
    """Remove a non-directory entry (True), or report that it is a directory (False)."""
    for attempt in range(2):
        try:
            os.unlink(name, dir_fd=dfd)
            return True
        except FileNotFoundError:
            return True
        except IsADirectoryError:
            return False
        except PermissionError:
            if attempt or not _make_writable(dfd):
                raise
    return False


def _make_writable(dfd: int) -> bool:
    """Give ourselves rwx on a directory reached by fd (a cell may have chmod-ed it 0500)."""
    st = os.fstat(dfd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o700 == 0o700:
        return False
    os.fchmod(dfd, stat.S_IMODE(st.st_mode) | 0o700)
    return True


def _open_dir(pfd: int, name: str) -> int | None:
    """An fd of directory ``name`` in ``pfd``, never through a symlink; None if not a dir."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=pfd)
    except FileNotFoundError:
        return None
    except PermissionError:
        pass  # unreadable to us (not root): chmod it through an fd of the directory itself
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        flags = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
        path_fd = os.open(name, flags, dir_fd=pfd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        via = f"/proc/self/fd/{path_fd}"  # this inode, whatever the name points to by now
        os.chmod(via, stat.S_IMODE(os.fstat(path_fd).st_mode) | 0o700)
        return os.open(via, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


def _scan(dfd: int) -> list[str]:
    """Unlink every non-directory in ``dfd``; return the names of its directories."""
    dirs = []
    with os.scandir(dfd) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if is_dir or not _unlink(dfd, entry.name):
                dirs.append(entry.name)
    return dirs


def _empty(top: int, name: str) -> None:
    """Empty the directory open as ``top`` (consumed: closed on return)."""
    frames = [_Frame(top, name)]
    try:
        for _ in range(_STEPS):
            frame = frames[-1]
            assert frame.fd is not None
            if frame.pending is None:
                frame.pending = _scan(frame.fd)
            if frame.pending:
                child = frame.pending.pop()
                fd = _open_dir(frame.fd, child)
                if fd is None:
                    _unlink(frame.fd, child)  # now a file or a link: remove just that
                    continue
                frames.append(_Frame(fd, child))
                _limit_open(frames)
                continue
            again = _scan(frame.fd)  # did anything appear meanwhile?
            if again:
                frame.pending = again
                continue
            if len(frames) == 1:
                return
            _leave(frames)
        raise StateError(f"cannot remove {name}: it keeps growing while being removed")
    finally:
        for frame in frames:
            if frame.fd is not None:
                os.close(frame.fd)


def _limit_open(frames: list[_Frame]) -> None:
    """Keep at most MAX_OPEN fds: close the oldest ancestor below the top."""
    open_frames = [f for f in frames if f.fd is not None]
    if len(open_frames) > MAX_OPEN:
        victim = open_frames[1]
        assert victim.fd is not None
        os.close(victim.fd)
        victim.fd = None


def _leave(frames: list[_Frame]) -> None:
    """Pop an emptied directory and remove it from its parent (reopened via '..' if needed)."""
    done = frames.pop()
    parent = frames[-1]
    assert done.fd is not None
    try:
        if parent.fd is None:
            fd = os.open("..", _DIR_FLAGS, dir_fd=done.fd)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != parent.ident:
                os.close(fd)
                raise _Moved
            parent.fd = fd
    finally:
        os.close(done.fd)
        done.fd = None
    for attempt in range(2):
        try:
            os.rmdir(done.name, dir_fd=parent.fd)
            return
        except PermissionError:
            if attempt or not _make_writable(parent.fd):
                raise
        except OSError as exc:
            if exc.errno not in _RACED:
                raise
            parent.pending = None  # renamed, refilled or replaced meanwhile: look again
            return

