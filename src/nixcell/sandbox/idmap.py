"""Idmapped bind mounts: a host directory seen by a cell's uid as if the cell were its owner.

A root-run cell has an unprivileged host uid (``identity.py``). A directory bound into it must
still behave "as the invoking user": the cell reads and writes it, and what it creates is owned
on disk by whoever ran nixcell. An idmapped mount (Linux 5.12+, ``mount_setattr`` with
``MOUNT_ATTR_IDMAP``) does exactly that: through it, on-disk owner ``I`` appears as the cell's
uid ``U`` and files ``U`` creates are written as ``I``. Nothing on the host is chowned, nothing
is left behind: the mount exists only inside the cell's own mount namespace (``holder.py``).

The kernel calls go through ``libc.py`` (Python has no wrappers for the new mount API, and the
``ctypes`` package costs the warm path milliseconds).
"""

from __future__ import annotations

import os
import sys
from _thread import allocate_lock  # (not threading: milliseconds on the warm path)

from nixcell.errors import SandboxError
from nixcell.sandbox import libc
from nixcell.sandbox.bwrapio import open_nofollow  # noqa: F401 - its home was here

_NR = {"x86_64": (428, 429, 442), "aarch64": (428, 429, 442)}  # open_tree, move_mount, setattr
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x00100000
CLONE_NEWUSER = 0x10000000


def _nr(index: int) -> int:
    machine = os.uname().machine
    if machine not in _NR:
        raise SandboxError(f"idmapped mounts are not supported on {machine} by nixcell yet")
    return _NR[machine][index]


def _call(index: int, *args: int | bytes) -> int:
    return libc.call("syscall", _nr(index), *args, returns_long=True)


_MAPS: dict[tuple[int, int, int, int], int] = {}  # (from, to, gfrom, gto) -> namespace fd
_MAPS_LOCK = allocate_lock()
_MAPS_MAX = 256


def mapping_fd(uid_from: int, uid_to: int, gid_from: int, gid_to: int, swap: bool = False) -> int:
    """A user namespace mapping ``uid_from -> uid_to`` (and the gids), made once per process and
    reused: the mapping never changes, and making one costs a fork (a long-lived server starts
    many cells). The fd belongs to this cache: do not close it. ``swap`` maps ``uid_to ->
    uid_from`` too: a file server creating files as root (gVisor's gofer, then ``fchown`` to
    the cell's uid) must have its own uid mapped, or creating fails with EOVERFLOW."""
    key = (uid_from, uid_to, gid_from, gid_to, swap)
    with _MAPS_LOCK:
        fd = _MAPS.get(key)
        if fd is None:
            if len(_MAPS) >= _MAPS_MAX:
                os.close(_MAPS.pop(next(iter(_MAPS))))
            fd = _MAPS[key] = userns_fd(*key)
        return fd


def userns_fd(uid_from: int, uid_to: int, gid_from: int, gid_to: int, swap: bool = False) -> int:
    """An fd of a new user namespace mapping ``uid_from -> uid_to`` (and the gids); root only.

    A forked child unshares it and says so on a pipe (a blocking read: on a busy machine a
    parent polling for the child's namespace would spin while the child waits for a CPU), then
    holds it until its maps are written and the fd is open."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the short-lived child only holds the namespace
        try:
            os.close(ready_r)
            os.close(hold_w)
            libc.call("unshare", CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"1":  # it died before its namespace was made
            raise SandboxError("cannot create the idmap user namespace")
        back_uid = f"{uid_to} {uid_from} 1\n" if swap and uid_to != uid_from else ""
        back_gid = f"{gid_to} {gid_from} 1\n" if swap and gid_to != gid_from else ""
        _write(f"/proc/{pid}/uid_map", f"{uid_from} {uid_to} 1\n{back_uid}")
        _write(f"/proc/{pid}/setgroups", "deny")
        _write(f"/proc/{pid}/gid_map", f"{gid_from} {gid_to} 1\n{back_gid}")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"cannot create the idmap user namespace: {e.strerror}") from None
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(pid, 0)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if os.write(fd, text.encode()) != len(text):
            raise OSError(0, f"short write to {path}")
    finally:
        os.close(fd)


def idmapped_tree(path: str, userns: int, *, readonly: bool, fd: int | None = None) -> int:
    """A detached, idmapped copy of the mount tree at ``path`` (an O_PATH-like mount fd).

    Refused (SandboxError) when its filesystem cannot be idmapped: a root-run cell never gets a
    bind it could not have been given safely.
    """
    flags = OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE
    try:
        if fd is not None:  # from open_nofollow: exactly what was checked
            tree = _call(0, fd, b"", flags | AT_EMPTY_PATH)
        else:
            tree = _call(0, AT_FDCWD, os.fsencode(path), flags)
    except OSError as e:
        raise SandboxError(f"cannot bind {path} into the cell: {e.strerror}") from None
    attrs = MOUNT_ATTR_IDMAP | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
    if readonly:
        attrs |= MOUNT_ATTR_RDONLY
    # struct mount_attr: attr_set, attr_clr, propagation, userns_fd, four native-endian __u64
    attr = b"".join(v.to_bytes(8, sys.byteorder) for v in (attrs, 0, 0, userns))
    try:
        _call(2, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, attr, 32)
    except OSError as e:
        os.close(tree)
        raise SandboxError(
            f"cannot bind {path} into a root-run cell: its filesystem does not support "
            f"idmapped mounts ({e.strerror}); run nixcell as the owning user instead"
        ) from None
    return tree


def attach(tree: int, target: str) -> None:
    """Attach a detached tree at ``target`` (in the caller's mount namespace)."""
    _call(1, tree, b"", AT_FDCWD, os.fsencode(target), MOVE_MOUNT_F_EMPTY_PATH)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    try:
        libc.call("mount", enc(source), enc(target), enc(fstype), flags, enc(data))
    except OSError as e:
        raise OSError(e.errno, f"mount {target}: {e.strerror}") from None


def setns(fd: int, nstype: int) -> None:
    try:
        libc.call("setns", fd, nstype)
    except OSError as e:
        raise OSError(e.errno, f"setns: {e.strerror}") from None


def unshare(flags: int) -> None:
    try:
        libc.call("unshare", flags)
    except OSError as e:
        raise OSError(e.errno, f"unshare: {e.strerror}") from None
