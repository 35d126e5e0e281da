"""One microVM cell: the launcher and QEMU, the socket pairs behind its serial ports, and
removing all of it.

Each channel (``microvm.CHANNELS``) is a socket pair: QEMU holds one end as its chardev
(``socket,fd=N``), nixcell the other. A thread per stream copies between nixcell's end and the
engine's fd (stdin until EOF, then a half-close: the guest reads EOF; stdout and stderr until
QEMU exits). The control port carries ``nixcell-exit RC OOM``; the console (hvc0: the guest
kernel's messages) is kept, bounded, for the error when a guest ends without a status. QEMU is
waited for on a pidfd (``aio.wait_exit``: no child watcher, no thread). ``kill`` is SIGKILL to
QEMU; its mount namespace, and so the staged closure, ends with it: ``close`` leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import socket
import subprocess
import sys
import threading

from nixcell.errors import SandboxError
from nixcell.sandbox import microvm, microvmguest, microvminitrd
from nixcell.sandbox.backends import BackendExit
from nixcell.sandbox.seccache import seccomp_program

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.backends import CellIO
    from nixcell.sandbox.holder import CellNamespaces

log = logging.getLogger(__name__)
KEEP = 16384  # bytes of console and launcher output kept for errors


def _copy(
    src: int, dst: int | None, half_close: socket.socket | None, done: threading.Event,
    stop: threading.Event | None = None,
) -> None:  # fmt: skip
    """Copy ``src`` to ``dst`` (None: discard) until EOF; then half-close ``half_close``. The
    engine's fd (``src`` or ``dst``, whichever is not the socket) is our own dup: closed here.
    ``stop`` set (stdin's copy): end within 0.2 s, even while a terminal gives nothing."""
    own = src if half_close is not None else dst
    try:
        while True:
            if stop is not None:
                while not stop.is_set() and not select.select([src], [], [], 0.2)[0]:
                    pass
                if stop.is_set():
                    break
            try:
                chunk = os.read(src, 65536)
            except OSError:
                break
            if not chunk:
                break
            view = memoryview(chunk)
            while view and dst is not None:
                try:
                    view = view[os.write(dst, view) :]
                except OSError:
                    if half_close is not None:
                        return  # the guest is gone: stop reading the engine's stdin
                    break_out = dst
                    dst = None  # the reader went away: keep draining the guest
                    os.close(break_out)
                    own = None
    finally:
        if half_close is not None:
            with contextlib.suppress(OSError):
                half_close.shutdown(socket.SHUT_WR)
        if own is not None:
            os.close(own)
        done.set()


def _collect(fd: int, into: bytearray, done: threading.Event) -> None:
    try:
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            into += chunk
            del into[:-KEEP]
    finally:
        done.set()


def cfg_files(plan: Plan, user: tuple[int, int]) -> tuple[dict[str, str], dict[str, str]]:
    """The cfg share's files for the launcher: text ({path: text}: ``cell.sh`` and its data
    files) and blobs ({path: hex}: the plan's seccomp program, the very bytes bwrap would get
    for its profiles, which the guest's exec helper installs)."""
    script, data = microvmguest.cell_script(plan, user)
    files = {"cfg/cell.sh": script}
    files.update({f"cfg/data/{k}": v.decode() for k, v in data.items()})
    program = seccomp_program(plan.seccomp_profiles)
    return files, {f"cfg/{microvmguest.SECCOMP_FILE}": program.hex()}


def _dup(fd: int | None) -> int | None:
    return None if fd is None else os.dup(fd)


class MicrovmCell:
    def __init__(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> None:
        self.cell_id = cell_id
        self.plan = plan
        self.host_id = host_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.ours: dict[str, socket.socket] = {}
        self.threads: list[tuple[threading.Thread, threading.Event]] = []
        self.console = bytearray()
        self.control = bytearray()
        self.launcher = bytearray()
        self.killed = False
        self.trees: list[int] = []
        self._stop = threading.Event()  # ends stdin's copy in close
        self._stdin_done: threading.Event | None = None
        self._exit: BackendExit | None = None
        self._closed = False

    async def network(self) -> CellNamespaces | None:
        return None

    def _thread(self, target: object, *args: object, wait: bool = True) -> threading.Event:
        done = threading.Event()
        thread = threading.Thread(target=target, args=(*args, done), daemon=True,  # type: ignore[arg-type]
                                  name=f"nixcell-vm-{self.cell_id}")  # fmt: skip
        thread.start()
        if wait:  # (stdin's copy may wait on a terminal: ended by ``close``)
            self.threads.append((thread, done))
        return done

    async def start(self, plan: Plan, io: CellIO) -> None:
        self.plan = plan
        from nixcell.leftovers import owner_tag
        from nixcell.sandbox import microvmkvm

        kernel, version = microvminitrd.kernel()
        mode, _ = microvmkvm.choose()
        microvmkvm.notice()
        user = self.host_id if self.host_id is not None else (plan.uid, plan.gid)
        files, blobs = cfg_files(plan, user)
        initrd = await asyncio.to_thread(microvminitrd.initramfs, version)
        theirs: dict[str, int] = {}
        pairs = []
        memfd = -1
        try:
            for channel in microvm.CHANNELS:
                if channel == "proxy" and plan.network is None:
                    continue
                ours, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                pairs.append(other)
                self.ours[channel] = ours
                theirs[channel] = other.fileno()
            memfd = os.memfd_create("nixcell-initramfs", os.MFD_CLOEXEC)
            os.write(memfd, initrd)
            name = f"{microvm.NAME_PREFIX}{owner_tag()}.{self.cell_id}"
            argv = microvm.qemu_argv(plan, mode, theirs, f"/proc/self/fd/{memfd}", kernel, name)
            uid, gid = self.host_id if self.host_id is not None else (None, None)
            groups = []
            if mode == "kvm":
                groups = [os.stat("/dev/kvm").st_gid]
            os.makedirs(microvm.STAGE, 0o755, exist_ok=True)
            spec = {
                "stage": microvm.STAGE, "closure": list(plan.closure), "files": files,
                "uid": uid, "gid": gid, "groups": groups, "argv": argv, "parent": os.getpid(),
                "blobs": blobs, "nix_root": plan.nix_root,
            }  # fmt: skip
            binds = self._trees(plan, user)
            spec["binds"] = binds
            host = os.path.join(os.path.dirname(os.path.abspath(__file__)), "microvmhost.py")
            self.proc = subprocess.Popen(
                [sys.executable, "-I", host, json.dumps(spec)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=(*theirs.values(), memfd, *(fd for _, fd in binds)),
                start_new_session=True,
            )  # fmt: skip
        finally:
            for sock in pairs:
                sock.close()
            for fd in self.trees:
                os.close(fd)
            self.trees = []
            if memfd >= 0:
                os.close(memfd)
        assert self.proc.stderr is not None
        self._thread(_collect, self.proc.stderr.fileno(), self.launcher)
        self._thread(_collect, self.ours["console"].fileno(), self.console)
        self._thread(_collect, self.ours["ctl"].fileno(), self.control)
        stdin = self.ours["stdin"]
        if io.stdin is None:
            stdin.shutdown(socket.SHUT_WR)
        else:
            src, stop = _dup(io.stdin), self._stop
            copy = lambda done: _copy(src, stdin.fileno(), stdin, done, stop)  # noqa: E731
            self._stdin_done = self._thread(copy, wait=False)
        # (dups: the engine closes its copies of the cell's pipe ends once start returns)
        if plan.network is not None:
            from nixcell.plan import PROXY_PORT
            from nixcell.sandbox.microvmnet import Mux

            net = getattr(io.session, "net", None)
            if net is None:
                raise SandboxError("the microVM's network session has no namespace")
            port = int(plan.network.get("port") or PROXY_PORT)  # type: ignore[call-overload]
            mux = Mux(self.ours["proxy"], net.netns_fd, port)
            self._thread(mux.run)
        self._thread(_copy, self.ours["stdout"].fileno(), _dup(io.stdout), None)
        self._thread(_copy, self.ours["stderr"].fileno(), _dup(io.stderr), None)

    def _trees(self, plan: Plan, user: tuple[int, int]) -> list[tuple[int, int]]:
        """An idmapped tree per host directory the plan binds (invoker -> the cell's uid),
        opened without following links; the launcher attaches each in its namespace."""
        from nixcell.sandbox import idmap
        from nixcell.sandbox.bwrapio import open_nofollow

        found = []
        binds = microvmguest.host_binds(plan)
        if binds:
            userns = idmap.mapping_fd(os.getuid(), user[0], os.getgid(), user[1])
        for index, (_, source, readonly) in enumerate(binds):
            fd = open_nofollow(source)
            try:
                tree = idmap.idmapped_tree(source, userns, readonly=readonly, fd=fd)
            finally:
                os.close(fd)
            self.trees.append(tree)
            os.set_inheritable(tree, True)
            found.append((index, tree))
        return found

    async def wait(self) -> BackendExit:
        from nixcell.sandbox import aio

        if self._exit is not None:
            return self._exit
        if self.proc is None:
            raise SandboxError("the microVM was not started")
        code = await aio.wait_exit(self.proc)
        # the copies end when QEMU's ends close: all output is delivered before the exit
        await asyncio.to_thread(self._join, 10.0)
        self._exit = self._decode(code)
        return self._exit

    def _join(self, limit: float) -> None:
        for _, done in self.threads:
            if not done.wait(limit):
                log.debug("a microVM stream copy is still running")

    def _decode(self, code: int) -> BackendExit:
        status = bytes(self.control).decode(errors="replace").split()
        if len(status) >= 3 and status[0] == microvmguest.STATUS_MARK and status[1].isdigit():
            rc = int(status[1]) & 0xFF
            return BackendExit(rc, oom=status[2] == "1" and rc == 137)
        if self.killed:
            return BackendExit(137)
        tail = (bytes(self.launcher) + bytes(self.console)).decode(errors="replace").strip()
        last = " / ".join(tail.splitlines()[-3:])[-300:] or f"QEMU exited {code}"
        raise SandboxError(f"the microVM ended without an exit status: {last}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.killed = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc is not None:
            if self.proc.poll() is None:
                self.killed = True
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
            from nixcell.sandbox import aio

            await aio.wait_exit(self.proc)
        self._stop.set()
        for sock in self.ours.values():
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        await asyncio.to_thread(self._join, 5.0)
        if self._stdin_done is not None:  # (it uses the stdin socket's fd: ended first)
            await asyncio.to_thread(self._stdin_done.wait, 2.0)
        for sock in self.ours.values():
            sock.close()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
