"""One MCP session's cell: the agent inside it, the socketpair protocol, and its workspace.

The host side of ``agent.py``: JSON lines over a socketpair passed into the cell, every request
with its own id; a reply nobody waits for any more is dropped, never taken for the next
request's. ``SessionManager`` (sessions.py) decides when cells start and end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from nixcell.errors import NixcellError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nixcell.runner import RunResult
    from nixcell.sandbox.holder import CellNamespaces
    from nixcell.sandbox.nonet import NoNetwork
    from nixcell.spec import CellSpec

log = logging.getLogger(__name__)

AGENT_DIR = "/run/nixcell"
AGENT_FILES = (
    "agent.py",
    "agent_interpreters.py",
    "agent_python.py",
    "agent_bash.sh",
    "agent_node.js",
)
INTERPRETERS = ("python", "bash", "node")
REPLY_LIMIT = 64 << 20  # one reply line: up to 2 MiB of output, JSON-escaped
START_TIMEOUT = 60.0  # cell and interpreter start; the closure is resolved before
ANSWER_MARGIN = 30.0  # beyond timeout + grace (and an interpreter restart) = the agent is stuck
WORKSPACE_SIZE = 256 << 20  # a session's /workspace, unless its environment sets a disk limit


class SessionError(NixcellError):
    """A session call that cannot run: wrong environment, all sessions busy, start failure."""


@dataclass(frozen=True)
class SessionEnv:
    """What a session cell needs. ``spec.command`` and ``spec.workdir`` are ignored."""

    name: str  # environment name, e.g. "python"
    interpreter: str  # "python" | "bash" | "node"
    spec: CellSpec  # packages, limits (memory/pids; timeout ignored), network, mounts, env, cwd


@dataclass
class CallResult:
    stdout: str
    stderr: str
    exit_code: int  # 124 when timed out
    timed_out: bool
    truncated: bool  # a stream passed 1 MiB and was cut (with a marker line)
    duration_ms: float
    session: str | None
    notice: str | None  # interpreter restarted / session evicted / state lost or kept …
    state_lost: bool = False  # this call ended the interpreter's (or the cell's) state


def agent_spec(env: SessionEnv, workdir: str | None, fd: int, grace: float = 2.0) -> CellSpec:
    """The session cell: the environment's spec running the agent on ``fd``.

    python3 is added to the packages of bash/node environments (the agent is Python). Preparing
    this spec once (``nixcell.runner.prepare`` with any fd) warms the resolution cache.
    """
    from nixcell.spec import make_spec

    if env.interpreter not in INTERPRETERS:
        raise SessionError(f"unknown interpreter {env.interpreter!r} (python, bash or node)")
    base = env.spec.model_dump()
    here = Path(__file__).resolve().parent
    mounts = [*base["mounts"]]
    mounts += [{"source": str(here / n), "target": f"{AGENT_DIR}/{n}"} for n in AGENT_FILES]
    packages = base["packages"] + ([] if env.interpreter == "python" else ["python3"])
    command = ["python3", "-E", "-s", f"{AGENT_DIR}/agent.py", "--fd", str(fd)]
    command += ["--interpreter", env.interpreter, "--grace", f"{grace:g}"]
    fields = {**base, "command": command, "packages": packages, "workdir": workdir}
    return make_spec(**{**fields, "mounts": mounts, "limits": {**base["limits"], "timeout": None}})


class SessionCell:
    """One session: its cell task, the socket to its agent, its workspace."""

    def __init__(self, session_id: str, env: SessionEnv, notice: str | None) -> None:
        self.id = session_id
        self.env = env
        self.created = self.last_used = time.monotonic()
        self.calls = 0
        self.lock = asyncio.Lock()
        self.ended = False  # closed, evicted or expired: no more calls
        self.notice = notice  # for the next call
        self.workdir: str | None = None
        self.volume: CellNamespaces | None = None  # the workspace: a tmpfs in held namespaces
        self.cell: asyncio.Task[RunResult] | None = None
        self.cells_started = 0
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict | None]] = {}
        self._ready: asyncio.Future[dict | None] | None = None
        self._next_id = 0
        self._net_pid: int | None = None  # the cell's pid 1: its network counters, per call
        self._audit: object | None = None  # with a network: the proxy's decisions

    @property
    def running(self) -> bool:
        return self.cell is not None and not self.cell.done()

    async def start(self, grace: float, workspace_root: str | None = None) -> None:
        """Start the session's cell (its workspace volume on the first start).

        ``workspace_root`` is no longer used: workspaces are volumes, not host directories."""
        from nixcell.runner import execute_async, prepare

        loop = asyncio.get_running_loop()
        if self.volume is None:
            # A bounded tmpfs that outlives each of the session's cells and vanishes with the
            # session (or a killed server): no host directory to fill, sweep or walk.
            from nixcell.sandbox import holder

            size = self.env.spec.limits.disk or WORKSPACE_SIZE
            self.volume = await asyncio.to_thread(holder.create_volume, size)
            self.workdir = holder.volume_dir()
        host, child = socket.socketpair()
        try:
            os.set_inheritable(child.fileno(), True)
            spec = agent_spec(self.env, self.workdir, child.fileno(), grace)
            plan, _ = await asyncio.to_thread(prepare, spec, volumes=(self.workdir,))
            reader, self._writer = await asyncio.open_unix_connection(sock=host, limit=REPLY_LIMIT)
            self._ready = loop.create_future()
            self._reader = asyncio.create_task(self._read(reader))
            self.cell = asyncio.create_task(
                execute_async(
                    plan,
                    pass_fds=[child.fileno()],
                    namespaces=self.volume,
                    on_start=self._started,
                    stdin=subprocess.DEVNULL,  # the cell's stdio carries nothing: the agent
                    stdout=subprocess.DEVNULL,  # reports over the socket, and nothing a user
                    stderr=subprocess.DEVNULL,  # writes piles up in the server's memory
                )
            )
            self.cells_started += 1
            await asyncio.wait(
                {self._ready, self.cell},
                timeout=START_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            host.close()
            await self.stop_cell()
            raise
        finally:
            child.close()  # the cell has its own copy now (or never will)
        message = self._ready.result() if self._ready.done() else None
        if message is not None and message.get("event") == "ready":
            return
        result = await self.stop_cell()
        if message is not None:
            why = str(message.get("message", "the agent failed"))
        elif result is not None:
            why = f"the session cell ended at start ({result.message or result.exit_code})"
        else:
            why = f"the session cell did not start within {START_TIMEOUT:g}s"
        raise SessionError(why)

    def _started(self, cell: object, network: object | None) -> None:
        self._net_pid = getattr(cell, "child_pid", None)
        self._audit = getattr(network, "audit", None)

    def _watch_network(self) -> Callable[[int], NoNetwork | None]:
        """Before a call: what to say after it, if it fails having tried the network (the
        one-shot run's line, sandbox/nonet.py; the counters and denials of this call only)."""
        from nixcell.sandbox import nonet

        probe = nonet.NetProbe.open(self._net_pid) if self._net_pid else None
        audit = self._audit
        seen = len(getattr(audit, "denied", ()))

        def after(exit_code: int) -> NoNetwork | None:
            try:
                denied = getattr(audit, "denied", [])[seen:]
                return nonet.detect(exit_code, probe, networked=audit is not None, denied=denied)
            finally:
                if probe is not None:
                    probe.close()

        return after

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "event" in message:
                    if self._ready is not None and not self._ready.done():
                        self._ready.set_result(message)
                    elif message.get("event") == "fatal":
                        log.error("session %s: agent failed: %s", self.id, message.get("message"))
                    continue
                future = self._pending.pop(message.get("id"), None)
                if future is None or future.done():
                    log.debug("session %s: dropped a reply nobody awaits", self.id)
                else:
                    future.set_result(message)
        except (ValueError, OSError) as exc:  # a broken line or a lost socket: the cell is done
            log.warning("session %s: protocol error: %s", self.id, exc)
        finally:
            for future in [*self._pending.values(), self._ready]:
                if future is not None and not future.done():
                    future.set_result(None)
            self._pending.clear()

    async def request(self, payload: dict[str, object], wait: float) -> dict | None:
        """Send one request, await the reply with its id; None when the cell has ended."""
        if self._writer is None or self._reader is None or self._reader.done():
            return None
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict | None] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(json.dumps({"id": request_id, **payload}).encode() + b"\n")
            await self._writer.drain()
            return await asyncio.wait_for(future, wait)
        except (TimeoutError, asyncio.CancelledError):  # (TimeoutError is an OSError)
            if self._writer is not None and not self._writer.is_closing():
                cancel = {"op": "cancel", "target": request_id}  # interrupt the code now
                self._writer.write(json.dumps(cancel).encode() + b"\n")
            raise
        except OSError:
            return None
        finally:
            self._pending.pop(request_id, None)

    async def run(self, code: str, timeout: float, grace: float) -> CallResult:
        started = time.monotonic()

        def result(**fields: object) -> CallResult:
            base = dict(stdout="", stderr="", exit_code=124, timed_out=False, truncated=False)
            ms = round((time.monotonic() - started) * 1000, 1)
            return CallResult(**{**base, **fields, "duration_ms": ms, "session": self.id})  # type: ignore[arg-type]

        watch = self._watch_network()
        try:
            return await self._run(code, timeout, grace, result, watch)
        finally:
            watch(0)  # closes the counters whatever happened (0: nothing more to say)

    async def _run(
        self,
        code: str,
        timeout: float,
        grace: float,
        result: Callable[..., CallResult],
        watch: Callable[[int], NoNetwork | None],
    ) -> CallResult:
        payload = {"op": "run", "code": code, "timeout": timeout}
        try:
            reply = await self.request(payload, timeout + grace + ANSWER_MARGIN)
        except TimeoutError:
            await self.stop_cell()
            return result(
                timed_out=True,
                state_lost=True,
                notice=f"timed out after {timeout:g}s and the session's agent did not answer: "
                "its cell was killed, state lost (files in /workspace are kept)",
            )
        if reply is None:
            if self.ended:
                return result(state_lost=True, notice="the session was closed during this call")
            end = await self.stop_cell(wait=5.0)  # the agent died: OOM, pids, killed …
            exit_code = 1 if end is None else (137 if end.oom_killed else end.exit_code or 1)
            why = (end.message or f"exit code {end.exit_code}") if end else "no result"
            return result(
                exit_code=exit_code,
                state_lost=True,
                notice=f"the session cell ended ({why}): state lost; the next call starts a "
                "fresh cell (files in /workspace are kept)",
            )
        if "error" in reply:
            raise SessionError(str(reply["error"]))
        notices = [str(reply["notice"])] if reply.get("notice") else []
        exit_code = int(reply.get("exit_code", 1))
        no_network = watch(exit_code)
        if no_network is not None:  # the one-shot run's words (tool.py)
            notices.append(f"({no_network.line('mcp')})")
        return result(  # the agent lives in the cell: take its values, not its types, on trust
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            exit_code=exit_code,
            timed_out=bool(reply.get("timed_out")),
            truncated=bool(reply.get("truncated")),
            notice="\n".join(notices) or None,
            state_lost=bool(reply.get("state_lost")),
        )

    async def stop_cell(self, wait: float = 0.0) -> RunResult | None:
        """End the cell (after ``wait`` s for it to end by itself); its RunResult if it had one."""
        cell, self.cell = self.cell, None
        self._net_pid = self._audit = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        outcome = None
        if cell is not None:
            if wait and not cell.done():
                await asyncio.wait({cell}, timeout=wait)
            cell.cancel()  # kills every process of the cell, removes its cgroups
            await asyncio.wait({cell})
            if not cell.cancelled() and cell.exception() is None:
                outcome = cell.result()
            elif not cell.cancelled():
                log.warning("session %s: cell failed: %s", self.id, cell.exception())
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
            self._reader = None
        return outcome

    async def close(self) -> None:
        self.ended = True
        await self.stop_cell()
        if self.volume is not None:
            self.volume.close()  # the last reference: the workspace's tmpfs is gone
            self.volume = None
            self.workdir = None
