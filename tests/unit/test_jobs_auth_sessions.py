"""A web session is only as good as the token it was made from, *now*: after a SIGHUP that
removes, rotates or demotes the token, the cookie must follow the new config (review finding:
a session used to keep the caller it had at login, admin flag included, until a restart).

Driven through ``Gate.identify`` with a TCP scope, the way every HTTP and WebSocket request is."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from nixcell.jobs import auth
from nixcell.jobs.config import ServerConfig, Token
from nixcell.jobs.gate import Gate, Refused

LOCAL = ("127.0.0.1", 7878)
A, B = "tok-a-" + "x" * 40, "tok-b-" + "y" * 40


def _hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


PROOFS: dict[str, str] = {}  # cookie -> its proof, for the tests that are about the cookie


def _scope(cookie: str, path: str = "/api/v1/whoami", kind: str = "http") -> dict:
    headers = [(b"host", b"127.0.0.1:7878"), (b"cookie", f"{auth.COOKIE}={cookie}".encode())]
    if cookie in PROOFS:
        headers.append((b"x-nixcell-session", PROOFS[cookie].encode()))
    if kind == "websocket":
        headers.append((b"origin", b"http://127.0.0.1:7878"))
    return {"type": kind, "path": path, "method": "GET", "headers": headers,
            auth.PEER: auth.Peer("tcp", local=LOCAL)}  # fmt: skip


BEFORE = ServerConfig(tokens=(Token("web", _hash(A), admin=True), Token("other", _hash(B))))


def _login(gate: Gate, token: str) -> str:
    """What ``POST /api/v1/session`` does: the token's caller, then a cookie for it."""
    cookie = gate.sessions.create(auth.token_caller(gate.config(), token), token=token)
    PROOFS[cookie] = gate.sessions.proof_of_last
    return cookie


# (what SIGHUP did to the config, the caller the old cookie must be now: None = signed out)
CHANGES = [
    ("unchanged", BEFORE.tokens, ("token:web", True)),
    ("token removed", (Token("other", _hash(B)),), None),
    ("no tokens at all", (), None),
    ("hash rotated, same name", (Token("web", _hash("new-" + A), admin=True),), None),
    ("demoted", (Token("web", _hash(A), admin=False),), ("token:web", False)),
    ("renamed", (Token("renamed", _hash(A), admin=True),), ("token:renamed", True)),
    ("name now someone else's", (Token("web", _hash(B)), Token("x", _hash("z"))), None),
]


@pytest.mark.parametrize(("label", "tokens", "now"), CHANGES, ids=[c[0] for c in CHANGES])
@pytest.mark.parametrize("kind", ["http", "websocket"])
@pytest.mark.parametrize("path", ["/api/v1/whoami", "/api/v1/jobs/1/attach", "/metrics"])
def test_session_follows_the_reloaded_tokens(label, tokens, now, kind, path):
    holder = {"config": BEFORE}
    gate = Gate(None, lambda: holder["config"], auth.Sessions())
    cookie = _login(gate, A)
    assert gate.identify(_scope(cookie, path, kind)).key == "token:web"
    holder["config"] = replace(BEFORE, tokens=tokens)  # SIGHUP
    if now is None:
        with pytest.raises(Refused) as refused:
            gate.identify(_scope(cookie, path, kind))
        assert refused.value.status == 401
        holder["config"] = BEFORE  # put back: a revoked session stays gone
        with pytest.raises(Refused):
            gate.identify(_scope(cookie, path, kind))
    else:
        caller = gate.identify(_scope(cookie, path, kind))
        assert (caller.key, caller.admin) == now


def test_session_of_another_token_is_untouched():
    holder = {"config": BEFORE}
    gate = Gate(None, lambda: holder["config"], auth.Sessions())
    a, b = _login(gate, A), _login(gate, B)
    holder["config"] = replace(BEFORE, tokens=(Token("other", _hash(B)),))
    with pytest.raises(Refused):
        gate.identify(_scope(a))
    assert gate.identify(_scope(b)).key == "token:other"


