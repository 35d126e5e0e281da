"""Idmapped bind mounts: a host directory seen by a cell's uid as if the cell were its owner.

A root-run cell has an unprivileged host uid (``identity.py``). A directory bound into it must
still behave "as the invoking user": the cell reads and writes it, and what it creates is owned
on disk by whoever ran nixcell. An idmapped mount (Linux 5.12+, ``mount_setattr`` with
``MOUNT_ATTR_IDMAP``) does exactly that: through it, on-disk owner ``I`` appears as the cell's
uid ``U`` and files ``U`` creates are written as ``I``. Nothing on the host is chowned, nothing
is left behind: the mount exists only inside the cell's own mount namespace (``holder.py``).

The kernel calls go through ctypes (Python has no wrappers for the new mount API).
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading

from nixcell.errors import SandboxError
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

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _nr(index: int) -> int:
    machine = os.uname().machine
    if machine not in _NR:
        raise SandboxError(f"idmapped mounts are not supported on {machine} by nixcell yet")
    return _NR[machine][index]


def _call(index: int, *args: object) -> int:
    result = _libc.syscall(_nr(index), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


_MAPS: dict[tuple[int, int, int, int], int] = {}  # (from, to, gfrom, gto) -> namespace fd
_MAPS_LOCK = threading.Lock()
_MAPS_MAX = 256


def mapping_fd(uid_from: int, uid_to: int, gid_from: int, gid_to: int) -> int:
    """A user namespace mapping ``uid_from -> uid_to`` (and the gids), made once per process and
    reused: the mapping never changes, and making one costs a fork (a long-lived server starts
    many cells). The fd belongs to this cache: do not close it."""
    key = (uid_from, uid_to, gid_from, gid_to)
    with _MAPS_LOCK:
        fd = _MAPS.get(key)
        if fd is None:
            if len(_MAPS) >= _MAPS_MAX:
                os.close(_MAPS.pop(next(iter(_MAPS))))
            fd = _MAPS[key] = userns_fd(*key)
        return fd


def userns_fd(uid_from: int, uid_to: int, gid_from: int, gid_to: int) -> int:
    """An fd of a new user namespace mapping ``uid_from -> uid_to`` (and the gids); root only."""
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the short-lived child only holds the namespace
        try:
            os.close(w)
            if _libc.unshare(CLONE_NEWUSER) != 0:
                os._exit(1)
            os.read(r, 1)
        finally:
            os._exit(0)
    os.close(r)
    try:
        own = os.stat("/proc/self/ns/user").st_ino
        for _ in range(100000):  # the child's unshare takes microseconds
            if os.stat(f"/proc/{pid}/ns/user").st_ino != own:
                break
        else:
            raise SandboxError("cannot create the idmap user namespace")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(f"{uid_from} {uid_to} 1\n")
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(f"{gid_from} {gid_to} 1\n")
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"cannot create the idmap user namespace: {e.strerror}") from None
    finally:
        os.close(w)
        os.waitpid(pid, 0)


def idmapped_tree(
    path: str, userns: int, *, readonly: bool, fd: int | None = None
) -> int:
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
    attr = ctypes.create_string_buffer(struct.pack("QQQQ", attrs, 0, 0, userns))
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
    if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")
