"""Walking and copying trees whose contents someone else chose, never following a link.

Clones, uploads and (after a job) workspaces hold whatever a repository, a client or a cell
put there: symlinks to host files, FIFOs, devices, hard links, very deep trees. Every step here
is relative to an open directory fd: directories are opened with ``O_NOFOLLOW|O_DIRECTORY``
and checked to be the inode ``lstat`` saw, regular files with ``O_NOFOLLOW|O_NONBLOCK`` (a FIFO
swapped in does not block us) and checked to be regular; symlinks are read with ``readlink``
and reproduced as symlinks; everything else is skipped. At most ``max_depth`` directory fds
are held at once (the deepest parts of a deeper tree are skipped and counted).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_DEPTH = 128
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO)


@dataclass(frozen=True)
class Entry:
    """One thing found in a walk. ``fd`` is open only for files and directories, and only
    until the walk moves on (the caller must not close it)."""

    path: str  # relative, "/"-separated
    kind: str  # "dir" | "file" | "symlink"
    st: os.stat_result
    fd: int | None = None
    target: str | None = None  # symlinks


@dataclass
class WalkStats:
    skipped: int = 0  # devices, FIFOs, sockets, entries that changed while we looked
    too_deep: int = 0  # directories below max_depth, not entered


def open_dir_at(dfd: int, name: str) -> int:
    """A directory fd for ``name`` in ``dfd``; OSError (ELOOP/ENOTDIR) for anything else."""
    return os.open(name, DIR_FLAGS, dir_fd=dfd)


def walk(
    top_fd: int, *, max_depth: int = MAX_DEPTH, stats: WalkStats | None = None
) -> Iterator[Entry]:
    """Every directory, regular file and symlink below ``top_fd`` (not closed), parents before
    children, never through a link."""
    stats = stats if stats is not None else WalkStats()
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    try:
        stack.append((top_fd, "", iter(sorted(os.scandir(top_fd), key=lambda e: e.name))))
        while stack:
            dfd, prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                if dfd != top_fd:
                    os.close(dfd)
                continue
            path = f"{prefix}{entry.name}"
            try:
                st = os.stat(entry.name, dir_fd=dfd, follow_symlinks=False)
            except OSError:
                stats.skipped += 1
                continue
            if stat.S_ISLNK(st.st_mode):
                try:
                    target = os.readlink(entry.name, dir_fd=dfd)
                except OSError:
                    stats.skipped += 1
                    continue
                yield Entry(path, "symlink", st, target=target)
            elif stat.S_ISDIR(st.st_mode):
                if len(stack) >= max_depth:
                    stats.too_deep += 1
                    continue
                sub = _open_same(dfd, entry.name, st, DIR_FLAGS)
                if sub is None:
                    stats.skipped += 1
                    continue
                try:
                    children = iter(sorted(os.scandir(sub), key=lambda e: e.name))
                except OSError:
                    os.close(sub)
                    stats.skipped += 1
                    continue
                stack.append((sub, f"{path}/", children))
                yield Entry(path, "dir", st, fd=sub)
            elif stat.S_ISREG(st.st_mode):
                fd = _open_same(dfd, entry.name, st, FILE_FLAGS)
                if fd is None:
                    stats.skipped += 1
                    continue
                try:
                    yield Entry(path, "file", os.fstat(fd), fd=fd)
                finally:
                    os.close(fd)
            else:
                stats.skipped += 1
    finally:
        for dfd, _, _ in stack:
            if dfd != top_fd:
                os.close(dfd)


def _open_same(dfd: int, name: str, st: os.stat_result, flags: int) -> int | None:
    """Open ``name`` only if it is still the inode ``st`` describes (no swap since lstat)."""
    try:
        fd = os.open(name, flags, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in _GONE or exc.errno == errno.EACCES:
            return None
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or stat.S_IFMT(
        now.st_mode
    ) != stat.S_IFMT(st.st_mode):
        os.close(fd)
        return None
    return fd


def copy_file(src: int, dst: int) -> int:
    """Copy the whole of ``src`` into ``dst`` (both fds); bytes copied."""
    total = 0
    while True:
        try:
            n = os.copy_file_range(src, dst, 1 << 24)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            return total + _copy_plain(src, dst)
        if n == 0:
            return total
        total += n


def _copy_plain(src: int, dst: int) -> int:
    total = 0
    while chunk := os.read(src, 1 << 20):
        os.write(dst, chunk)
        total += len(chunk)
    return total


def copy_tree(src_fd: int, dst_fd: int, *, max_depth: int = MAX_DEPTH) -> WalkStats:
    """Copy everything below ``src_fd`` into the empty directory ``dst_fd`` (neither closed):
    directories, regular files (permission bits without setuid/setgid/sticky), symlinks as
    symlinks. Hard links become separate files; devices, FIFOs and sockets are skipped."""
    stats = WalkStats()
    dirs: dict[str, int] = {"": dst_fd}
    try:
        for entry in walk(src_fd, max_depth=max_depth, stats=stats):
            parent, _, name = entry.path.rpartition("/")
            pfd = dirs[parent]
            mode = stat.S_IMODE(entry.st.st_mode) & 0o777
            if entry.kind == "dir":
                os.mkdir(name, (mode | 0o700) & 0o755, dir_fd=pfd)
                dirs[entry.path] = open_dir_at(pfd, name)
                _drop_closed(dirs, entry.path)
            elif entry.kind == "symlink":
                assert entry.target is not None
                os.symlink(entry.target, name, dir_fd=pfd)
            else:
                assert entry.fd is not None
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                out = os.open(name, flags, (mode | 0o600) & 0o755, dir_fd=pfd)
                try:
                    copy_file(entry.fd, out)
                finally:
                    os.close(out)
    finally:
        for path, fd in dirs.items():
            if path:
                os.close(fd)
    return stats


def _drop_closed(dirs: dict[str, int], current: str) -> None:
    """Close destination fds of directories the walk has left (it goes depth first)."""
    for path in [p for p in dirs if p and not (current == p or current.startswith(p + "/"))]:
        os.close(dirs.pop(path))


def tree_size(top_fd: int, *, max_depth: int = MAX_DEPTH) -> int:
    """Bytes (regular files' sizes) plus 512 per entry, below ``top_fd``: a clone's size."""
    total = 0
    for entry in walk(top_fd, max_depth=max_depth):
        total += 512 + (entry.st.st_size if entry.kind == "file" else 0)
    return total
