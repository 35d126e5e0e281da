"""Tokens a credential's host issues, in any shape, become dummies (net/issued.py), and the
number of them per cell is capped (red-team F4, F5). Companion of test_credentials.py."""

from __future__ import annotations

import asyncio
import json
import secrets
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.errors import CredentialError
from nixcell.net.credentials import MAX_ISSUED, CellCredentials, parse_credentials
from nixcell.net.issued import family_of, names_secret

ALNUM = string.ascii_letters + string.digits
REAL = "ghp_" + "R3alT0kenAbCdEfGhIjKlMnOpQrStUv1234"
HOST, API = "auth.example.com", "api.example.com"


def cell() -> CellCredentials:
    table = {"name": "gh", "source": "env:X", "hosts": [HOST, API], "body": True}
    return CellCredentials([(parse_credentials([table], "t.toml")[0], REAL)])


def token(prefix: str = "ghs_") -> str:
    return prefix + "".join(secrets.choice(ALNUM) for _ in range(36))


def check_mapped(cc: CellCredentials, body: bytes, real: str, ctype: str = "") -> str:
    """Observe ``body``; the cell must not get ``real`` in any spelling, and the dummy at its
    place must go back as ``real`` to the credential's hosts (header and body), nowhere else."""
    out = cc.observe_token_response(HOST, body, ctype)
    assert len(out) == len(body)
    assert real.encode() not in out and not cc.exposes(out.decode("latin-1"))
    at = body.index(real.encode())
    dummy = out[at : at + len(real)]
    assert dummy != real.encode() and len(dummy) == len(real)
    headers = [(b"authorization", b"Bearer " + dummy)]
    assert cc.rewrite_request_headers(API, headers)[0][1] == b"Bearer " + real.encode()
    assert cc.rewrite_request_headers("evil.test", headers) == headers
    rewriter = cc.request_body_rewriter(HOST)
    assert rewriter is not None
    sent = b"refresh_token=" + dummy
    assert rewriter.feed(sent) + rewriter.flush() == b"refresh_token=" + real.encode()
    assert cc.scrub(b"echo " + real.encode()) == b"echo " + dummy  # scrubbed from now on
    return dummy.decode()


SHAPES = {
    "github-app": lambda t: json.dumps({"token": t, "expires_at": "2030-01-01T00:00:00Z"}),
    "id_token": lambda t: json.dumps({"access_token": token("gho_"), "id_token": t}),
    "nested": lambda t: json.dumps({"data": {"access_token": t}}),
    "deep-array": lambda t: json.dumps([{"a": [[{"b": {"Refresh-Token": t}}]]}]),
    "upper-key": lambda t: json.dumps({"CLIENT_SECRET": t}),
    "camel-key": lambda t: json.dumps({"apiKey": t, "name": "x"}),
    "password": lambda t: json.dumps({"user": "me", "password": t}),
    "secret-subtree": lambda t: json.dumps({"credentials": {"value": t}}),
    "jwt": lambda t: json.dumps({"jwt": t}),
    "family-anywhere": lambda t: json.dumps({"result": [1, {"note": t}]}),
    "json-in-string": lambda t: json.dumps({"payload": json.dumps({"token": t})}),
    "ndjson": lambda t: '{"event": "x"}\n' + json.dumps({"session_key": t}) + "\n",
    "xssi": lambda t: ")]}'\n" + json.dumps({"token": t}),
    "form": lambda t: f"access_token={t}&token_type=bearer&expires_in=3600",
    "lines": lambda t: f"refresh_token={t}\nexpires=3600\n",
    "pretty": lambda t: json.dumps({"data": {"token": t}}, indent=4),
}
MEDIA = ["application/json", "text/plain", "text/javascript", "", "application/octet-stream",
         "text/html; charset=utf-8", "application/x-www-form-urlencoded"]  # fmt: skip


