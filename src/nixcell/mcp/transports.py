"""The two ways ``nixcell mcp`` talks to clients: stdio (``stdio.py``) and streamable HTTP.

HTTP: uvicorn on a socket bound here (``--port 0`` works: the URL is logged), with the SDK's
DNS-rebinding protection (Host/Origin checks, for loopback and for any other ``--host``) and with
signals left to ``server._main``. ``CheckedBodies`` runs every POST body through the same
``jsonrpc.read_message`` as stdio, after the SDK's Host/Origin/Content-Type checks: a malformed
body gets a 4xx with a JSON-RPC error, and what reaches the SDK parses one way only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.transport_security import (
    DEFAULT_MAX_REQUEST_BODY_SIZE,
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nixcell.errors import UsageError
from nixcell.mcp.jsonrpc import Rejected, invalid_request, read_message

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_BODY = DEFAULT_MAX_REQUEST_BODY_SIZE  # the SDK's own limit (4 MiB)
MCP_PATH = "/mcp"  # where the SDK's app serves streamable HTTP (its default)
MCP_SESSION_IDLE = 1800.0  # the SDK's default idle expiry of an MCP session (30 min)


def _refusal(rejected: Rejected, status: int) -> Response:
    body = rejected.response.model_dump_json(by_alias=True, exclude_unset=True)
    return Response(body, status_code=status, media_type="application/json")


class CheckedBodies:
    """ASGI middleware: a POST the SDK's transport security refuses (421/403/400), or whose
    body ``read_message`` refuses (400, or 413 past ``MAX_BODY``), is answered here with a
    JSON-RPC error; a good one is replayed to the SDK byte for byte."""

    def __init__(self, app: ASGIApp, security: TransportSecuritySettings) -> None:
        self.app = app
        self.security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != MCP_PATH:
            return await self.app(scope, receive, send)
        refused = await self.security.validate_request(Request(scope), is_post=True)
        if refused is not None:  # the SDK's refusal (Host, Origin, Content-Type), as JSON-RPC
            why = bytes(refused.body).decode(errors="replace")
            return await _refusal(invalid_request(why), refused.status_code)(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                refused = invalid_request(f"body larger than {MAX_BODY} bytes")
                return await _refusal(refused, 413)(scope, receive, send)
            if not message.get("more_body", False):
                break
        checked = read_message(bytes(body))
        if isinstance(checked, Rejected):
            log.warning("refused a message from an HTTP client: %s", checked.reason)
            return await _refusal(checked, 400)(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _security(host: str) -> TransportSecuritySettings:
    """The SDK's DNS-rebinding protection: loopback names always, and ``host`` itself."""
    names = ["127.0.0.1", "localhost", "[::1]"]
    if host not in LOOPBACK:
        names.insert(0, f"[{host}]" if ":" in host else host)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[f"{n}:*" for n in names],
        allowed_origins=[f"http://{n}:*" for n in names],
    )


async def serve_http(
    server: Server[Any],
    host: str,
    port: int,
    stoppers: list[Callable[[], None]],
    mcp_idle: float = MCP_SESSION_IDLE,
) -> None:
    """Serve until a stopper is called. An MCP session with no request in flight and no open
    stream for ``mcp_idle`` seconds is ended by the SDK (and its persistent sessions with it)."""
    import socket

    import uvicorn

    if host not in LOOPBACK:
        log.warning(
            "listening on %s: anyone who can reach it can run code in cells (no authentication)",
            host,
        )
    security = _security(host)
    starlette_app = CheckedBodies(
        server.streamable_http_app(
            streamable_http_path=MCP_PATH,
            host=host,
            transport_security=security,
            session_idle_timeout=mcp_idle,
        ),
        security,
    )
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
