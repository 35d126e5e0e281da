"""One Docker cell: its network holder, its container, its stdio, and removing all of them.

The network: the holder container (``/pause``, network ``none``, the cell's hostname) is
started first; a short-lived thread of ours ``setns``-es into its network namespace
(``/proc/<holder pid>/ns/net``, root only), binds 127.0.0.1:3128 there and leaves: the listening
socket stays in that namespace and the engine's proxy accepts on it, its upstream connections
leaving from the host's namespace. The cell container joins the holder's network
(``container:<holder>``), which has only ``lo``.

Every blocking daemon call runs in a thread of its own (abandoned, not waited for, when the
run is cancelled) and is bounded: by the run's ``--timeout`` when it has one (a daemon that
stops answering ends the run near it with one line), and after a kill or in ``close`` by
``CLEANUP`` seconds in all. ``close`` removes both containers (force) and the host directory on
every path, and waits for the stdio copies to end. ``wait`` reports the exit only once every
byte of output is delivered, however slow the reader (the timeout bounds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time

from nixcell.errors import NixcellError, SandboxError
from nixcell.sandbox import docker, dockerapi, dockerhost, dockerimage, dockerseccomp, dockerspec
from nixcell.sandbox.backends import BackendExit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.backends import CellIO
    from nixcell.sandbox.dockerio import Pump
    from nixcell.sandbox.holder import CellNamespaces

log = logging.getLogger(__name__)
CLONE_NEWNET = 0x40000000
CLEANUP = 10.0  # s for all the calls of a kill and of a close together


def listen_in(pid: int, port: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port`` inside the network namespace of ``pid``."""
    from nixcell.sandbox import libc

    ns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    got: dict[str, object] = {}

    def inside() -> None:  # only this thread enters the namespace; it ends right after
        try:
            libc.call("setns", ns, CLONE_NEWNET)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
            got["sock"] = sock
        except OSError as exc:
            got["error"] = exc

    try:
        thread = threading.Thread(target=inside, name="nixcell-docker-netns")
        thread.start()
        thread.join()
    finally:
        os.close(ns)
    if "sock" not in got:
        raise SandboxError(f"cannot listen inside the cell's network: {got.get('error')}")
    return got["sock"]  # type: ignore[return-value]


