"""Every spelling of a real credential is scrubbed, in any chunking (net/spellings.py, the
scrubbing rewriter, OAuth mapping, redaction, WebSocket frames, cleartext refusal).

Property-based: random secrets (``/+=``-heavy AWS-like ones among them), each spelling written
by an independent encoder (stdlib json/urllib/base64, or per-character mixes), embedded in
random text and cut at random places. The scrubbed output must hold no spelling of the real,
and decode (as a client would) to the dummy's."""

from __future__ import annotations

import base64
import html
import json
import quopri
import string
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from nixcell.net.credentials import CellCredentials, PlaintextRefused, parse_credentials
from nixcell.net.credsource import make_dummy
from nixcell.net.spellings import Spellings
from nixcell.net.websocket import BadFrame, cell_frames, server_frames

ALNUM = string.ascii_letters + string.digits
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def secrets_(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["github", "aws", "mixed", "unicode"]))
    if kind == "github":
        return "ghp_" + draw(st.text(ALNUM, min_size=36, max_size=36))
    if kind == "aws":  # 40 characters of the base64 alphabet, many / + =
        body = draw(st.text(ALNUM + "/+/+/+=", min_size=39, max_size=39))
        return body + draw(st.sampled_from("=/+A"))
    extra = "/+=-_.~:%\\" + ("éß€" if kind == "unicode" else "")
    text = draw(st.text(ALNUM + extra, min_size=8, max_size=48))
    assume(sum(c in ALNUM for c in text) >= 12)
    return text


SPELLING_NAMES = (
    "raw", "lower", "json", "json-u", "json-mix", "pct", "pct-mix", "plus", "x", "hex", "b64",
    "b64url", "b64-mime", "html-hex", "html-dec", "qp", "utf-16-le", "utf-16-be",
)  # fmt: skip


@st.composite
def spelled(draw: st.DrawFn, secret: str):
    """(name, encode(s) -> text, decode(text) -> str holding s) for one random spelling."""
    name = draw(st.sampled_from(SPELLING_NAMES))
    upper = draw(st.booleans())
    h2 = "%%%02X" if upper else "%%%02x"
    if name == "raw":
        return name, lambda s: s, lambda t: t
    if name == "lower":
        assume(secret.isascii())
        return name, lambda s: s.lower(), lambda t: t  # case-folded (header names, hosts)
    u4 = "\\u%04X" if upper else "\\u%04x"
    if name == "json":  # json.dumps escapes non-ASCII as \\uXXXX; PHP also escapes /
        return name, lambda s: json.dumps(s)[1:-1].replace("/", "\\/"), _json
    if name == "json-u":
        assume(all(ord(c) < 0x10000 for c in secret))
        return name, lambda s: "".join(u4 % ord(c) for c in s), _json
    if name == "json-mix":
        assume(all(ord(c) < 0x10000 for c in secret))
        picks = draw(st.lists(st.booleans(), min_size=len(secret), max_size=len(secret)))

        def mixed(s: str) -> str:
            out = []
            for esc, c in zip(picks, s, strict=True):
                out.append(u4 % ord(c) if esc else json.dumps(c)[1:-1])
            return "".join(out)

        return name, mixed, _json
    if name == "pct":
        return name, lambda s: "".join(h2 % b for b in s.encode()), urllib.parse.unquote
    if name == "pct-mix":
        picks = draw(st.lists(st.booleans(), min_size=len(secret), max_size=len(secret)))

        def pmix(s: str) -> str:
            return "".join(
                "".join(h2 % b for b in c.encode())
                if esc or not (c.isascii() and c.isalnum())
                else c
                for esc, c in zip(picks, s, strict=True)
            )

        return name, pmix, urllib.parse.unquote
    if name == "plus":
        return name, lambda s: urllib.parse.quote_plus(s), urllib.parse.unquote_plus
    if name == "x":
        assume(secret.isascii())
        x2 = "\\x%02X" if upper else "\\x%02x"
        return name, lambda s: "".join(x2 % ord(c) for c in s), _unescape
    if name in ("html-hex", "html-dec"):
        assume(secret.isascii())
        picks = draw(st.lists(st.booleans(), min_size=len(secret), max_size=len(secret)))
        form = "&#x%02X;" if name == "html-hex" and upper else "&#x%02x;"

        def entities(s: str) -> str:
            return "".join(
                (form % ord(c) if name == "html-hex" else f"&#{ord(c)};") if p else html.escape(c)
                for p, c in zip(picks, s, strict=True)
            )

        return name, entities, html.unescape
    if name == "qp":
        breaks = draw(st.lists(st.booleans(), min_size=len(secret), max_size=len(secret)))

        def qp(s: str) -> str:
            out = []
            for brk, c in zip(breaks, s, strict=True):
                raw = c.encode()
                safe = c.isascii() and c not in "=\\" and not upper
                out.append(c if safe else "".join(f"={b:02X}" for b in raw))
                out.append("=\r\n" if brk else "")
            return "".join(out)

        return name, qp, lambda t: quopri.decodestring(t.encode()).decode("latin-1")
    if name.startswith("utf-16"):
        assume(secret.isascii())
        return name, lambda s: s.encode(name).decode("latin-1"), lambda t: t.encode(
            "latin-1"
        ).decode(name, "replace")
    if name == "hex":
        return name, lambda s: s.encode().hex().upper() if upper else s.encode().hex(), _unhex
    before = draw(st.binary(max_size=5))
    after = draw(st.binary(max_size=5))
    pad = draw(st.booleans())
    if name == "b64-mime":
        width = draw(st.integers(4, 76))
        sep = draw(st.sampled_from(["\r\n", "\n", " "]))

        def mime(s: str) -> str:
            text = base64.b64encode(before + s.encode() + after).decode()
            return sep.join(text[i : i + width] for i in range(0, len(text), width))

        return name, mime, lambda t: base64.b64decode("".join(t.split())).decode("latin-1")
    enc = base64.urlsafe_b64encode if name == "b64url" else base64.b64encode
    dec = base64.urlsafe_b64decode if name == "b64url" else base64.b64decode

    def b64(s: str) -> str:
        text = enc(before + s.encode() + after).decode()
        return text if pad else text.rstrip("=")

    return name, b64, lambda t: dec(t + "=" * (-len(t) % 4)).decode("latin-1")


