"""The namespaces a cell is started in, made by a short-lived helper and held by fds.

One forked helper ``unshare``s what the cell needs beyond what bwrap makes itself:
- a network namespace holding only ``lo`` and the proxy's listening socket (``net/netns.py``);
- a mount namespace whose private stage (``STAGE``) holds the idmapped binds of a root-run cell
  (``idmap.py``): there, and only there, the host directories appear owned by the cell's uid;
- when not root, a user namespace owning those (no privilege needed).
It sends back the listener and the namespace fds over ``SCM_RIGHTS`` and exits. The fds keep the
namespaces alive; the cell is started inside them through ``nsenter``. Nothing is mounted in the
host's namespace, so a killed nixcell leaves no mount behind: closing the fds frees everything.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from nixcell.errors import SandboxError
from nixcell.sandbox.stage import (
    MS_REC,
    MS_SLAVE,
    StagedTree,
    clone_opened,
    ensure_root_mount_point,
    ensure_stage,
    mount_scratch,
    populate,
    root_mount_point,
)

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# The helper is a fork of a process that may run threads (the MCP server, the job daemon): a
# lock another thread held at the fork stays locked in the child forever. Its work takes
# milliseconds; past this it is killed and the cell refused, never waited on for ever.
HELPER_LIMIT = 30.0


@dataclass
class CellNamespaces:
    """Held namespace fds (and the listener when there is a network); ``close`` frees them."""

    listener: socket.socket | None
    port: int | None
    netns_fd: int | None = None
    userns_fd: int | None = None
    mntns_fd: int | None = None
    _closed: bool = field(default=False, repr=False)

    def fds(self) -> list[int]:
        """The namespace fds held (never the listener)."""
        fds = (self.userns_fd, self.netns_fd, self.mntns_fd)
        return [fd for fd in fds if fd is not None]

    def enter_argv(self, nsenter: str, uid: int | None = None, gid: int | None = None) -> list[str]:
        """The ``nsenter`` prefix that runs the rest of the argv inside the namespaces.

        nsenter opens the fds through *our* ``/proc/PID/fd``, so they are never inherited: an
        inherited namespace fd would reach the cell's processes (bwrap closes nothing).
        ``uid``/``gid``: the identity to switch to after entering (a root-run cell's own uid).
        """
        own = f"/proc/{os.getpid()}/fd"
        argv = [nsenter]
        if self.userns_fd is not None:
            argv += [f"--user={own}/{self.userns_fd}", "--preserve-credentials"]
        if self.netns_fd is not None:
            argv.append(f"--net={own}/{self.netns_fd}")
        if self.mntns_fd is not None:
            argv.append(f"--mount={own}/{self.mntns_fd}")
        if uid is not None:
            argv += ["--setuid", str(uid), "--setgid", str(gid if gid is not None else uid)]
        return [*argv, "--"]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.listener is not None:
            with contextlib.suppress(OSError):
                self.listener.close()
        for fd in self.fds():
            with contextlib.suppress(OSError):
                os.close(fd)


def nsenter_path() -> str:
    import shutil

    found = shutil.which("nsenter") or (os.path.exists("/usr/bin/nsenter") and "/usr/bin/nsenter")
    if not found:
        raise SandboxError("nsenter is not installed: install util-linux (apt install util-linux)")
    return found


def _bring_lo_up() -> None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _enter(parent: CellNamespaces | None) -> None:
    """Join a parent's namespaces (a session's volume) before making the cell's own."""
    if parent is None:
        return
    from nixcell.sandbox import idmap

    if parent.userns_fd is not None:
        idmap.setns(parent.userns_fd, CLONE_NEWUSER)
    if parent.mntns_fd is not None:
        idmap.setns(parent.mntns_fd, CLONE_NEWNS)


