# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The real credential never reaches the cell, in any spelling, from any host, by any door.

A real cell stores its (dummy, swapped to real by the proxy) token at the credential's host
``up.test``; a second allowed host, ``other.test``, hands it back in every spelling, in headers,
header names, redirects, bodies under Content-Encoding tricks, chunk splits, trailers and
WebSocket frames (tests/integration/leaky.py). The cell reads raw bytes through the proxy, and
each spelling of the real value is checked absent, its dummy's spelling present. Cleartext http
gets no real value unless the credential says ``allow_plaintext``. Loopback only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import string

import pytest
from tests.integration import leaky
from tests.integration import upstream as up
from tests.integration.test_net_credentials import (
    GH_ENV,
    auth,
    github_token,
    network,
    nothing_leaked,
    py,
    write_policy,
)

from nixcell.net.spellings import Spellings
from nixcell.net.urlpath import normalize_path

RAW_CLIENT = r"""
import base64, json, os, socket, ssl, sys
port = int(sys.argv[1])
token = os.environ["GITHUB_TOKEN"]
ctx = ssl.create_default_context()

def connect(host):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return ctx.wrap_socket(s, server_hostname=host)

def raw(host, path, extra=""):
    t = connect(host)
    t.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n{extra}\r\n".encode())
    data = b""
    while chunk := t.recv(65536):
        data += chunk
    return base64.b64encode(data).decode()

WS = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
out = {"dummy": token}
out["store"] = raw("up.test", "/store", f"Authorization: Bearer {token}\r\n")
for name in sys.argv[2].split(","):
    out["republish/" + name] = raw("other.test", "/republish/" + name)
for case in ("two-headers", "stacked", "br", "te-gzip", "cl-te"):
    out["coded/" + case] = raw("other.test", "/coded/" + case)
for step in (1, 2, 5, 11, 23, 47):
    out[f"chunks/{step}"] = raw("other.test", f"/chunks?{step}")
out["trailer"] = raw("other.test", "/trailer")
for first, last in ((0, 20), (21, 60)):  # the secret in two pieces, neither of them the secret
    out[f"range/{first}"] = raw("other.test", "/stored", f"Range: bytes={first}-{last}\r\n")
for parts in (1, 2, 3, 7):
    out[f"ws/{parts}"] = raw("other.test", f"/ws?{parts}", WS)
for kind in PACKED:
    out["packed/" + kind] = raw("other.test", "/packed/" + kind)
out["hop-ce"] = raw("other.test", "/hop-ce")
out["path-store"] = raw("up.test", "/p/" + token)  # the dummy as a name the host keeps
out["path-stored"] = raw("other.test", "/packed/gz")
p = socket.create_connection(("127.0.0.1", 3128), timeout=20)  # a denied HEAD, plain proxy
p.sendall(b"HEAD http://evil.test/ HTTP/1.1\r\nHost: evil.test\r\n\r\n")
out["head-denied"] = base64.b64encode(p.recv(4096)).decode()
print(json.dumps(out))
"""

B64 = string.ascii_letters + string.digits + "+/"


def aws_like() -> str:
    """An AWS-style secret access key: 40 characters, ``/`` ``+`` heavy, ending in ``=``."""
    return "".join(secrets.choice(B64) for _ in range(34)) + "/+/+=" + secrets.choice("AB")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    directory = tmp_path_factory.mktemp("leaky")
    _, ca_file, chain = up.make_ca(directory)
    server = leaky.start(chain)
    server.ca_file = ca_file  # type: ignore[attr-defined]
    yield server
    server.stop()