def _char_class(c: str) -> tuple[bool, bool, bool]:
    return c.isdigit(), c.islower(), c.isupper()


def _u(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def _json(text: str) -> str:
    return json.loads(f'"{text}"')


def _unescape(text: str) -> str:
    return text.encode("ascii").decode("unicode_escape")


def _unhex(text: str) -> str:
    return bytes.fromhex(text).decode("latin-1")


def holds(decoded: str, value: str) -> bool:
    """``value`` in what a client decoded (byte decoders give latin-1 text of UTF-8)."""
    return value in decoded or value.encode().decode("latin-1") in decoded


def creds_for(real: str) -> tuple[CellCredentials, str]:
    spec = parse_credentials(
        [{"name": "tok", "source": "env:X", "hosts": ["api.test"], "body": True}], "t.toml"
    )[0]
    cc = CellCredentials([(spec, real)])
    return cc, cc.cell_env()["TOK_TOKEN"]


# -- the dummy keeps every spelling's length -----------------------------------------------------


@SETTINGS
@given(secrets_())
def test_dummy_keeps_every_character_class(real: str) -> None:
    dummy = make_dummy(real)
    assert len(dummy) == len(real) and dummy != real
    for r, d in zip(real, dummy, strict=True):
        if r.isascii() and r.isalnum():
            assert _char_class(r) == _char_class(d)
        else:
            assert r == d
    encoders = [
        lambda s: s.encode(),
        lambda s: json.dumps(s).encode(),
        lambda s: json.dumps(s, ensure_ascii=False).encode(),
        lambda s: urllib.parse.quote(s, safe="").encode(),
        lambda s: urllib.parse.quote_plus(s).encode(),
        lambda s: s.encode().hex().encode(),
    ] + [lambda s, k=k: base64.b64encode(b"x" * k + s.encode()) for k in range(3)]
    for encode in encoders:
        assert len(encode(real)) == len(encode(dummy))


# -- scrubbing: every spelling, every chunking ---------------------------------------------------


@SETTINGS
@given(st.data())
def test_no_spelling_survives_scrubbing_in_any_chunking(data: st.DataObject) -> None:
    real = data.draw(secrets_())
    cc, dummy = creds_for(real)
    name, encode, decode = data.draw(spelled(real))
    text = encode(real)
    if name == "lower":  # what a client reads is the folded secret
        real, dummy = real.lower(), dummy.lower()
    assume(holds(decode(text), real))
    prefix = data.draw(st.text(string.printable, max_size=20))
    suffix = data.draw(st.text(string.printable, max_size=20))
    body = (prefix + text + suffix).encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=4)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    scrubber = cc.response_scrubber()
    out = b"".join(scrubber.feed(c) for c in chunks) + scrubber.flush()
    assert len(out) == len(body)
    assert out == cc.scrub(body)  # streaming and whole-buffer agree
    region = out[len(prefix.encode()) : len(out) - len(suffix.encode())].decode()
    assert not holds(decode(region), real), name
    if name != "html-dec":  # there a letter may not fit its digits: neither real nor dummy
        assert holds(decode(region), dummy), (name, region)  # the client reads the dummy
    assert text.encode() not in out and real.encode() not in out
    # The same function hides it from logs and tells what may not enter a cell.
    assert cc.exposes(body.decode()) and not cc.exposes(out.decode())
    redacted = cc.redact(body.decode())
    assert text not in redacted and "[REDACTED]" in redacted