def test_sessions_keep_no_token_text():
    sessions = auth.Sessions()
    sessions.create(auth.token_caller(BEFORE, A), token=A)
    assert A not in repr(vars(sessions))


# -- the cookie alone is not a session -------------------------------------------------------
# Cookies are not isolated by port (RFC 6265 §8.5): a browser signed in at 127.0.0.1:7878 sends
# ``nixcell_session`` to *any* server on 127.0.0.1 — another local user's on port 9999 included,
# which then holds the session (review finding). So a session also needs its proof, which only
# this origin's script holds (localStorage is per origin, port included): the header
# ``X-Nixcell-Session`` on fetch(), the query parameter ``session`` where a browser cannot set a
# header (EventSource), stripped before any route sees the query.


def _proof_scope(cookie: str | None, header: str | None = None, query: str = "", **kw) -> dict:
    scope = _scope(cookie or "", **kw)
    scope["headers"] = [h for h in scope["headers"] if h[0] != b"x-nixcell-session"]
    if cookie is None:
        scope["headers"] = [h for h in scope["headers"] if h[0] != b"cookie"]
    if header is not None:
        scope["headers"].append((b"x-nixcell-session", header.encode()))
    scope["query_string"] = query.encode()
    return scope


def _signed_in(gate: Gate, token: str = A) -> tuple[str, str]:
    caller = auth.token_caller(gate.config(), token)
    return gate.sessions.create(caller, token=token), gate.sessions.proof_of_last


@pytest.mark.parametrize(
    ("how", "ok"),
    [
        ("cookie only", False),
        ("cookie + header", True),
        ("cookie + query", True),
        ("cookie + query among others", True),
        ("cookie + wrong header", False),
        ("cookie + other session's proof", False),
        ("cookie + empty header", False),
        ("proof only, no cookie", False),
        ("cookie + proof twice in query", False),
    ],
)
@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_a_cookie_needs_its_proof(how, ok, kind):
    gate = Gate(None, lambda: BEFORE, auth.Sessions())
    cookie, proof = _signed_in(gate)
    _other_cookie, other = _signed_in(gate, B)
    scope = {
        "cookie only": lambda: _proof_scope(cookie, kind=kind),
        "cookie + header": lambda: _proof_scope(cookie, proof, kind=kind),
        "cookie + query": lambda: _proof_scope(cookie, query=f"session={proof}", kind=kind),
        "cookie + query among others": lambda: _proof_scope(
            cookie, query=f"follow=1&session={proof}&after=3", kind=kind
        ),
        "cookie + wrong header": lambda: _proof_scope(cookie, proof[:-1] + "x", kind=kind),
        "cookie + other session's proof": lambda: _proof_scope(cookie, other, kind=kind),
        "cookie + empty header": lambda: _proof_scope(cookie, "", kind=kind),
        "proof only, no cookie": lambda: _proof_scope(None, proof, kind=kind),
        "cookie + proof twice in query": lambda: _proof_scope(
            cookie, query=f"session={proof}&session={proof}", kind=kind
        ),
    }[how]()
    if ok:
        assert gate.identify(scope).key == "token:web"
    else:
        with pytest.raises(Refused) as refused:
            gate.identify(scope)
        assert refused.value.status in (400, 401)


def test_the_proof_is_stripped_from_the_query_routes_see():
    seen = {}

    async def app(scope, receive, send):
        seen["query"] = scope["query_string"]

    gate = Gate(app, lambda: BEFORE, auth.Sessions())
    cookie, proof = _signed_in(gate)
    import asyncio

    scope = _proof_scope(cookie, query=f"follow=1&session={proof}&after=3")
    asyncio.run(gate(scope, None, None))
    assert seen["query"] == b"follow=1&after=3"
    assert proof.encode() not in seen["query"]