@pytest.mark.parametrize("ctype", MEDIA)
@pytest.mark.parametrize("name", list(SHAPES))
def test_issued_token_of_any_shape_and_media_type_is_mapped(name: str, ctype: str) -> None:
    cc = cell()
    real = token()
    dummy = check_mapped(cc, SHAPES[name](real).encode(), real, ctype)
    assert dummy.startswith("ghs_")  # the prefix a client sniffs is kept
    assert real in cc.secrets()


def test_escaped_json_tokens_are_mapped() -> None:
    cc = cell()
    real = "ab/cd+" + token("")
    body = json.dumps({"Data": {"Token": real}}).replace("/", "\\/").encode()
    out = cc.observe_token_response(HOST, body, "application/json")
    assert not cc.exposes(out.decode()) and json.loads(out)["Data"]["Token"] != real
    body = json.dumps({"token": real}, ensure_ascii=False).replace("a", "\\u0061").encode()
    out = cc.observe_token_response(HOST, body, "")
    assert not cc.exposes(out.decode()) and json.loads(out)["token"] != real


@pytest.mark.parametrize(
    "doc",
    [
        {"token_type": "bearer", "expires_in": 3600, "scope": "repo"},
        {"token_endpoint": "https://auth.example.com/oauth/token-endpoint-long"},
        {"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG", "name": "my-laptop-key-1"},
        {"message": "not a ghs_ token: ghs_ is a prefix", "login": "octocat-12345678"},
        {"usage": {"input_tokens": 12, "output_tokens": 345}},
        {"secret_scanning": {"status": "disabled"}, "license": {"key": "mit-license"}},
        {"session": {"state": "active and well", "kind": "interactive"}},
    ],
)
def test_values_that_are_not_secrets_are_left_alone(doc: dict) -> None:
    cc = cell()
    body = json.dumps(doc).encode()
    assert cc.observe_token_response(HOST, body, "application/json") == body
    assert cc.secrets() == [REAL]


def test_unparsable_token_shaped_body_is_refused_other_bodies_pass() -> None:
    cc = cell()
    real = token()
    for bad in (b'{"access_token": "' + real.encode(), b'{"x": 1, "y": "' + real.encode()):
        with pytest.raises(CredentialError) as err:
            cc.observe_token_response(HOST, bad, "application/json")
        assert real not in str(err.value)
    assert cc.observe_token_response(HOST, b"{oops", "") == b"{oops"
    html = b"<html>hello " + REAL.encode() + b"</html>"  # not mapped, still scrubbed
    out = cc.observe_token_response(HOST, html, "text/html")
    assert REAL.encode() not in out and len(out) == len(html)


def test_short_canonical_token_fails_closed_short_other_fields_pass() -> None:
    cc = cell()
    with pytest.raises(CredentialError) as err:
        cc.observe_token_response(HOST, b'{"data": {"Access_Token": "abc"}}', "")
    assert "abc" not in str(err.value)
    body = b'{"session_state": "ok", "token_type": "bearer"}'
    assert cc.observe_token_response(HOST, body, "") == body


def test_key_names_and_families() -> None:
    for key in ("token", "ACCESS-TOKEN", "refreshToken", "id_token", "Client_Secret", "passwd",
                "api_key", "X-Api-Key", "key", "jwt", "credentials", "sessionId",
                "assertion"):  # fmt: skip
        assert names_secret(key), key
    for key in ("token_type", "expires_in", "token_url", "public_key", "keys", "name", "author",
                "input_tokens_count", "monkeys"):  # fmt: skip
        assert not names_secret(key), key
    assert "ghs_" in family_of(REAL) and "github_pat_" in family_of(REAL)
    assert family_of("sk-ant-api03-" + "x" * 40) == ("sk-",)
    assert family_of("0123456789abcdef0123456789abcdef") == ()


_SECRET_KEYS = ["token", "access_token", "refresh_token", "id_token", "client_secret",
                "password", "api_key", "key", "jwt", "session", "credential"]  # fmt: skip
