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


def _scope(cookie: str, path: str = "/api/v1/whoami", kind: str = "http") -> dict:
    headers = [(b"host", b"127.0.0.1:7878"), (b"cookie", f"{auth.COOKIE}={cookie}".encode())]
    if kind == "websocket":
        headers.append((b"origin", b"http://127.0.0.1:7878"))
    return {"type": kind, "path": path, "method": "GET", "headers": headers,
            auth.PEER: auth.Peer("tcp", local=LOCAL)}  # fmt: skip


BEFORE = ServerConfig(tokens=(Token("web", _hash(A), admin=True), Token("other", _hash(B))))


def _login(gate: Gate, token: str) -> str:
    """What ``POST /api/v1/session`` does: the token's caller, then a cookie for it."""
    return gate.sessions.create(auth.token_caller(gate.config(), token), token=token)


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