@SETTINGS
@given(st.data())
def test_two_secrets_back_to_back_in_base64_are_both_scrubbed(data: st.DataObject) -> None:
    real = data.draw(secrets_())
    cc, dummy = creds_for(real)
    before = data.draw(st.binary(max_size=4))
    between = data.draw(st.binary(max_size=2))
    blob = base64.b64encode(before + real.encode() + between + real.encode())
    decoded = base64.b64decode(cc.scrub(blob))
    assert real.encode() not in decoded
    if len(set(real)) >= 6:  # a periodic secret overlaps itself: where it "starts" is moot
        assert decoded == before + dummy.encode() + between + dummy.encode()


def test_spellings_refuse_a_dummy_of_another_length() -> None:
    with pytest.raises(ValueError):
        Spellings([("abcdefgh", "abcdefg")])


# -- OAuth mapping uses the same spellings -------------------------------------------------------


@pytest.mark.parametrize(
    ("ctype", "write"),
    [
        ("application/json", lambda t: json.dumps({"access_token": t})),
        ("application/json", lambda t: json.dumps({"access_token": t}).replace("/", "\\/")),
        ("application/json", lambda t: json.dumps({"access_token": t}).replace(t[:6], _u(t[:6]))),
        ("application/vnd.api+json", lambda t: json.dumps({"refresh_token": t}).replace(t, _u(t))),
        ("application/x-www-form-urlencoded", lambda t: "access_token=" + urllib.parse.quote(t)),
        ("application/x-www-form-urlencoded", lambda t: "access_token=" + "".join(
            f"%{ord(c):02x}" for c in t)),
    ],
)
def test_oauth_tokens_in_any_spelling_are_mapped(ctype: str, write) -> None:
    cc, _ = creds_for("ghp_" + "Q" * 36)
    issued = "gho_aB3/dE+fG6hI9jK=lM2nO5pQ8rS1tU4vW7xY0z"
    body = write(issued).encode()
    mapped = cc.observe_token_response("api.test", body, ctype)
    assert len(mapped) == len(body)
    if "json" in ctype:
        value = next(iter(json.loads(mapped).values()))
    else:
        value = urllib.parse.parse_qs(mapped.decode())["access_token"][0]
    assert value != issued and len(value) == len(issued) and value.startswith("gho_")
    # The dummy is bound like the credential: swapped back toward its hosts, scrubbed anywhere.
    req = cc.rewrite_request_headers("api.test", [(b"authorization", f"token {value}".encode())])
    assert req == [(b"authorization", f"token {issued}".encode())]
    assert issued.encode() not in cc.scrub(body)


# -- cleartext http: never a real value unless the credential allows it ---------------------------


def _plain_cell(allow: bool) -> tuple[CellCredentials, str, str]:
    table = {"name": "tok", "source": "env:X", "hosts": ["api.test"], "body": True}
    if allow:
        table["allow_plaintext"] = True
    spec = parse_credentials([table], "t.toml")[0]
    real = "ghp_" + "R3alT0kenAbCdEfGhIjKlMnOpQrStUv1234"
    cc = CellCredentials([(spec, real)])
    return cc, real, cc.cell_env()["TOK_TOKEN"]


def _basic(token: str) -> bytes:
    return b"Basic " + base64.b64encode(b"x:" + token.encode())


