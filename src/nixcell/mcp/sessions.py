"""Persistent sessions of the MCP ``run`` tool: one long-lived cell per session.

A session is a cell whose command is the agent (``agent.py``, mounted read-only at /run/nixcell
with its helpers): it hosts one persistent interpreter (python, bash or node) of the environment
the session was created in. The host talks to it over a socketpair passed into the cell
(``execute_async(pass_fds=…)``): JSON lines, every request with its own id, replies matched by id
— a reply nobody waits for any more is dropped, never taken for the next request's. The cell's
own stdin/stdout/stderr carry nothing of the protocol.

``/workspace`` is a host temp dir (``nixcell-session-*``) bound into the cell: it outlives
interpreter restarts and even a restart of the cell, and is removed when the session ends
(``close``, eviction, idle or lifetime expiry, ``shutdown``). Calls to one session are
serialised; sessions run in parallel. Ending a session cancels its cell task, which kills every
process of the cell and its cgroups (the runner's guarantee).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from nixcell.errors import NixcellError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.runner import RunResult
    from nixcell.spec import CellSpec

log = logging.getLogger(__name__)

AGENT_DIR = "/run/nixcell"
AGENT_FILES = ("agent.py", "agent_interpreters.py", "agent_python.py")
INTERPRETERS = ("python", "bash", "node")
REPLY_LIMIT = 64 << 20  # one reply line: up to 2 MiB of output, JSON-escaped
START_TIMEOUT = 60.0  # cell and interpreter start; the closure is resolved before
ANSWER_MARGIN = 30.0  # beyond timeout + grace (and an interpreter restart) = the agent is stuck
REMEMBERED_ENDS = 1024  # ended sessions whose next call gets a notice


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


def _remove_tree(path: str) -> None:
    """Remove a workspace, even one where the cell made directories unwritable."""
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IRWXU)
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), stat.S_IRWXU)
    shutil.rmtree(path, ignore_errors=True)


class _Session:
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
        self.cell: asyncio.Task[RunResult] | None = None
        self.cells_started = 0
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[dict | None]] = {}
        self._ready: asyncio.Future[dict | None] | None = None
        self._next_id = 0

    @property
    def running(self) -> bool:
        return self.cell is not None and not self.cell.done()

    async def start(self, grace: float, workspace_root: str | None) -> None:
        from nixcell.runner import execute_async, prepare

        loop = asyncio.get_running_loop()
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="nixcell-session-", dir=workspace_root)
        host, child = socket.socketpair()
        try:
            os.set_inheritable(child.fileno(), True)
            spec = agent_spec(self.env, self.workdir, child.fileno(), grace)
            plan, _ = await asyncio.to_thread(prepare, spec)
            reader, self._writer = await asyncio.open_unix_connection(sock=host, limit=REPLY_LIMIT)
            self._ready = loop.create_future()
            self._reader = asyncio.create_task(self._read(reader))
            self.cell = asyncio.create_task(
                execute_async(
                    plan,
                    pass_fds=[child.fileno()],
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
        notice = reply.get("notice")
        return result(  # the agent lives in the cell: take its values, not its types, on trust
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            exit_code=int(reply.get("exit_code", 1)),
            timed_out=bool(reply.get("timed_out")),
            truncated=bool(reply.get("truncated")),
            notice=str(notice) if notice else None,
            state_lost=bool(reply.get("state_lost")),
        )

    async def stop_cell(self, wait: float = 0.0) -> RunResult | None:
        """End the cell (after ``wait`` s for it to end by itself); its RunResult if it had one."""
        cell, self.cell = self.cell, None
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
        if self.workdir is not None:
            await asyncio.to_thread(_remove_tree, self.workdir)
            self.workdir = None


class SessionManager:
    """Sessions by id: created on first use, serialised per session, ended when unused."""

    def __init__(
        self,
        *,
        max_sessions: int = 16,
        idle_timeout: float = 300.0,
        max_lifetime: float = 3600.0,
        interrupt_grace: float = 2.0,
        workspace_root: str | None = None,
    ) -> None:
        if max_sessions < 1 or idle_timeout <= 0 or max_lifetime <= 0 or interrupt_grace <= 0:
            raise ValueError("max_sessions, idle_timeout, max_lifetime and grace must be > 0")
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.grace = interrupt_grace
        self.workspace_root = workspace_root  # where the workspaces go (default: the temp dir)
        self._sessions: dict[str, _Session] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # id -> notice for its next call
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._shut = False

    async def call(self, session_id: str, env: SessionEnv, code: str, timeout: float) -> CallResult:
        """Run ``code`` in the session (created on first use). Raises SessionError."""
        while True:
            if self._shut:
                raise SessionError("the session manager has shut down")
            self._start_reaper()
            session = self._sessions.get(session_id)
            if session is None:
                self._make_room()
                session = _Session(session_id, env, self._ended.pop(session_id, None))
                self._sessions[session_id] = session
            elif session.env.name != env.name:
                raise SessionError(
                    f"session '{session_id}' belongs to environment '{session.env.name}', not "
                    f"'{env.name}': call it with env '{session.env.name}', or use another "
                    "session name"
                )
            async with session.lock:
                if session.ended:  # evicted, expired or closed while this call waited
                    continue
                if time.monotonic() - session.created >= self.max_lifetime:
                    self._end(session, "reached the maximum session lifetime", self.max_lifetime)
                    continue
                return await self._call_locked(session, code, timeout)

    async def _call_locked(self, session: _Session, code: str, timeout: float) -> CallResult:
        notices = [session.notice] if session.notice else []
        session.notice = None
        session.last_used = time.monotonic()
        if not session.running:
            if session.cells_started:
                notices.append("the session cell was restarted: state lost (/workspace kept)")
            try:
                await session.start(self.grace, self.workspace_root)
            except BaseException:
                if session.cells_started <= 1 and self._sessions.get(session.id) is session:
                    del self._sessions[session.id]  # never worked: no session to keep
                    self._schedule_close(session)
                raise
        session.calls += 1
        try:
            result = await session.run(code, timeout, self.grace)
        finally:
            session.last_used = time.monotonic()
        if notices:
            result.notice = "\n".join([*notices, *([result.notice] if result.notice else [])])
        return result

    def _make_room(self) -> None:
        while len(self._sessions) >= self.max_sessions:
            idle = [s for s in self._sessions.values() if not s.lock.locked()]
            if not idle:
                raise SessionError(
                    f"all {self.max_sessions} sessions are busy: try again when a call has "
                    "finished, or close a session"
                )
            lru = min(idle, key=lambda s: s.last_used)
            self._end(lru, f"was evicted (least recently used of {self.max_sessions} sessions)")

    def _end(self, session: _Session, why: str, seconds: float | None = None) -> None:
        """End a session now; its id's next call gets a fresh session and a notice saying so."""
        if seconds is not None:
            why = f"{why} ({seconds:g}s)"
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        self._ended[session.id] = (
            f"session '{session.id}' {why}: its state and /workspace were lost; "
            "this is a fresh session"
        )
        while len(self._ended) > REMEMBERED_ENDS:
            self._ended.popitem(last=False)
        session.ended = True
        self._schedule_close(session)

    def _schedule_close(self, session: _Session) -> None:
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        interval = max(0.1, min(self.idle_timeout, self.max_lifetime, 60.0) / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                if session.lock.locked():
                    continue
                if now - session.last_used >= self.idle_timeout:
                    self._end(session, "ended after going unused", self.idle_timeout)
                elif now - session.created >= self.max_lifetime:
                    self._end(session, "reached the maximum session lifetime", self.max_lifetime)

    async def close(self, session_id: str) -> bool:
        """End a session (a call running in it ends too). False if there is no such session."""
        session = self._sessions.pop(session_id, None)
        self._ended.pop(session_id, None)
        if session is None:
            return False
        await session.close()
        return True

    def list(self) -> list[dict[str, object]]:
        now = time.monotonic()
        return [
            {
                "id": s.id,
                "env": s.env.name,
                "interpreter": s.env.interpreter,
                "age_s": round(now - s.created, 1),
                "idle_s": 0.0 if s.lock.locked() else round(now - s.last_used, 1),
                "calls": s.calls,
                "busy": s.lock.locked(),
            }
            for s in self._sessions.values()
        ]

    async def shutdown(self) -> None:
        """End every session: no cell process, cgroup or workspace is left."""
        self._shut = True
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.wait({self._reaper})
        sessions = list(self._sessions.values())
        self._sessions.clear()
        closing = [asyncio.ensure_future(s.close()) for s in sessions] + list(self._closing)
        if closing:
            await asyncio.wait(closing)
