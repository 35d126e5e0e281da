"""``WS /api/v1/jobs/{id}/attach``: a client's terminal on an interactive job (API.md "Attach").

Binary frames are terminal bytes both ways; a text frame from the client is a JSON control
(``{"resize": [rows, cols]}``). The caller is ``gate.Gate``'s, and the job is the service's to
show: another user's job is the same 4404 as one that does not exist. A queued or preparing
interactive job is waited for (what the client types meanwhile is kept, up to ``EARLY_INPUT``
bytes); a finished or non-interactive one is 4409. When the job ends the server sends
``{"exit": {"state", "exit_code", "reason"}}`` and closes with 1000. Errors close with
4000 + the HTTP status and the one-line reason; the job goes on whatever the client does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from nixcell.jobs.contract import Conflict, JobError, Service, Terminal
from nixcell.jobs.gate import one_line
from nixcell.jobs.model import TERMINAL, Caller

log = logging.getLogger("nixcell.jobs.api")
PATH = "/api/v1/jobs/{id}/attach"
POLL = 0.2  # s between looks at a job that is not running yet / not stored as ended yet
END_WAIT = 60.0  # s the service may take to store the state of a job whose cell ended
EARLY_INPUT = 64 * 1024  # bytes typed before the job's terminal exists that are kept
CONTROL_LIMIT = 1024  # a text frame is a small JSON control
INBOX = 4  # client messages taken ahead of the relay (each at most uvicorn's ws_max_size)
LIVE: set[asyncio.Task[Any]] = set()  # attachments being served (shutdown lets them end)


async def settle(limit: float) -> None:
    """At shutdown, after the service stopped (every job's end is stored): let the attached
    clients get their job's exit frame before the server closes their sockets (under load the
    close could come first, and the client would not know how its job ended)."""
    live = {t for t in LIVE if not t.done()}
    if live:
        await asyncio.wait(live, timeout=limit)


def websocket_route(service: Service) -> WebSocketRoute:
    """The route ``api.create_app`` plugs in."""

    async def endpoint(ws: WebSocket) -> None:
        task = asyncio.current_task()
        if task is not None:
            LIVE.add(task)
        try:
            await Attach(service, ws).run()
        finally:
            if task is not None:
                LIVE.discard(task)

    return WebSocketRoute(PATH, endpoint)


class Closed(Exception):
    """The client went away."""


class Attach:
    """One client connection: wait for the terminal, relay, report the job's end."""

    def __init__(self, service: Service, ws: WebSocket) -> None:
        self.service = service
        self.ws = ws
        # bounded: a client sending faster than this relays is held back (uvicorn then stops
        # reading its socket), never buffered here without end
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(INBOX)
        self.early = bytearray()  # keys typed before the terminal exists
        self.size: tuple[int, int] | None = None  # the latest resize asked for

    async def run(self) -> None:
        from nixcell.jobs.api import caller_of, job_id

        await self.ws.accept()
        receiver = asyncio.ensure_future(self._receive())
        term: Terminal | None = None
        try:
            caller, ident = caller_of(self.ws), job_id(self.ws)
            term = await self._terminal(caller, ident)
            if term is not None:
                log.info("job %d: %s attached", ident, caller.name)
                await self._relay(term)
            await self._exit(caller, ident)
        except Closed:
            pass
        except JobError as exc:
            await self._close(4000 + exc.status, exc.message)
        except Exception:
            log.exception("attach: internal error")
            await self._close(1011, "internal error")
        finally:
            if term is not None:
                term.detach()
                log.info("job %d: %s detached", ident, caller.name)
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await receiver

    async def _receive(self) -> None:
        while True:
            message = await self.ws.receive()
            await self.inbox.put(message)
            if message["type"] == "websocket.disconnect":
                return

    async def _next(self, timeout: float | None) -> dict[str, Any] | None:
        """The client's next message (None after ``timeout``); Closed when it went away."""
        try:
            message = await asyncio.wait_for(self.inbox.get(), timeout)
        except TimeoutError:
            return None
        if message["type"] == "websocket.disconnect":
            raise Closed()
        return message

    def _control(self, text: str) -> None:
        """A text frame: only ``{"resize": [rows, cols]}``."""
        try:
            data = json.loads(text) if len(text) <= CONTROL_LIMIT else None
            rows, cols = data["resize"]  # type: ignore[index]
            if set(data) != {"resize"} or not all(type(n) is int for n in (rows, cols)):
                raise ValueError
        except (ValueError, TypeError, KeyError):
            raise JobError('a text frame must be {"resize": [rows, cols]}') from None
        if not (1 <= rows <= 4096 and 1 <= cols <= 4096):
            raise JobError("a terminal size is 1 to 4096 rows and columns")
        self.size = (rows, cols)

    def _take(self, message: dict[str, Any]) -> bytes | None:
        """Keys from a client message (None: a control, applied to ``size``)."""
        if message.get("bytes") is not None:
            return message["bytes"]
        self._control(message.get("text") or "")
        return None

    async def _terminal(self, caller: Caller, ident: int) -> Terminal | None:
        """The job's terminal once it runs, the client's messages meanwhile kept; None when
        the job ended while this waited (it failed to start: the exit frame says why)."""
        waited = False
        while True:
            job = self.service.get(caller, ident)  # NotFound for another user's job
            if not job.request.get("interactive"):
                raise Conflict(f"job {ident} is not interactive")
            if job.terminal:
                if waited:
                    return None
                raise Conflict(f"job {ident} has finished ({job.state})")
            if job.state == "running":
                try:
                    term = await self.service.terminal(caller, ident)
                except Conflict:  # ended or not registered yet: look again
                    pass
                else:
                    if self.size is not None:
                        term.resize(*self.size)
                    if self.early:
                        await term.write(bytes(self.early))
                        self.early.clear()
                    return term
            waited = True
            message = await self._next(POLL)
            while message is not None:  # all that came meanwhile, then look at the job again
                keys = self._take(message)
                if keys:
                    self.early += keys[: max(0, EARLY_INPUT - len(self.early))]
                message = await self._next(0) if not self.inbox.empty() else None

    async def _relay(self, term: Terminal) -> None:
        """Output to the client and its keys to the terminal, until the job's output ends."""
        output = asyncio.ensure_future(self._output(term))
        try:
            while not output.done():
                got = asyncio.ensure_future(self._next(None))
                await asyncio.wait({output, got}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await got
                    break
                keys = self._take(got.result())  # type: ignore[arg-type]
                if keys is not None:
                    await term.write(keys)
                elif self.size is not None:
                    term.resize(*self.size)
            await output  # its error (a client too far behind) is raised here
        finally:
            output.cancel()

    async def _output(self, term: Terminal) -> None:
        while data := await term.read():
            try:
                await self.ws.send_bytes(data)
            except (OSError, RuntimeError, WebSocketDisconnect):  # uvicorn's ClientDisconnected
                raise Closed() from None

    async def _exit(self, caller: Caller, ident: int) -> None:
        """The job's output is over: wait until its end is stored, then say how it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + END_WAIT
        job = self.service.get(caller, ident)
        delay = 0.005  # the state follows the cell's end closely (a shutdown closes us soon)
        while job.state not in TERMINAL and loop.time() < deadline:
            await self._next(delay)  # (keys typed now have no cell to go to)
            delay = min(delay * 2, POLL)
            job = self.service.get(caller, ident)
        if job.state not in TERMINAL:
            raise JobError(f"job {ident} ended but its state was not stored", status=500)
        shown = {"state": job.state, "exit_code": job.exit_code, "reason": job.reason}
        await self.ws.send_text(json.dumps({"exit": shown}))
        await self._close(1000, "")

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # (the client may be gone already)
            await self.ws.close(code, one_line(reason).encode()[:120].decode(errors="ignore"))