SIDES = [  # how a dummy reaches a request: (headers, target, body, injected credential)
    ("header", lambda d: ([(b"authorization", f"Bearer {d}".encode())], b"/", b"", None)),
    ("basic", lambda d: ([(b"authorization", _basic(d))], b"/", b"", None)),
    ("other-header", lambda d: ([(b"x-api-key", d.encode())], b"/", b"", None)),
    ("target", lambda d: ([], f"/x?access_token={d}".encode(), b"", None)),
    ("body", lambda d: ([], b"/", f"a=1&t={d}&b=2".encode(), None)),
    ("injected", lambda d: ([], b"/", b"", "tok")),
]


@pytest.mark.parametrize(("side", "make"), SIDES, ids=[s for s, _ in SIDES])
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("allow", [False, True])
def test_cleartext_refused_from_every_side(side, make, scheme, allow) -> None:
    cc, real, dummy = _plain_cell(allow)
    headers, target, body, injected = make(dummy)
    refused = scheme == "http" and not allow

    def attempt() -> bytes:
        h, t, rw = cc.prepare_request(scheme, "api.test", headers, target, injected)
        sent = b"".join(v for _, v in h) + t
        if rw is not None:
            sent += b"".join(rw.feed(body[i : i + 3]) for i in range(0, len(body), 3))
            sent += rw.flush()
        return sent

    if refused:
        with pytest.raises(PlaintextRefused) as err:
            attempt()
        assert "credential 'tok'" in str(err.value) and "allow_plaintext" in str(err.value)
        assert real not in str(err.value) and "\n" not in str(err.value)
    else:
        sent = attempt()
        assert real.encode() in sent or base64.b64encode(b"x:" + real.encode()) in sent
    # Another host never gets the real value, over either scheme.
    h, t, rw = cc.prepare_request(scheme, "other.test", headers, target, injected)
    assert real.encode() not in b"".join(v for _, v in h) + t and rw is None


# -- WebSocket frames ----------------------------------------------------------------------------


def _frame(first: int, payload: bytes, masked: bool = False) -> bytes:
    n = len(payload)
    size = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
    if masked:
        return bytes([first, size[0] | 0x80]) + size[1:] + b"\0\0\0\0" + payload
    return bytes([first]) + size + payload


@SETTINGS
@given(st.data())
def test_websocket_messages_scrubbed_across_fragments_and_reads(data: st.DataObject) -> None:
    real = data.draw(secrets_())
    cc, dummy = creds_for(real)
    _, encode, decode = data.draw(spelled(real))
    assume(real.encode() and len(real.encode()) <= 100)
    message = ("<" + encode(real) + ">").encode()
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(message) - 1), max_size=4))))
    parts = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    wire = b""
    for i, part in enumerate(parts):
        fin = 0x80 if i == len(parts) - 1 else 0
        wire += _frame(fin | (0x1 if i == 0 else 0x0), part)
        if data.draw(st.booleans()):
            wire += _frame(0x89, b"p" + real.encode()[:100])  # a ping between fragments
    wire += _frame(0x88, b"\x03\xe8" + real.encode()[:100])
    reads = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=6))))
    scrubber = server_frames(cc)
    out = b"".join(
        scrubber.feed(wire[a:b]) for a, b in zip([0, *reads], [*reads, len(wire)], strict=True)
    ) + scrubber.end()
    assert len(out) == len(wire)
    got, rest = [], out
    while rest:
        n = rest[1] & 0x7F
        at = 4 if n == 126 else 2
        n = int.from_bytes(rest[2:4], "big") if n == 126 else n
        got.append((rest[0], rest[at : at + n]))
        rest = rest[at + n :]
    text = b"".join(p for f, p in got if f & 0x0F in (0, 1)).decode()
    assert text == cc.scrub(message).decode()  # fragments scrubbed as one message
    assert not holds(decode(text[1:-1]), real)
    assert len([f for f, _ in got if f & 0x0F in (0, 1)]) == len(parts)  # framing kept
    for f, payload in got:
        if f & 0x0F in (8, 9):
            assert real.encode() not in payload and dummy.encode() in payload


@pytest.mark.parametrize(
    "wire",
    [
        _frame(0x81, b"hello", masked=True),  # servers never mask
        _frame(0xC1, b"compressed"),  # RSV1: permessage-deflate, never offered
        _frame(0x83, b"x"),  # reserved opcode
        _frame(0x09, b"ping"),  # a fragmented control frame
        _frame(0x89, b"p" * 126),  # an oversized control frame
        _frame(0x80, b"continuation of nothing"),
        _frame(0x01, b"a") + _frame(0x81, b"b"),  # a new message inside a fragmented one
    ],
)
def test_websocket_frames_nixcell_cannot_read_end_the_connection(wire: bytes) -> None:
    cc, _ = creds_for("ghp_" + "R3alT0kenAbCdEfGhIjKlMnOpQrStUv1234")
    with pytest.raises(BadFrame):
        server_frames(cc).feed(wire)


