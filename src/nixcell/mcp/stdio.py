"""The stdio transport: newline-delimited JSON-RPC on the client's pipes, every line answered.

nixcell reads and writes the client's pipes itself rather than through the SDK's
``stdio_server``, for three reasons:

- every line is checked by ``jsonrpc.read_message``; a malformed one gets a JSON-RPC error
  response (the SDK's reader drops it with a debug log, and the client waits forever);
- stdin is read by the event loop when the kernel can poll it (pipes, sockets, terminals), so
  SIGTERM stops the server at once, and by short reads in a worker thread when it cannot
  (regular files, ``/dev/null``: epoll refuses them, and the SDK's reader used to hang there);
- end of input means the client is gone: the server stops (cancelling running calls, which
  kills their cells) instead of waiting for calls nobody will read.

While serving, fd 0 points at /dev/null and fd 1 at stderr, so nothing a handler or a child
process reads or writes can touch the protocol pipes. A line longer than ``MAX_LINE`` is
skipped to its end and answered with one error; a last line without a newline is a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
from collections.abc import AsyncIterator
from typing import Any

import anyio
from mcp.server.lowlevel import Server
from mcp.shared._context_streams import create_context_streams
from mcp.shared.message import SessionMessage

from nixcell.mcp.jsonrpc import Rejected, invalid_request, read_message

log = logging.getLogger(__name__)

MAX_LINE = 64 << 20
CHUNK = 1 << 16
DRAIN_TIME = 5.0  # at the end, queued answers get this long to reach a client that reads


class Lines:
    """Splits a byte stream into lines of at most ``limit`` bytes (h11-style: no I/O here).

    ``feed`` returns the complete lines (without the newline) and, for each line that grew past
    the limit, ``None`` once: its bytes are discarded up to its newline.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, data: bytes) -> list[bytes | None]:
        out: list[bytes | None] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._skipping:
                self._buffer += piece
                if len(self._buffer) > self.limit:
                    self._buffer.clear()
                    self._skipping = True
                    out.append(None)
            if end < 0:
                return out
            if not self._skipping:
                out.append(bytes(self._buffer))
            self._buffer.clear()
            self._skipping = False
            start = end + 1

    def end(self) -> list[bytes]:
        """At end of input: the last line, when it had no newline."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [rest] if rest and not self._skipping else []


def _pollable(fd: int) -> bool:
    poller = select.epoll()
    try:
        poller.register(fd, select.EPOLLIN)
    except OSError:  # EPERM: a regular file or /dev/null
        return False
    finally:
        poller.close()
    return True


async def _chunks(fd: int) -> AsyncIterator[bytes]:
    """What arrives on ``fd`` until EOF (an empty read), read without blocking the loop."""
    if not _pollable(fd):  # reads of regular files and /dev/null never wait
        while True:
            try:
                chunk = await anyio.to_thread.run_sync(os.read, fd, CHUNK, abandon_on_cancel=True)
            except OSError as exc:  # EISDIR: `nixcell mcp < /`, ...
                log.info("stdin: %s: treating it as end of input", os.strerror(exc.errno or 0))
                return
            if not chunk:
                return
            yield chunk
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        while True:
            try:
                chunk = os.read(fd, CHUNK)
            except BlockingIOError:
                ready.clear()
                await ready.wait()
                continue
            except OSError as exc:  # EIO from a terminal that went away, ...
                log.info("stdin: %s: treating it as end of input", os.strerror(exc.errno or 0))
                return
            if not chunk:
                return
            yield chunk
    finally:
        loop.remove_reader(fd)


async def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to the non-blocking ``fd`` on the loop: a client that stops reading
    stalls only this task, never a thread the process would wait for at exit."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            ready = asyncio.Event()
            loop.add_writer(fd, ready.set)
            try:
                await ready.wait()
            finally:
                loop.remove_writer(fd)


async def _write_messages(fd: int, outgoing: Any) -> None:
    """Each message as one line on ``fd`` until the senders are done or the client stops
    reading (a closed pipe ends the server like end of input does)."""
    async with outgoing:
        async for message in outgoing:
            data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
            try:
                await _write_all(fd, data.encode() + b"\n")
            except OSError as exc:
                log.info("stdout: %s: the client is gone", os.strerror(exc.errno or 0))
                return


async def _read_messages(fd: int, incoming: Any, errors: Any) -> None:
    """Each line to the server as a message, or its error response to the client."""
    lines = Lines()

    async def handle(line: bytes | None) -> None:
        message = invalid_request(f"message longer than {MAX_LINE} bytes") if line is None else (
            read_message(line.rstrip(b"\r"))
        )
        if isinstance(message, Rejected):
            log.warning("refused a message from the client: %s", message.reason)
            await errors.send(SessionMessage(message.response))
        else:
            await incoming.send(SessionMessage(message))

    async with incoming, errors:
        async for chunk in _chunks(fd):
            for line in lines.feed(chunk):
                await handle(line)
        for line in lines.end():
            await handle(line)
    log.info("stdin closed: the client is gone")


def open_std_fds() -> None:
    """A closed fd 0, 1 or 2 (``nixcell mcp <&-``) points at /dev/null: else the next file the
    process opens — the event loop's epoll — would take its number and be clobbered when the
    transport claims it. A closed stdin then reads as end of input, a closed stdout discards."""
    from nixcell.stdfds import reopen_closed

    reopen_closed(discard=True)


def _claim(fd: int, replacement: int) -> int:
    """A private duplicate of ``fd`` for the protocol; ``fd`` itself then points elsewhere."""
    private = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(replacement, fd)
    return private


async def serve_stdio(server: Server[Any]) -> None:
    """Serve one client on fd 0/1 until it closes either pipe (or the caller cancels)."""
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        wire_in = _claim(0, null)
    finally:
        os.close(null)
    wire_out = _claim(1, 2)
    os.set_blocking(wire_out, False)  # regular files and /dev/null never say EAGAIN
    read_send, read_recv = create_context_streams[SessionMessage | Exception](0)
    write_send, write_recv = create_context_streams[SessionMessage](0)
    errors = write_send.clone()
    try:
        async with anyio.create_task_group() as outer:
            serving = anyio.CancelScope()

            async def write_then_stop() -> None:
                await _write_messages(wire_out, write_recv)
                serving.cancel()

            outer.start_soon(write_then_stop)
            with serving:
                async with anyio.create_task_group() as tg:

                    async def read_then_stop() -> None:
                        await _read_messages(wire_in, read_send, errors)
                        serving.cancel()  # end of input: the client is gone

                    tg.start_soon(read_then_stop)
                    await server.run(read_recv, write_send, server.create_initialization_options())
            # The server and the reader are done: the answers they queued go out, briefly.
            errors.close()
            write_send.close()
            outer.cancel_scope.deadline = anyio.current_time() + DRAIN_TIME
    finally:
        for fd in (wire_in, wire_out):  # the file descriptions may be shared (a terminal)
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)
                os.close(fd)
