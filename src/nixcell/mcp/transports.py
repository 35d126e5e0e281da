"""The two ways ``nixcell mcp`` talks to clients: stdio (``stdio.py``) and streamable HTTP.

HTTP: uvicorn on a socket bound here (``--port 0`` works: the URL is logged), with the SDK's
DNS-rebinding protection (on by itself for loopback hosts, set up here for any other) and with
signals left to ``server._main``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from mcp.server.lowlevel import Server

from nixcell.errors import UsageError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