# -- side doors: logs and audit lines ------------------------------------------------------------


def test_proxy_logs_are_redacted_in_every_spelling(caplog) -> None:
    import logging

    real = "AKIA" + "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    cc, _ = creds_for(real)
    log = logging.getLogger("nixcell.net.proxy")
    spelled = [base64.b64encode(b"u:" + real.encode()).decode(), urllib.parse.quote(real)]
    with caplog.at_level(logging.INFO, logger="nixcell.net.proxy"):
        try:
            raise ValueError(f"illegal header value {spelled[0]!r}")
        except ValueError:
            log.exception("connection failed for %s", spelled[1])
    assert caplog.records and "[REDACTED]" in caplog.text
    for text in [real, *spelled]:
        assert text not in caplog.text
    del cc


def test_audit_lines_are_redacted_in_every_spelling(tmp_path) -> None:
    from nixcell.net.audit import AuditLog, Record

    real = "ghp_" + "R3alT0kenAbCdEfGhIjKlMnOpQrStUv1234"
    cc, _ = creds_for(real)
    audit = AuditLog("c1", str(tmp_path / "a.jsonl"), cc.redact)
    quoted = "".join(f"%{ord(c):02X}" for c in real)
    audit.write(Record("c1", "GET", "https", "x.test", 443, f"/?t={quoted}", "r", "deny",
                       reason=f"upstream said {base64.b64encode(real.encode()).decode()}"))
    audit.close()
    line = (tmp_path / "a.jsonl").read_text()
    assert "[REDACTED]" in line and real not in line and quoted not in line
    assert base64.b64encode(real.encode()).decode()[:-4] not in line


def _client_frame(first: int, payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    size = bytes([n | 0x80]) if n < 126 else bytes([126 | 0x80]) + n.to_bytes(2, "big")
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([first]) + size + key + masked


def _unmask_all(wire: bytes) -> list[tuple[int, bytes]]:
    found = []
    while wire:
        n, at = wire[1] & 0x7F, 2
        if n == 126:
            n, at = int.from_bytes(wire[2:4], "big"), 4
        key, body = wire[at : at + 4], wire[at + 4 : at + 4 + n]
        found.append((wire[0], bytes(b ^ key[i % 4] for i, b in enumerate(body))))
        wire = wire[at + 4 + n :]
    return found


@SETTINGS
@given(st.data())
def test_cell_frames_get_the_real_value_only_toward_its_host(data: st.DataObject) -> None:
    real = data.draw(secrets_())
    cc, dummy = creds_for(real)
    message = f'{{"auth": "{dummy}", "pad": "{"x" * data.draw(st.integers(0, 200))}"}}'.encode()
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(message) - 1), max_size=3))))
    parts = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    wire = b""
    for i, part in enumerate(parts):
        key = data.draw(st.binary(min_size=4, max_size=4))
        fin = 0x80 if i == len(parts) - 1 else 0
        wire += _client_frame(fin | (0x1 if i == 0 else 0x0), part, key)
    frames = cell_frames(cc, "https", "api.test")
    assert frames is not None
    reads = sorted(set(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=5))))
    out = b"".join(
        frames.feed(wire[a:b]) for a, b in zip([0, *reads], [*reads, len(wire)], strict=True)
    ) + frames.end()
    assert len(out) == len(wire)
    got = _unmask_all(out)
    assert len(got) == len(parts)  # framing and mask keys kept
    assert b"".join(p for _, p in got) == message.replace(dummy.encode(), real.encode())
    # Other hosts get the frames as sent; cleartext ws:// gets no real value.
    assert cell_frames(cc, "https", "other.test") is None
    with pytest.raises(PlaintextRefused):
        plain = cell_frames(cc, "http", "api.test")
        assert plain is not None
        plain.feed(wire)
        plain.end()


def test_unmasked_cell_frames_end_the_connection() -> None:
    cc, _ = creds_for("ghp_" + "R3alT0kenAbCdEfGhIjKlMnOpQrStUv1234")
    frames = cell_frames(cc, "https", "api.test")
    assert frames is not None
    with pytest.raises(BadFrame):
        frames.feed(_frame(0x81, b"hello"))
