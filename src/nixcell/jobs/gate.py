"""The API's front door (pure ASGI): who is calling, and whether a TCP request may be answered.

Runs before any route: unix peers become callers by SO_PEERCRED (``auth.PeerProtocol`` put the
peer in the scope); TCP requests must name the listener in ``Host`` (DNS rebinding), carry a
same-origin ``Origin`` when they change state, and a bearer token or a web session cookie for
``/api/`` and ``/metrics``. The caller goes in ``scope["nixcell.caller"]`` (None on the public
paths: the web page's files, the OpenAPI document, the login). Refusals are one-line JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from nixcell.jobs import auth
from nixcell.jobs.model import Caller

CALLER = "nixcell.caller"
log = logging.getLogger("nixcell.jobs.api")
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
_PUBLIC = ("/api/v1/openapi.json", "/api/v1/session")
PROOF_HEADER = "x-nixcell-session"  # a web session's proof (``auth.Sessions``), on fetch()
PROOF_PARAM = "session"  # the same as a query parameter, for EventSource


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def one_line(text: str) -> str:
    """Control characters written as escapes: an error message is one line, whatever it quotes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Gate:
    """ASGI middleware: identify, check Host/Origin on TCP, refuse unauthenticated API calls."""

    def __init__(self, app: Any, config: Callable[[], Any], sessions: auth.Sessions) -> None:
        self.app = app
        self.config = config  # a getter: SIGHUP replaces the config
        self.sessions = sessions

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            caller = self.identify(scope)
        except Refused as exc:
            await _refuse(scope, send, exc)
            return
        await self.app({**scope, CALLER: caller, **_without_proof(scope)}, receive, send)

    def identify(self, scope: dict) -> Caller | None:
        peer = scope.get(auth.PEER)
        path = scope.get("path", "")
        needs_caller = (path.startswith("/api/") and path not in _PUBLIC) or path == "/metrics"
        if isinstance(peer, auth.Peer) and peer.family == "unix" and peer.uid is not None:
            config = self.config()
            return auth.unix_caller(peer.uid, peer.gid, getattr(config, "admin_group", None))
        if not isinstance(peer, auth.Peer) or peer.family != "tcp" or peer.local is None:
            raise Refused(403, "connection of unknown kind refused")  # fail closed
        headers = _headers(scope)
        host = headers.get("host", "").lower()
        config = self.config()
        if host not in auth.allowed_hosts(peer.local, getattr(config, "listen", ())) and not (
            path.startswith("/nix-cache/") and host == _cache_host(config)
        ):  # (the cache is reached by the name the other hosts know it by: its own password)
            raise Refused(421, f"wrong Host {one_line(host[:100])!r} for this listener")
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        origin = headers.get("origin")
        if origin is not None and (method not in _SAFE) and origin.lower() != f"http://{host}":
            raise Refused(403, f"cross-origin request refused (Origin {one_line(origin[:100])!r})")
        caller, by_cookie = self._tcp_caller(headers, _query_proof(scope))
        if not needs_caller:
            return caller
        if caller is None:
            raise Refused(401, "a token is required")
        if by_cookie and method == "WEBSOCKET" and origin is None:
            raise Refused(403, "a web socket with a session cookie needs its Origin")
        if by_cookie and method not in _SAFE | {"WEBSOCKET"} and headers.get("x-nixcell") != "1":
            raise Refused(403, "a web request that changes state needs the header X-Nixcell: 1")
        return caller

    def _tcp_caller(
        self, headers: dict[str, str], query_proof: str | None
    ) -> tuple[Caller | None, bool]:
        token = auth.bearer(headers.get("authorization"))
        if token is not None:
            caller = auth.token_caller(self.config(), token)
            if caller is None:
                raise Refused(401, "a token is required")  # same answer: wrong == missing
            return caller, False
        cookie = _cookie(headers.get("cookie"))
        proof = headers.get(PROOF_HEADER) or query_proof
        caller = self.sessions.get(cookie, self.config(), proof)
        return caller, caller is not None


def _cache_host(config: Any) -> str | None:
    """``host[:port]`` of this host's ``cache_url`` (lower case), or None."""
    url = getattr(config, "cache_url", None)
    if not url:
        return None
    from urllib.parse import urlsplit

    return urlsplit(url).netloc.lower() or None


def _query_proof(scope: dict) -> str | None:
    """The ``session`` query parameter (EventSource cannot send a header); twice is refused."""
    found = [v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True)
             if k == PROOF_PARAM]  # fmt: skip
    if len(found) > 1:
        raise Refused(400, f"query parameter {PROOF_PARAM!r} given twice")
    return found[0] if found else None


def _without_proof(scope: dict) -> dict:
    """The scope's query without ``session=``: no route sees (or logs, or refuses) the proof."""
    raw = scope.get("query_string", b"")
    if PROOF_PARAM.encode() not in raw:
        return {}
    kept = [p for p in raw.split(b"&") if p.split(b"=", 1)[0] != PROOF_PARAM.encode()]
    return {"query_string": b"&".join(kept)}


def _headers(scope: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}; {text}" if key == "cookie" and key in out else text
    return out


def _cookie(header: str | None) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(auth.COOKIE)
    return morsel.value if morsel is not None else None


async def _refuse(scope: dict, send: Any, exc: Refused) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + exc.status, "reason": exc.message})
        return
    body = json.dumps({"error": exc.message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