def split_http(data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    if ("Transfer-Encoding", "chunked") in [(k.title(), v) for k, v in headers]:
        body = dechunk(body)
    return int(lines[0].split()[1]), headers, body  # type: ignore[return-value]


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            return out
        out, data = out + data[:n], data[n + 2 :]
    return out


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, payload) of each unmasked server frame."""
    found = []
    while len(data) >= 2:
        n, at = data[1] & 0x7F, 2
        if n == 126:
            n, at = int.from_bytes(data[2:4], "big"), 4
        found.append((data[0], data[at : at + n]))
        data = data[at + n :]
    return found


@pytest.fixture(params=["github", "aws"])
def run(request, offline_set, upstream, tmp_path, monkeypatch):
    real = github_token() if request.param == "github" else aws_like()
    monkeypatch.setenv(GH_ENV, real)
    upstream.seen.clear()
    policy = write_policy(tmp_path / "p.toml", upstream.port)
    names = ",".join(leaky.SPELLINGS)
    code = RAW_CLIENT.replace("sys.argv[1]", str(upstream.port)).replace("sys.argv[2]", repr(names))
    code = code.replace(
        "in PACKED:", f"in {leaky.PACKED + tuple('clean-' + k for k in leaky.PACKED)!r}:"
    )
    result = py(code, network(upstream, policy))
    assert result.exit_code == 0, (result.stderr or b"").decode()[-3000:]
    out = json.loads(result.stdout.decode().splitlines()[-1])
    dummy = out.pop("dummy")
    assert len(dummy) == len(real) and dummy != real
    received = {key: base64.b64decode(value) for key, value in out.items()}
    return real, dummy, received, result


def no_spelling_of(real: str, data: bytes, where: str) -> None:
    for name, (spell, _) in leaky.SPELLINGS.items():
        text = spell(real).encode()
        for form in (text, text.replace(b"\r\n", b" ")):
            assert form not in data, f"{name} spelling of the real value in {where}"
    assert real.encode() not in data, where
    assert not Spellings([(real, "x" * len(real))]).found(data), where


def test_second_host_republishing_in_any_spelling_gets_the_dummy(run, upstream):
    real, dummy, received, result = run
    # The credential host did get the real value, so other.test had it to give back.
    assert [auth(s) for s in upstream.seen if s.path == "/store"] == [f"Bearer {real}"]
    for key, data in received.items():
        no_spelling_of(real, data, key)
    for name, (spell, decode) in leaky.SPELLINGS.items():
        status, headers, body = split_http(received[f"republish/{name}"])
        want = spell(dummy)
        # What a client reads is the dummy spelled the same way (hex digits of a character
        # written without letters may come back in the other case).
        assert status == 302 and len(body) == len(want) + 2, (name, body, want)
        assert decode(body[1:-1].decode()) == decode(want), (name, body, want)
        assert dummy in decode(want), name
        values = {k.lower(): v for k, v in headers}
        assert decode(values["x-leak"]) == decode(want.replace("\r\n", " ")), name
        location = values["location"].removeprefix("https://x.test/cb?t=")
        assert decode(location) == decode(want.replace("\r\n", " ")), name
        if name in ("raw", "hex", "HEX") and all(c.isalnum() or c in "-_" for c in want):
            # Header names too, lower-cased by HTTP/1.1 parsers (a lower-cased base64 is not
            # matched: it is no longer the secret's encoding).
            assert values[f"x-{want.lower()}"] == "name", (name, headers)
    nothing_leaked(result, real)


def test_spellings_split_across_chunks_are_caught(run):
    real, dummy, received, _ = run
    for step in (1, 2, 5, 11, 23, 47):
        status, _, body = split_http(received[f"chunks/{step}"])
        assert status == 200
        no_spelling_of(real, received[f"chunks/{step}"], f"chunks/{step}")
        for name, (spell, decode) in leaky.SPELLINGS.items():
            want = spell(dummy)
            found = body.split(f"{name}=[".encode(), 1)[1].split(b"]", 1)[0].decode()
            assert decode(found) == decode(want), (step, name, found, want)


def test_content_and_transfer_encoding_tricks_are_decoded_or_refused(run):
    real, dummy, received, _ = run
    for key in [k for k in received if k.startswith("coded/")] + ["trailer"]:
        no_spelling_of(real, received[key], key)
    for case in ("two-headers", "stacked"):
        status, headers, body = split_http(received[f"coded/{case}"])
        assert status == 200 and body == f"leak={dummy}\n".encode(), (case, body)
        assert "content-encoding" not in [k.lower() for k, _ in headers], headers
    for case in ("br", "te-gzip", "cl-te"):
        status, _, body = split_http(received[f"coded/{case}"])
        assert status == 502 and body.startswith(b"nixcell proxy: "), (case, body)
    status, headers, body = split_http(received["trailer"])
    assert status == 200 and body == b"ok"  # trailers are not passed on


def test_byte_ranges_cannot_fetch_a_secret_in_pieces(run):
    real, dummy, received, _ = run
    for first in (0, 21):
        no_spelling_of(real, received[f"range/{first}"], f"range/{first}")
        status, _, body = split_http(received[f"range/{first}"])
        # Range is not passed on for a credentialed cell: the whole body comes, scrubbed.
        assert status == 200 and body == f"stored={dummy}\n".encode(), (status, body)


def test_websocket_frames_are_scrubbed_across_fragments(run):
    real, dummy, received, _ = run
    message = b"msg " + dummy.encode() + b" " + base64.b64encode(dummy.encode()) + b" end"
    for parts in (1, 2, 3, 7):
        no_spelling_of(real, received[f"ws/{parts}"], f"ws/{parts}")
        head, _, rest = received[f"ws/{parts}"].partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        assert b"sec-websocket-extensions" not in head.lower()  # never negotiated
        got = frames(rest)
        text = b"".join(p for first, p in got if first & 0x0F in (0, 1))
        assert text == message, (parts, got)
        assert (0x89, b"ping " + dummy.encode()) in got
        assert (0x82, b"bin" + dummy.encode().hex().encode()) in got
        assert got[-1] == (0x88, b"\x03\xe8" + dummy.encode())
        assert len([f for f, _ in got if f & 0x0F in (0, 1)]) == parts  # framing kept


WS_ECHO = r"""
import base64, json, os, socket, ssl, sys
port, token = int(sys.argv[1]), os.environ["GITHUB_TOKEN"]
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(f"CONNECT up.test:{port} HTTP/1.1\r\nHost: up.test:{port}\r\n\r\n".encode())
assert s.recv(4096).startswith(b"HTTP/1.1 200")
t = ssl.create_default_context().wrap_socket(s, server_hostname="up.test")
t.sendall((f"GET /ws-echo HTTP/1.1\r\nHost: up.test:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
message = json.dumps({"type": "auth", "token": token}).encode()
cut = message.index(token.encode()) + len(token) // 2  # the dummy split across two fragments
for i, (part, key) in enumerate(((message[:cut], b"\x01\x02\x03\x04"), (message[cut:], b"\xa0\xb1\xc2\xd3"))):
    masked = bytes(b ^ key[j % 4] for j, b in enumerate(part))
    t.sendall(bytes([(0x80 if i else 0) | (0 if i else 1), 0x80 | len(part)]) + key + masked)
data = b""
while chunk := t.recv(65536):
    data += chunk
print(json.dumps({"dummy": token, "raw": base64.b64encode(data).decode()}))
"""


def test_websocket_cell_frames_carry_the_real_value_to_its_host_only(
    offline_set, upstream, tmp_path, monkeypatch
):
    """``body = true``: the cell's masked frames get the dummy swapped for the real value
    toward the credential's host (split across fragments); the server's echo comes back
    scrubbed to the dummy."""
    real = github_token()
    monkeypatch.setenv(GH_ENV, real)
    upstream.ws_received.clear()
    policy = write_policy(tmp_path / "p.toml", upstream.port, extra="body = true\n")
    result = py(WS_ECHO.replace("sys.argv[1]", str(upstream.port)), network(upstream, policy))
    assert result.exit_code == 0, (result.stderr or b"").decode()[-3000:]
    out = json.loads(result.stdout.decode().splitlines()[-1])
    dummy, data = out["dummy"], base64.b64decode(out["raw"])
    assert upstream.ws_received == [json.dumps({"type": "auth", "token": real}).encode()]
    no_spelling_of(real, data, "ws-echo")
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    assert frames(rest)[0] == (0x81, json.dumps({"type": "auth", "token": dummy}).encode())
    nothing_leaked(result, real)


# -- cleartext http ------------------------------------------------------------------------------

PLAIN_CLIENT = r"""
import json, os, sys, urllib.request, urllib.error
base = sys.argv[1]
token = os.environ["GITHUB_TOKEN"]
def get(path, headers={}, data=None):
    req = urllib.request.Request(base + path, headers=headers, data=data)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
out = [
    get("/echo-auth", {"Authorization": "Bearer " + token}),
    get("/q?access_token=" + token),
    get("/form", data=("x=1&token=" + token + "&pad=yyy").encode()),
    get("/no-credential"),
]
print(json.dumps(out))
"""


@pytest.mark.parametrize("allow", [False, True])
def test_cleartext_http_gets_no_real_value_unless_allowed(
    offline_set, tls, plain, tmp_path, monkeypatch, allow
):
    """Header, ``?access_token=`` target and (``body = true``) form body: over http:// each
    is refused with a 403 naming the credential, and the upstream never sees the real value;
    ``allow_plaintext = true`` lets all three through, swapped."""
    real = github_token()
    monkeypatch.setenv(GH_ENV, real)
    plain.seen.clear()
    extra = "body = true\n" + ("allow_plaintext = true\n" if allow else "")
    policy = write_policy(tmp_path / "p.toml", plain.port, extra=extra)
    audit = tmp_path / "audit.jsonl"
    net = network(tls, policy, audit=str(audit))  # tls only lends its CA file
    result = py(PLAIN_CLIENT.replace("sys.argv[1]", repr(plain.url(""))), net)
    assert result.exit_code == 0, result
    out = json.loads(result.stdout.decode().splitlines()[-1])
    seen = [(s.path, auth(s) or "", s.body) for s in plain.seen]
    if allow:
        assert [status for status, _ in out] == [200, 200, 200, 200], out
        assert ("/echo-auth", f"Bearer {real}", b"") in seen
        assert any(real in path for path, _, _ in seen)
        assert any(real.encode() in body for _, _, body in seen)
    else:
        assert [status for status, _ in out] == [403, 403, 403, 200], out
        for _, body in out[:3]:
            assert "credential 'github'" in body and "allow_plaintext" in body, body
        for path, header, body in seen:
            assert real not in path and real not in header and real.encode() not in body
        paths = [path for path, _, _ in seen]
        assert "/echo-auth" not in paths and not any(p.startswith("/q") for p in paths), paths
        records = [json.loads(line) for line in audit.read_text().splitlines()]
        refused = [r for r in records if r["status"] == 403]
        assert len(refused) == 3, records
        assert all(r["action"] == "deny" and "credential 'github'" in r["reason"] for r in refused)
    nothing_leaked(result, real)
    assert real not in audit.read_text()


def _unpacked(body: bytes) -> bytes:
    """What a lenient reader gets out of (a prefix of) a compressed file: every stream decoded
    as far as the bytes go, archives in it too."""
    import bz2
    import lzma
    import zlib

    out = b""
    for make in (lambda: zlib.decompressobj(47), bz2.BZ2Decompressor, lzma.LZMADecompressor):
        with contextlib.suppress(Exception):
            out += make().decompress(body)
    at = body.find(b"PK\x03\x04")  # zip entries: the raw deflate after each local header
    while at >= 0:
        start = at + 30 + int.from_bytes(body[at + 26 : at + 28], "little")
        start += int.from_bytes(body[at + 28 : at + 30], "little")
        out += body[at:start]
        try:
            out += zlib.decompressobj(-15).decompress(body[start:])
        except Exception:
            out += body[start:]
        at = body.find(b"PK\x03\x04", at + 4)
    return out + (_unpacked(out) if out and out != body else b"")


def test_compressed_files_holding_the_real_value_are_cut_before_any_part_of_it(run):
    """A .gz, .tar.gz, .zip… served by any host is looked into as it passes: one holding the real
    value is cut before the cell gets a byte that decodes to any part of it; a clean one passes
    unchanged."""
    real, dummy, received, _ = run
    for kind in leaky.PACKED:
        status, _, body = split_http(received[f"packed/{kind}"])
        whole = leaky.packed(kind, real.encode())
        # cut short, or (a stored zip entry: the value is there as it is) scrubbed in place
        cut = len(body) < len(whole) or dummy.encode() in body
        assert status == 200 and cut, (kind, len(body), len(whole))
        seen = _unpacked(body) + body
        no_spelling_of(real, seen, f"packed/{kind}")
        assert real[:12].encode() not in seen, kind  # not even a part of it
        status, _, clean = split_http(received[f"packed/clean-{kind}"])
        assert status == 200 and clean == leaky.packed(f"clean-{kind}", b""), kind


def test_headers_an_upstream_names_in_connection_cannot_hide_an_encoding(run):
    real, _, received, _ = run
    status, _, body = split_http(received["hop-ce"])
    assert status == 502 and body.startswith(b"nixcell proxy: "), body
    no_spelling_of(real, _unpacked(body) + body, "hop-ce")


def test_a_dummy_in_a_path_is_never_swapped(run, upstream):
    """The cell cannot have the credential's host keep the real value under a name it chose."""
    _real, dummy, received, _ = run
    # the proxy forwards the canonical path (net/urlpath.py: runs of "/" collapsed): an AWS-style
    # dummy may begin with "/"
    forwarded = normalize_path(f"/p/{dummy}")
    assert [s.path for s in upstream.seen if s.path.startswith("/p/")] == [forwarded]
    status, _, body = split_http(received["path-stored"])
    stored = forwarded.removeprefix("/p/").encode()  # the dummy, stored and served
    assert status == 200 and stored in _unpacked(body)


def test_a_denied_head_request_gets_its_refusal(run):
    _, _, received, _ = run
    status, _headers, body = split_http(received["head-denied"])
    assert status == 403 and body == b"", (status, body)
