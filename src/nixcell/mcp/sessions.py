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

Sessions belong to a *client*: the key of a session is (client, name), and ``list``/``close``
see only the caller's own. The server names the client — ``LOCAL`` for the one stdio client,
the MCP session id for an HTTP one, ``SHARED`` when sharing is switched on — and calls
``end_client`` when that client's MCP session ends, which ends its sessions; a call for a client
that has ended is refused. Limits are fair between clients: a client holds at most
``max_client_sessions``, and a new session only ever evicts one of its *own* client's (least
recently used first); when the server holds ``max_sessions`` and the client has none idle to
give up, the new session is refused, never made by ending another client's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict

from nixcell.mcp.sessioncell import (  # re-exported: callers import them from here
    CallResult,
    SessionCell,
    SessionEnv,
    SessionError,
    agent_spec,
)

__all__ = ["CallResult", "SessionEnv", "SessionError", "SessionManager", "agent_spec"]

log = logging.getLogger(__name__)

REMEMBERED_ENDS = 1024  # ended sessions whose next call gets a notice
REMEMBERED_CLIENTS = 4096  # ended clients whose late calls are refused
LOCAL = "local"  # the one client of a stdio server
SHARED = "shared"  # every client, when the server shares sessions between them

_Key = tuple[str, str]  # (client, session name)


class _Session(SessionCell):
    """A session cell with the client it belongs to."""

    def __init__(self, client: str, name: str, env: SessionEnv, notice: str | None) -> None:
        super().__init__(name, env, notice)
        self.client = client

    @property
    def key(self) -> _Key:
        return (self.client, self.id)


class SessionManager:
    """Sessions by (client, name): created on first use, serialised per session, ended when
    unused or when their client ends."""

    def __init__(
        self,
        *,
        max_sessions: int = 16,
        max_client_sessions: int | None = None,
        idle_timeout: float = 300.0,
        max_lifetime: float = 3600.0,
        interrupt_grace: float = 2.0,
        workspace_root: str | None = None,
    ) -> None:
        if max_sessions < 1 or idle_timeout <= 0 or max_lifetime <= 0 or interrupt_grace <= 0:
            raise ValueError("max_sessions, idle_timeout, max_lifetime and grace must be > 0")
        self.max_sessions = max_sessions
        self.max_client_sessions = min(max_client_sessions or max_sessions, max_sessions)
        if self.max_client_sessions < 1:
            raise ValueError("max_client_sessions must be > 0")
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.grace = interrupt_grace
        self.workspace_root = workspace_root  # where the workspaces go (default: the temp dir)
        self._sessions: dict[_Key, _Session] = {}
        self._ended: OrderedDict[_Key, str] = OrderedDict()  # key -> notice for its next call
        self._gone: OrderedDict[str, None] = OrderedDict()  # clients that have ended
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._shut = False

    async def call(
        self, session_id: str, env: SessionEnv, code: str, timeout: float, *, client: str = LOCAL
    ) -> CallResult:
        """Run ``code`` in ``client``'s session ``session_id`` (created on first use).
        Raises SessionError."""
        key = (client, session_id)
        while True:
            if self._shut:
                raise SessionError("the session manager has shut down")
            if client in self._gone:
                raise SessionError("this client's MCP session has ended")
            self._start_reaper()
            session = self._sessions.get(key)
            if session is None:
                self._make_room(client)
                session = _Session(client, session_id, env, self._ended.pop(key, None))
                self._sessions[key] = session
            elif session.env.name != env.name:
                raise SessionError(  # the tool names the session: "session 's': it belongs…"
                    f"it belongs to environment '{session.env.name}', not '{env.name}': call it "
                    f"with env '{session.env.name}', or use another session name"
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
                if session.cells_started <= 1 and self._sessions.get(session.key) is session:
                    del self._sessions[session.key]  # never worked: no session to keep
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

    def _make_room(self, client: str) -> None:
        """Room for one more session of ``client``, made only at its own sessions' expense."""
        while True:
            own = [s for s in self._sessions.values() if s.client == client]
            if len(own) < self.max_client_sessions and len(self._sessions) < self.max_sessions:
                return
            idle = [s for s in own if not s.lock.locked()]
            if not idle:
                if len(own) >= self.max_client_sessions:
                    raise SessionError(
                        f"all {len(own)} sessions of this client are busy: try again when a "
                        "call has finished, or close a session"
                    )
                raise SessionError(
                    f"the server holds its maximum of {self.max_sessions} sessions "
                    f"({len(own)} of them this client's, all busy; the rest other clients'): "
                    f"try again later (idle sessions end after {self.idle_timeout:g}s), or "
                    "call without a session"
                )
            lru = min(idle, key=lambda s: s.last_used)
            limit = min(self.max_client_sessions, self.max_sessions)
            self._end(lru, f"was evicted (least recently used of this client's {limit} sessions)")

    def _end(self, session: _Session, why: str, seconds: float | None = None) -> None:
        """End a session now; its name's next call gets a fresh session and a notice saying so."""
        if seconds is not None:
            why = f"{why} ({seconds:g}s)"
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        self._ended[session.key] = (
            f"session '{session.id}' {why}: its state and /workspace were lost; "
            "this is a fresh session"
        )
        while len(self._ended) > REMEMBERED_ENDS:
            self._ended.popitem(last=False)
        session.ended = True
        self._schedule_close(session)

    def _schedule_close(self, session: SessionCell) -> None:
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

    async def close(self, session_id: str, *, client: str = LOCAL) -> bool:
        """End ``client``'s session (a call running in it ends too). False if it has none by
        that name."""
        session = self._sessions.pop((client, session_id), None)
        self._ended.pop((client, session_id), None)
        if session is None:
            return False
        await session.close()
        return True

    def end_client(self, client: str) -> int:
        """``client`` is gone (its MCP session ended): end its sessions, refuse its late calls.
        Returns how many sessions ended; their cells close in the background."""
        self._gone[client] = None
        while len(self._gone) > REMEMBERED_CLIENTS:
            self._gone.popitem(last=False)
        for key in [k for k in self._ended if k[0] == client]:
            del self._ended[key]
        ending = [s for s in self._sessions.values() if s.client == client]
        for session in ending:
            del self._sessions[session.key]
            session.ended = True
            self._schedule_close(session)
        if ending:
            log.info("a client's MCP session ended: closing its %d session(s)", len(ending))
        return len(ending)

    def list(self, *, client: str = LOCAL) -> list[dict[str, object]]:
        """``client``'s sessions (never another client's)."""
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
            if s.client == client
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
