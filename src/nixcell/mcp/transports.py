"""The two ways ``nixcell mcp`` talks to clients: stdio and streamable HTTP.

stdio: the client's messages are read from fd 0 by the event loop itself, not by a worker thread
blocked in ``read`` (which would keep the process alive after SIGTERM until the client wrote
again); fd 0 then points at /dev/null, and the SDK points fd 1 at stderr while it serves, so
nothing else can read the client's messages or write into its pipe.

HTTP: uvicorn on a socket bound here (``--port 0`` works: the URL is logged), with the SDK's
DNS-rebinding protection (on by itself for loopback hosts, set up here for any other) and with
signals left to ``server._main``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from typing import Any

from mcp.server.lowlevel import Server

from nixcell.errors import UsageError

log = logging.getLogger(__name__)

MAX_LINE = 64 << 20
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StdinLines:
    """The client's messages, one per line, read from ``fd`` by the event loop itself."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE)
        pipe = os.fdopen(self.fd, "rb", buffering=0)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    log.error("dropped a message longer than %d bytes", MAX_LINE)
                    continue
                if not line:
                    return
                yield line.decode("utf-8", errors="replace")
        finally:
            transport.close()


async def serve_stdio(server: Server[Any]) -> None:
    from mcp.server.stdio import stdio_server

    stdin = None
    if not stat.S_ISREG(os.fstat(0).st_mode):  # pipes, sockets, terminals: read on the loop
        wire = os.dup(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # nothing else reads the client's messages
        os.close(null)
        stdin = StdinLines(wire)
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):  # type: ignore[arg-type]
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(
    server: Server[Any], host: str, port: int, stoppers: list[Callable[[], None]]
) -> None:
    import socket

    import uvicorn
    from mcp.server.transport_security import TransportSecuritySettings

    security = None  # the SDK's DNS-rebinding protection for loopback hosts
    if host not in LOOPBACK:
        log.warning(
            "listening on %s: anyone who can reach it can run code in cells (no authentication)",
            host,
        )
        names = [host, "127.0.0.1", "localhost", "[::1]"]
        security = TransportSecuritySettings(
            allowed_hosts=[f"{n}:*" for n in names],
            allowed_origins=[f"http://{n}:*" for n in names],
        )
    starlette_app = server.streamable_http_app(host=host, transport_security=security)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        why = os.strerror(exc.errno) if exc.errno else str(exc)
        raise UsageError(f"cannot listen on {host}:{port}: {why}") from None

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # type: ignore[override]
            yield  # nixcell handles the signals (see _main)

    config = uvicorn.Config(
        starlette_app, log_config=None, access_log=False, timeout_graceful_shutdown=3
    )
    http = _Server(config)
    stoppers.insert(0, lambda: setattr(http, "should_exit", True))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    log.info("serving MCP on http://%s:%d/mcp", shown, bound)
    with sock:
        await http.serve(sockets=[sock])