_PLAIN_KEYS = ["data", "items", "result", "meta", "name", "value", "x"]


def _spell(key: str, style: int) -> str:
    parts = key.split("_")
    return [key, key.upper(), "-".join(p.title() for p in parts),
            parts[0] + "".join(p.title() for p in parts[1:])][style]  # fmt: skip


@st.composite
def _placed(draw: st.DrawFn) -> tuple[object, str]:
    """A JSON tree holding ``real`` under a secret-named key somewhere inside."""
    real = "tk-" + draw(st.text(ALNUM, min_size=24, max_size=48))
    key = _spell(draw(st.sampled_from(_SECRET_KEYS)), draw(st.integers(0, 3)))
    node: object = {key: real}
    for _ in range(draw(st.integers(0, 6))):
        filler = draw(st.sampled_from(["n", 7, None, True, "bearer"]))
        if draw(st.booleans()):
            node = [filler, node] if draw(st.booleans()) else [node, filler]
        else:
            node = {draw(st.sampled_from(_PLAIN_KEYS)): node, "other": filler}
    return node, real


@settings(max_examples=150, deadline=None)
@given(_placed(), st.sampled_from(MEDIA), st.integers(0, 2))
def test_property_nested_secret_keys_never_reach_the_cell(
    placed: tuple[object, str], ctype: str, indent: int
) -> None:
    doc, real = placed
    body = json.dumps(doc, indent=indent or None).encode()
    check_mapped(cell(), body, real, ctype)


def _one(cc: CellCredentials) -> tuple[str, bytes]:
    real = token()
    return real, json.dumps({"token": real}).encode()


def test_cap_refuses_the_65th_token_and_keeps_the_earlier_mappings() -> None:
    cc = cell()
    groups_before = list(cc.spellings().groups)
    first_real, body = _one(cc)
    first_dummy = check_mapped(cc, body, first_real)
    for _ in range(MAX_ISSUED - 1):
        real, body = _one(cc)
        cc.observe_token_response(HOST, body, "application/json")
    # incremental: the groups already compiled are kept as they are, one group per response
    groups = cc.spellings().groups
    assert groups[: len(groups_before)] == groups_before and len(groups) == MAX_ISSUED + 1
    real, body = _one(cc)
    with pytest.raises(CredentialError) as err:
        cc.observe_token_response(HOST, body, "application/json")
    assert f"cap of {MAX_ISSUED}" in str(err.value) and real not in str(err.value)
    assert real not in cc.secrets() and len(cc.secrets()) == MAX_ISSUED + 1
    # earlier mappings still work and their reals are still scrubbed; a known token is no new one
    headers = [(b"authorization", f"Bearer {first_dummy}".encode())]
    assert cc.rewrite_request_headers(API, headers)[0][1] == f"Bearer {first_real}".encode()
    assert cc.scrub(first_real.encode()) == first_dummy.encode()
    again = cc.observe_token_response(HOST, json.dumps({"token": first_real}).encode(), "")
    assert first_real.encode() not in again


def test_settle_compiles_new_tokens_and_streams_through_every_group() -> None:
    cc = cell()
    real = token()
    body = json.dumps({"token": real}).encode()
    tokens = cc.issue_tokens(HOST, body)
    asyncio.run(cc.settle())
    assert len(cc.spellings().groups) == 2  # compiled by settle, not again here
    out = cc.hide_tokens(HOST, body, tokens)
    dummy = json.loads(out)["token"]
    echoed = f"a {REAL} b {real} c".encode()
    scrubber = cc.response_scrubber()
    cut = echoed.index(real.encode()) + 5
    streamed = scrubber.feed(echoed[:cut]) + scrubber.feed(echoed[cut:]) + scrubber.flush()
    assert streamed == f"a {cc.cell_env()['GH_TOKEN']} b {dummy} c".encode()