def _child(
    chan: socket.socket,
    port: int | None,
    trees: Sequence[StagedTree],
    idmap_userns: int | None,
    parent: CellNamespaces | None,
    volume: int | None,
    scratch: tuple[int, int, int] | None,
) -> None:
    """In the forked helper: make the namespaces, send their fds back. Never returns."""
    from nixcell.sandbox import idmap

    code = 0
    try:
        privileged = os.geteuid() == 0
        uid, gid = os.geteuid(), os.getegid()
        cloned = clone_opened(trees, idmap_userns)  # (still in the host's mount namespace)
        _enter(parent)
        owned = parent is not None and parent.userns_fd is not None  # already in our userns
        flags = (CLONE_NEWNET if port is not None else 0) | (CLONE_NEWNS if trees else 0)
        if volume is not None or scratch is not None:
            flags |= CLONE_NEWNS
        if not privileged and not owned:
            flags |= CLONE_NEWUSER
        idmap.unshare(flags)
        if not privileged and not owned:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        if trees:
            assert idmap_userns is not None
            populate(trees, idmap_userns, cloned)
        if scratch is not None:
            _scratch(scratch[0], (scratch[1], scratch[2]))
        if volume is not None:
            idmap.mount(None, "/", None, MS_REC | MS_SLAVE, None)
            owner = "" if privileged else f",uid={uid},gid={gid}"
            mode = "0755" if privileged else "0700"
            idmap.mount("tmpfs", volume_dir(), "tmpfs", 0, f"mode={mode},size={volume}{owner}")
        fds: list[int] = []
        names = []
        if port is not None:
            _bring_lo_up()
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(1024)
            fds.append(listener.fileno())
            fds.append(os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC))
            names += ["listener", "net"]
        if flags & CLONE_NEWNS:
            fds.append(os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC))
            names.append("mnt")
        if flags & CLONE_NEWUSER:
            fds.append(os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC))
            names.append("user")
        socket.send_fds(chan, [("ok " + ",".join(names)).encode()], fds)
    except BaseException as exc:  # report anything to the parent, then exit
        code = 1
        with contextlib.suppress(BaseException):
            chan.sendall(f"{type(exc).__name__}: {exc}".encode()[:500])
    finally:
        os._exit(code)


def _mount_point(name: str) -> str:
    """An empty host directory that tmpfs mounts cover inside a cell's own namespaces."""
    if os.geteuid() == 0:
        return root_mount_point(name)
    from nixcell import paths

    return str(paths.mount_dir() / name)


def _ensure_mount_point(name: str) -> str:
    if os.geteuid() == 0:
        return ensure_root_mount_point(name)
    path = _mount_point(name)
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def scratch_dir() -> str:
    """Where a cell's --disk tmpfs is mounted (in its own mount namespace; empty on the host)."""
    return _mount_point("scratch")


def ensure_scratch_dir() -> str:
    return _ensure_mount_point("scratch")


def _scratch(size: int, owner: tuple[int, int]) -> None:
    mount_scratch(scratch_dir(), size, owner)


def volume_dir() -> str:
    """Where a workspace volume is mounted (in the namespaces that hold it; empty on the host)."""
    return _mount_point("volume")


def ensure_volume_dir() -> str:
    return _ensure_mount_point("volume")


def create_volume(size: int) -> CellNamespaces:
    """A tmpfs of ``size`` bytes at ``volume_dir()``, in namespaces held by the returned fds.

    A session's workspace: it outlives each of the session's cells (they start inside these
    namespaces) and vanishes with the fds — a killed server leaves nothing on the host.
    """
    ensure_volume_dir()
    return create(volume=size)


def create(
    port: int | None = None,
    trees: Sequence[StagedTree] = (),
    *,
    idmap_userns: int | None = None,
    parent: CellNamespaces | None = None,
    volume: int | None = None,
    scratch: tuple[int, int, int] | None = None,
) -> CellNamespaces:
    """Namespaces for one cell: a network with a listener on ``port``, a stage of ``trees``
    (idmapped through ``idmap_userns``), a ``scratch`` tmpfs (size, owner uid, gid) for its
    writable areas, made inside ``parent``'s namespaces when given."""
    if trees:
        ensure_stage()
    if scratch is not None:
        ensure_scratch_dir()
    chan, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            chan.close()
            _child(child, port, trees, idmap_userns, parent, volume, scratch)
        child.close()
        chan.settimeout(HELPER_LIMIT)
        try:
            msg, fds, _, _ = socket.recv_fds(chan, 1024, 4)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
            raise SandboxError(
                f"cannot create the cell's namespaces: the helper did not answer within "
                f"{HELPER_LIMIT:g} s (killed)"
            ) from None
        finally:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    finally:
        chan.close()
        with contextlib.suppress(OSError):
            child.close()
    if not msg.startswith(b"ok"):
        for fd in fds:
            os.close(fd)
        why = msg.decode(errors="replace") or "the namespace helper died"
        raise SandboxError(f"cannot create the cell's namespaces: {why}")
    names = msg[3:].decode().split(",") if len(msg) > 3 else []
    got = dict(zip(names, fds, strict=True))
    for fd in fds:
        os.set_inheritable(fd, False)
    listener = None
    if "listener" in got:
        listener = socket.socket(fileno=got["listener"])
        listener.setblocking(False)
    return CellNamespaces(
        listener=listener,
        port=port,
        netns_fd=got.get("net"),
        userns_fd=got.get("user"),
        mntns_fd=got.get("mnt"),
    )