async def _own_thread(fn, *args: object, **kwargs: object) -> object:
    """``fn(*args, **kwargs)`` in a thread of its own (not the default executor)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[object] = loop.create_future()

    def settle(ok: bool, value: object) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)  # type: ignore[arg-type]

    def body() -> None:
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting task
            outcome = (False, exc)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody awaits it any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=body, name="nixcell-docker-wait", daemon=True).start()
    return await future


class DockerCell:
    def __init__(self, plan: Plan, cell_id: str, user: tuple[int, int]) -> None:
        self.cell_id = cell_id
        self.plan = plan
        self.user = user
        self.client = dockerapi.Client()
        self.top = dockerhost.cell_dir(cell_id)
        self.names: list[str] = []  # containers made, removed by close
        self.holder: str | None = None
        self.pump: Pump | None = None
        self._exit: BackendExit | None = None
        self._closed = False
        self._killed = False
        self._cleanup_by: float | None = None  # the deadline of kill and close
        self._pipe_ignored = False

    def _budget(self) -> float | None:
        """The socket timeout of the next call: the client's, no longer than the run's
        timeout; after a kill, what is left of ``CLEANUP``."""
        if self._cleanup_by is not None:
            left = self._cleanup_by - time.monotonic()
            if left <= 0:
                raise dockerapi.DockerError("the docker daemon did not answer in time (cleanup)")
            return left
        limit = self.plan.limits.timeout
        base = self.client.timeout
        return base if limit is None else min(base or limit, max(limit, 1.0))

    def _cleanup(self) -> None:
        if self._cleanup_by is None:
            self._cleanup_by = time.monotonic() + CLEANUP

    async def _call(self, *args: object, **kwargs: object) -> object:
        kwargs.setdefault("timeout", self._budget())
        return await _own_thread(self.client.call, *args, **kwargs)

    async def _create(self, body: dict[str, object], role: str) -> str:
        """Create with the image's tag; only a daemon without the image answers 404 "No such
        image", and only then is it built (no lookup round trip on every run)."""
        name = docker.container_name(self.cell_id, role)
        self.names.append(name)  # before the call: a create that lands is removed too
        try:
            await self._call("POST", "/containers/create", body, query={"name": name})
        except dockerapi.DockerError as exc:
            if exc.status != 404 or "image" not in exc.message.lower():
                raise
            await asyncio.to_thread(dockerimage.ensure, self.client)
            await self._call("POST", "/containers/create", body, query={"name": name})
        return name

    async def network(self) -> CellNamespaces | None:
        from nixcell.plan import PROXY_PORT
        from nixcell.sandbox.holder import CellNamespaces

        image = dockerimage.tag()
        seccomp = dockerseccomp.profile(tuple(self.plan.seccomp_profiles))
        body = docker.holder_body(self.plan, image, self.user, seccomp, self.cell_id)
        name = await self._create(body, "net")
        await self._call("POST", f"/containers/{name}/start")
        state = await self._call("GET", f"/containers/{name}/json")
        pid = dockerapi.field(state, "State", "Pid", kind=int)
        if pid <= 0:  # type: ignore[operator]
            raise SandboxError("the cell's network holder is not running")
        self.holder = name
        port = int((self.plan.network or {}).get("port") or PROXY_PORT)  # type: ignore[call-overload]
        sock = await asyncio.to_thread(listen_in, pid, port)  # type: ignore[arg-type]
        return CellNamespaces(listener=sock, port=port)

    async def start(self, plan: Plan, io: CellIO) -> None:
        from nixcell.sandbox.dockerio import Pump
        from nixcell.sandbox.holder import scratch_dir

        self.plan = plan
        image = dockerimage.tag()
        layout = dockerspec.layout(plan, self.user, self.top, scratch_dir())
        refused = layout.refusals + dockerspec.reserved(plan)
        if refused:  # (checked before: the network session may have added mounts)
            raise SandboxError(f"the docker backend cannot enforce {'; '.join(refused)}")
        await asyncio.to_thread(dockerhost.prepare, layout, self.user)
        seccomp = dockerseccomp.profile(tuple(plan.seccomp_profiles))
        mode = "none" if self.holder is None else f"container:{self.holder}"
        stdin = io.stdin is not None
        body = docker.cell_body(plan, layout, image, self.user, mode, seccomp, self.cell_id, stdin)
        name = await self._create(body, "cell")
        sock = await _own_thread(self.client.attach, name, stdin, self._budget())
        try:
            self.pump = Pump(
                sock, io.stdin, io.stdout, io.stderr, self._reader_gone, self._ignores_sigpipe
            )
        except BaseException:
            sock.close()
            raise
        await self._call("POST", f"/containers/{name}/start")

    def _signal(self, signal: str) -> None:
        """(From the pump's thread.) ``signal`` to the command: docker-init forwards it."""
        name = docker.container_name(self.cell_id)
        try:
            self.client.call("POST", f"/containers/{name}/kill", query={"signal": signal},
                             timeout=CLEANUP, ok=(204, 404, 409))  # fmt: skip
        except NixcellError as exc:
            log.warning("cannot signal the cell (%s): %s", signal, exc)

    def _reader_gone(self, stream: int) -> None:
        """The reader of the cell's stdout/stderr is gone: under bwrap the cell's next write
        would get EPIPE and SIGPIPE, here the shim takes every write: SIGPIPE it."""
        self._signal("SIGPIPE")

    def _ignores_sigpipe(self, stream: int) -> None:
        """It ignored SIGPIPE and still writes to the gone reader, where bwrap's writes would
        fail: end it, and say so (never a cell writing into nothing for ever)."""
        self._pipe_ignored = True
        log.warning(
            "the cell's %s reader is gone and the command ignores SIGPIPE and keeps writing "
            "(it cannot get EPIPE under docker): killed",
            "stdout" if stream == 1 else "stderr",
        )
        self._signal("SIGKILL")

    async def wait(self) -> BackendExit:
        if self._exit is not None:
            return self._exit
        name = docker.container_name(self.cell_id)
        # its own thread: a wait lasts as long as the cell, and cells waiting in the loop's
        # default executor (a few threads) would starve every other cell's short calls; no
        # limit but the run's timeout (the engine's), and after a kill what is left of CLEANUP
        limit = self._budget() if self._killed else None
        answer = await self._call("POST", f"/containers/{name}/wait", timeout=limit)
        code = dockerapi.field(answer, "StatusCode", kind=int)
        oom = False
        if code == 137:  # only a SIGKILL can be the memory limit's: ask the daemon which
            state = await self._call("GET", f"/containers/{name}/json")
            oom = dockerapi.field(state, "State", "OOMKilled", kind=bool)  # type: ignore[assignment]
        if self.pump is not None and not self._killed:
            # every byte delivered before the exit is reported, with no deadline of our own:
            # the reader may be slow, and the run's timeout bounds the whole (then kill + close)
            await _own_thread(self.pump.done.wait)
        if self._pipe_ignored:
            code = 141  # as its death by the broken pipe: the reader was gone
        self._exit = BackendExit(code & 0xFF, oom=oom)  # type: ignore[operator]
        return self._exit

    async def kill(self) -> None:
        self._killed = True
        self._cleanup()
        for name in reversed(self.names):
            with contextlib.suppress(NixcellError):
                await self._call("POST", f"/containers/{name}/kill", query={"signal": "KILL"})

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._cleanup()
        await _own_thread(self._remove_all)

    def _remove_all(self) -> None:
        for name in reversed(self.names):
            try:
                self.client.call(
                    "DELETE", f"/containers/{name}", query={"force": "1", "v": "1"},
                    ok=(204, 404), timeout=self._budget(),
                )  # fmt: skip
            except NixcellError as exc:
                log.warning("cannot remove container %s: %s (nixcell gc sweeps it)", name, exc)
        if self.pump is not None:
            self.pump.stop()
        try:
            dockerhost.remove(self.top)
        except OSError as exc:
            log.warning("cannot remove %s: %s (nixcell gc sweeps it)", self.top, exc)
