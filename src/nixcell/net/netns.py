"""A cell's network namespace: only ``lo``, with the proxy's listening socket inside it.

DESIGN.md §4, verified here: a short-lived forked helper ``unshare``s a network namespace (inside
a new user namespace when we are not root, so no privilege is needed), brings ``lo`` up, binds
and listens on ``127.0.0.1:PORT``, and hands back over ``SCM_RIGHTS`` the listening socket plus
fds of its namespaces; then it exits. Those fds keep the namespaces alive. The host-side proxy
``accept()``s on the socket — it lives in the cell's namespace, while the proxy's upstream
connections leave from the host's. The cell is started inside the namespace through ``nsenter``
on those fds, so there is no veth, no bridge, no route out: every destination other than the
proxy is unreachable by construction, and if the proxy goes away the socket closes and the cell
is cut off (fail closed).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field

from nixcell.errors import NetworkError

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
DEFAULT_PORT = 3128


@dataclass
class CellNetwork:
    """The namespace fds and the listening socket; ``close`` releases the namespace."""

    listener: socket.socket
    port: int
    netns_fd: int
    userns_fd: int | None = None
    _closed: bool = field(default=False, repr=False)

    def pass_fds(self) -> list[int]:
        """Fds the launcher must inherit (the namespaces, never the listener)."""
        return [self.netns_fd] + ([self.userns_fd] if self.userns_fd is not None else [])

    def enter_argv(self, nsenter: str) -> list[str]:
        """The ``nsenter`` prefix that runs the rest of the argv inside the namespace."""
        argv = [nsenter]
        if self.userns_fd is not None:
            argv += [f"--user=/proc/self/fd/{self.userns_fd}", "--preserve-credentials"]
        argv += [f"--net=/proc/self/fd/{self.netns_fd}", "--"]
        return argv

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()
        for fd in self.pass_fds():
            with contextlib.suppress(OSError):
                os.close(fd)


def nsenter_path() -> str:
    import shutil

    found = shutil.which("nsenter") or (os.path.exists("/usr/bin/nsenter") and "/usr/bin/nsenter")
    if not found:
        raise NetworkError(
            "nsenter is not installed: install util-linux (`apt install util-linux`)"
        )
    return found


def _libc_unshare() -> object:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare


def _bring_lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        import fcntl

        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _child(chan: socket.socket, unshare: object, port: int, privileged: bool) -> None:
    """In the forked helper: make the namespace, listen, send fds back. Never returns."""
    code = 0
    try:
        uid, gid = os.geteuid(), os.getegid()
        flags = CLONE_NEWNET if privileged else CLONE_NEWUSER | CLONE_NEWNET
        if unshare(flags) != 0:  # type: ignore[operator]
            import ctypes  # already loaded by the parent: no import cost here

            raise OSError(ctypes.get_errno(), "unshare")
        if not privileged:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
        _bring_lo_up()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1024)
        fds = [listener.fileno(), os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)]
        if not privileged:
            fds.append(os.open("/proc/self/ns/user", os.O_RDONLY | os.O_CLOEXEC))
        socket.send_fds(chan, [b"ok"], fds)
    except BaseException as exc:  # report anything to the parent, then exit
        code = 1
        with contextlib.suppress(BaseException):
            chan.sendall(f"{type(exc).__name__}: {exc}".encode()[:500])
    finally:
        os._exit(code)


def create(port: int = DEFAULT_PORT) -> CellNetwork:
    """A fresh namespace with only ``lo`` and a listener on ``127.0.0.1:port`` inside it."""
    unshare = _libc_unshare()
    privileged = os.geteuid() == 0
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the helper
            parent.close()
            _child(child, unshare, port, privileged)
        child.close()
        try:
            msg, fds, _, _ = socket.recv_fds(parent, 1024, 3)
        finally:
            _wait(pid)
    finally:
        parent.close()
        with contextlib.suppress(OSError):
            child.close()
    if msg != b"ok" or len(fds) < 2:
        for fd in fds:
            os.close(fd)
        why = msg.decode(errors="replace") or "the namespace helper died"
        raise NetworkError(f"cannot create the cell's network namespace: {why}")
    for fd in fds:
        os.set_inheritable(fd, False)
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return CellNetwork(
        listener=listener,
        port=port,
        netns_fd=fds[1],
        userns_fd=fds[2] if len(fds) > 2 else None,
    )


def _wait(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # EINTR is retried by os.waitpid (PEP 475)
        os.waitpid(pid, 0)
