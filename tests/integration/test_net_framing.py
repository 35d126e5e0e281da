# ruff: noqa: E501 - the cell runs an embedded script; keeping its lines whole reads better
"""Request smuggling through the real proxy (issue 8 §2): ambiguous messages are refused with a
400 before any policy, nothing of them reaches an upstream, and what is forwarded carries exactly
one framing header. The upstream records the exact bytes it got (rawupstream.py), so a smuggled
second request would show up there.

Most cases run against the proxy served in this process on loopback (proxyrig.py: the same
``Proxy.serve`` a cell gets, minus the namespace), once as plain-proxy requests and once inside a
CONNECT tunnel; one test sends the attacks from inside a real cell.
"""

from __future__ import annotations

import re
import ssl
import textwrap

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration import upstream as up
from tests.integration.proxyrig import audit_lines, exchange, proxy
from tests.integration.rawupstream import RawUpstream

import nixcell
from nixcell import CellSpec


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("framing-ca")
    _, ca_file, chain = up.make_ca(directory)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain))
    return ca_file, ctx


@pytest.fixture(scope="module")
def uppers(certs):
    """Raw upstreams: plain and TLS answering 200, and ones with ambiguous responses."""
    _, ctx = certs
    made = {
        "plain": RawUpstream().start(),
        "tls": RawUpstream(context=ctx).start(),
        "cl-te": RawUpstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ).start(),
        "two-cl": RawUpstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nok\n"
        ).start(),
        "fold": RawUpstream(b"HTTP/1.1 200 OK\r\nX: a\r\n Content-Length: 3\r\n\r\nok\n").start(),
        "bare-lf": RawUpstream(b"HTTP/1.1 200 OK\nContent-Length: 3\n\nok\n").start(),
    }
    yield made
    for raw in made.values():
        raw.stop()


@pytest.fixture
def rig(uppers, certs, tmp_path):
    ca_file, _ = certs
    for raw in uppers.values():
        raw.clear()
    hosts = [f"up.test:{raw.port}" for raw in uppers.values()]
    network = {
        "allow_cidrs": ["127.0.0.1/32"],
        "resolve": up.PINS,
        "upstream_ca": [str(ca_file)],
        "allow_hosts": hosts,
    }
    audit = tmp_path / "audit.jsonl"
    with proxy(network, audit) as port:
        yield port, audit


def send(port: int, raw: RawUpstream, template: bytes, tunnel: bool) -> list[bytes]:
    """Send ``template`` ({T}: request target, {H}: Host) plainly or through a tunnel."""
    authority = f"up.test:{raw.port}".encode()
    target = b"/x" if tunnel else b"http://" + authority + b"/x"
    data = template.replace(b"{T}", target).replace(b"{H}", authority)
    out = exchange(port, data, tunnel=authority.decode() if tunnel else None, sni="up.test")
    return re.findall(rb"HTTP/1\.1 (\d{3})", out)


H = b"Host: {H}\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: {H}\r\n\r\n"
ATTACKS = {
    "CL.TE": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "TE.CL": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n"
    + SMUGGLED,
    "TE case": b"POST {T} HTTP/1.1\r\n" + H + b"Transfer-Encoding: Chunked\r\n\r\n0\r\n\r\n",
    "TE tab": b"POST {T} HTTP/1.1\r\n" + H + b"Transfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n",
    "TE list": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
    "TE gzip": b"POST {T} HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "TE twice": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "TE on 1.0": b"POST {T} HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "CL twice": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Content-Length: 0\r\nContent-Length: 40\r\n\r\n"
    + SMUGGLED,
    "CL list": b"POST {T} HTTP/1.1\r\n" + H + b"Content-Length: 1, 1\r\n\r\nx",
    "CL sign": b"POST {T} HTTP/1.1\r\n" + H + b"Content-Length: +1\r\n\r\nx",
    "CL wraps": b"POST {T} HTTP/1.1\r\n" + H + b"Content-Length: 4294967297\r\n\r\nx",
    "CL.0 on GET": b"GET {T} HTTP/1.1\r\n" + H + b"Content-Length: 40\r\n\r\n" + SMUGGLED,
    "obs-fold": b"GET {T} HTTP/1.1\r\n" + H + b"X: a\r\n Transfer-Encoding: chunked\r\n\r\n",
    "bare LF": b"GET {T} HTTP/1.1\n" + H + b"\n",
    "bare CR": b"GET {T} HTTP/1.1\r\n" + H + b"X: a\rTransfer-Encoding: chunked\r\n\r\n",
    "NUL": b"GET {T} HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n",
    "control": b"GET {T} HTTP/1.1\r\n" + H + b"X: a\x01b\r\n\r\n",
    "space before colon": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "h2c": b"GET {T} HTTP/1.1\r\n"
    + H
    + b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
    "Expect": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Expect: 100-continue, x\r\nContent-Length: 1\r\n\r\nx",
    "two Hosts": b"GET {T} HTTP/1.1\r\n" + H + b"Host: evil.test\r\n\r\n",
    "Host elsewhere": b"GET {T} HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    "chunk 0x": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk ext": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3;\x01\r\nabc\r\n0\r\n\r\n",
    "chunk no CRLF": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n",
    "chunk overflow": b"POST {T} HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n10000000000000003\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "tunnel"])
@pytest.mark.parametrize("name", list(ATTACKS))
def test_ambiguous_requests_are_refused_and_reach_no_upstream(rig, uppers, name, tunnel):
    port, audit = rig
    raw = uppers["tls" if tunnel else "plain"]
    statuses = send(port, raw, ATTACKS[name], tunnel)
    assert statuses in ([b"400"], [b"417"]), (name, statuses)
    assert raw.requests == [], name  # not even the first, checked part
    assert [r["status"] for r in audit_lines(audit) if r["action"] == "deny"] == [int(statuses[0])]
    assert not any(r["action"] == "allow" for r in audit_lines(audit))


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "tunnel"])
def test_pipelined_requests_are_each_checked(rig, uppers, tunnel):
    port, _ = rig
    raw = uppers["tls" if tunnel else "plain"]
    first = b"GET {T} HTTP/1.1\r\n" + H + b"\r\n"
    statuses = send(port, raw, first + ATTACKS["CL.TE"] + first, tunnel)
    assert statuses == [b"200", b"400"]  # the refusal ends the connection: no third answer
    assert [r.line.split(b" ")[1] for r in raw.requests] == [b"/x"]
    assert raw.leftover == []


BODY = b"GET /smuggled HTTP/1.1\r\nHost: up.test\r\n\r\n"


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "tunnel"])
@pytest.mark.parametrize(
    ("framing", "body", "expected", "decoded"),
    [
        (b"Content-Length: %d\r\n" % len(BODY), BODY, b"content-length", BODY),
        (b"content-length:%d\r\n" % len(BODY), BODY, b"content-length", BODY),
        (
            b"Transfer-Encoding: chunked\r\n",
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY),
            b"transfer-encoding",
            BODY,
        ),
        (
            b"Transfer-Encoding: chunked\r\n",
            b"5;a=b\r\nGET /\r\n0\r\nX-T: 1\r\n\r\n",
            b"transfer-encoding",
            b"GET /",
        ),
        (b"Content-Length: 0\r\n", b"", b"content-length", b""),
    ],
)
def test_forwarded_requests_carry_exactly_one_framing_header(
    rig, uppers, tunnel, framing, body, expected, decoded
):
    port, _ = rig
    raw = uppers["tls" if tunnel else "plain"]
    request = b"POST {T} HTTP/1.1\r\n" + H + framing + b"Connection: close\r\n\r\n" + body
    assert send(port, raw, request, tunnel) == [b"200"]
    [received] = raw.requests  # the body that looks like a request stayed a body
    names = received.header_names()
    assert [n for n in names if n in (b"content-length", b"transfer-encoding")] == [expected]
    assert received.body == decoded
    assert raw.leftover == []


@pytest.mark.parametrize("tunnel", [False, True], ids=["plain", "tunnel"])
@pytest.mark.parametrize("name", ["cl-te", "two-cl", "fold", "bare-lf"])
def test_ambiguous_upstream_responses_become_502(rig, uppers, certs, name, tunnel):
    port, audit = rig
    raw = uppers[name]
    if tunnel:
        raw.context = certs[1]
    try:
        statuses = send(port, raw, b"GET {T} HTTP/1.1\r\n" + H + b"\r\n", tunnel)
    finally:
        raw.context = None
    assert statuses == [b"502"], name
    assert [r["status"] for r in audit_lines(audit)] == [502]


CONNECTS = {
    "Host elsewhere": b"CONNECT {A} HTTP/1.1\r\nHost: evil.test:443\r\n\r\n",
    "Host other port": b"CONNECT {A} HTTP/1.1\r\nHost: up.test:1\r\n\r\n",
    "two Hosts": b"CONNECT {A} HTTP/1.1\r\nHost: {A}\r\nHost: {A}\r\n\r\n",
    "userinfo": b"CONNECT evil.test@{A} HTTP/1.1\r\nHost: {A}\r\n\r\n",
    "body": b"CONNECT {A} HTTP/1.1\r\nHost: {A}\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"CONNECT {A} HTTP/1.1\r\nHost: {A}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare LF": b"CONNECT {A} HTTP/1.1\nHost: {A}\n\n",
    "no port": b"CONNECT up.test HTTP/1.1\r\nHost: up.test\r\n\r\n",
    "port 0": b"CONNECT up.test:0 HTTP/1.1\r\nHost: up.test:0\r\n\r\n",
    "HTTP/2": b"CONNECT {A} HTTP/2.0\r\nHost: {A}\r\n\r\n",
}


@pytest.mark.parametrize("name", list(CONNECTS))
def test_connect_target_and_host_must_agree(rig, uppers, name):
    port, audit = rig
    raw = uppers["tls"]
    data = CONNECTS[name].replace(b"{A}", f"up.test:{raw.port}".encode())
    out = exchange(port, data)
    assert out.startswith(b"HTTP/1.1 400 "), (name, out[:80])
    assert raw.connections == 0
    assert [r["status"] for r in audit_lines(audit)] == [400]


@pytest.mark.parametrize(
    ("host", "sni", "status"),
    [
        (b"up.test:{P}", "up.test", b"200"),
        (b"UP.test.:{P}", "up.test", b"200"),  # the same host, normalised
        (b"up.test:{Q}", "up.test", b"400"),
        (b"up.test", "up.test", b"400"),  # no port: 443, not the tunnel's
        (b"evil.test:{P}", "up.test", b"400"),
        (b"evil.test@up.test:{P}", "up.test", b"400"),
        (b"up.test:{P}, evil.test", "up.test", b"400"),
        (b"up.test:{P}", "evil.test", b"403"),  # SNI of another host: the policy's refusal
    ],
)
def test_requests_in_a_tunnel_name_the_tunnel_host(rig, uppers, host, sni, status):
    port, _ = rig
    raw = uppers["tls"]
    host = host.replace(b"{P}", b"%d" % raw.port).replace(b"{Q}", b"%d" % (raw.port + 1))
    data = b"GET /x HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
    out = exchange(port, data, tunnel=f"up.test:{raw.port}", sni=sni)
    assert re.findall(rb"HTTP/1\.1 (\d{3})", out) == [status], out[:200]
    assert len(raw.requests) == (1 if status == b"200" else 0)


CELL_ATTACK = """
import re, socket, sys
port = int(sys.argv[1])
def send(data):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(data)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return b" ".join(re.findall(rb"HTTP/1.1 (\\d{3})", out)).decode()
h = f"up.test:{port}".encode()
t = b"http://" + h
smuggled = b"GET /smuggled HTTP/1.1\\r\\nHost: " + h + b"\\r\\n\\r\\n"
print(send(b"POST " + t + b"/a HTTP/1.1\\r\\nHost: " + h + b"\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n" + smuggled))
print(send(b"POST " + t + b"/b HTTP/1.1\\r\\nHost: " + h + b"\\r\\nTransfer-Encoding:\\tchunked\\r\\n\\r\\n0\\r\\n\\r\\n" + smuggled))
print(send(b"GET " + t + b"/c HTTP/1.1\\r\\nHost: " + h + b"\\r\\n\\r\\nGET " + t + b"/d HTTP/1.1\\nHost: " + h + b"\\n\\n" + smuggled))
print(send(b"POST " + t + b"/e HTTP/1.1\\r\\nHost: " + h + b"\\r\\nTransfer-Encoding: chunked\\r\\nConnection: close\\r\\n\\r\\n%x\\r\\n%s\\r\\n0\\r\\n\\r\\n" % (len(smuggled), smuggled)))
"""


def test_smuggling_from_a_real_cell(offline_set, uppers, certs):
    """The attacks from inside a cell, through its own proxy, to a recording upstream."""
    raw = uppers["plain"]
    raw.clear()
    network = {
        "allow_cidrs": ["127.0.0.1/32"],
        "resolve": up.PINS,
        "upstream_ca": [str(certs[0])],
        "allow_hosts": [f"up.test:{raw.port}"],
    }
    spec = CellSpec(
        command=["python3", "-c", textwrap.dedent(CELL_ATTACK), str(raw.port)],
        packages=["python3"],
        network=network,
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.stdout.decode().split("\n")[:4] == ["400", "400", "200 400", "200"], result
    assert [r.line.split(b" ")[1] for r in raw.requests] == [b"/c", b"/e"]
    [_, posted] = raw.requests
    assert posted.body == b"GET /smuggled HTTP/1.1\r\nHost: up.test:%d\r\n\r\n" % raw.port
    assert raw.leftover == []


# -- property: the upstream sees only requests the policy checked --------------------------------
PIECES = st.sampled_from(
    [b"Content-Length: 0", b"Content-Length: 5", b"content-length:44", b"Content-Length: 5, 5",
     b"Content-Length: +5", b"Transfer-Encoding: chunked", b"Transfer-Encoding: Chunked",
     b"Transfer-Encoding:\tchunked", b"Transfer-Encoding: chunked, chunked",
     b"Transfer-Encoding : chunked", b" Transfer-Encoding: chunked", b"X: a\x00b", b"X: a\x01b",
     b"Expect: 100-continue", b"Connection: close", b"Connection: content-length",
     b"Host: evil.test", b"Upgrade: h2c", b"X-Pad: y"]
)  # fmt: skip
ENDS = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])
BODIES = st.sampled_from(
    [b"", b"hello", b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n",
     b"5 \r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX"]
)  # fmt: skip


@st.composite
def attacks(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"POST", b"GET", b"PUT"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    lines = [method + b" {T} HTTP/" + version, b"Host: {H}", *draw(st.lists(PIECES, max_size=3))]
    head = b"".join(line + draw(ENDS) for line in lines) + draw(ENDS)
    return head + draw(BODIES) + SMUGGLED


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=attacks(), tunnel=st.booleans())
def test_the_upstream_sees_only_requests_the_policy_checked(uppers, policy_rig, data, tunnel):
    """Any mix of framing spellings, then a request for a path the policy denies: whatever the
    proxy did, every request that reached the upstream is one it allowed (audited), with at
    most one framing header, and the denied path never arrives."""
    port, audit = policy_rig
    raw = uppers["tls" if tunnel else "plain"]
    raw.clear()
    before = len([r for r in audit_lines(audit) if r["action"] == "allow"])
    send(port, raw, data, tunnel)
    allowed = [r["path"] for r in audit_lines(audit) if r["action"] == "allow"][before:]
    seen = [r.line.split(b" ")[1].decode() for r in raw.requests]
    assert "/smuggled" not in seen
    assert seen == [path for path in allowed if path == "/x"] == allowed[: len(seen)]
    for received in raw.requests:
        names = received.header_names()
        assert names.count(b"content-length") + names.count(b"transfer-encoding") <= 1
    assert raw.leftover == []


@pytest.fixture(scope="module")
def policy_rig(uppers, certs, tmp_path_factory):
    """The proxy with a policy that allows only /x on the raw upstreams (never /smuggled)."""
    directory = tmp_path_factory.mktemp("framing-policy")
    rules = "".join(
        f'[[rules]]\naction = "allow"\nport = {raw.port}\n'
        f'[rules.pattern]\nhost = "up.test"\npath = "/x"\n'
        for raw in uppers.values()
    )
    (directory / "p.toml").write_text(rules)
    network = {
        "allow_cidrs": ["127.0.0.1/32"],
        "resolve": up.PINS,
        "upstream_ca": [str(certs[0])],
        "policy_files": [str(directory / "p.toml")],
    }
    with proxy(network, directory / "audit.jsonl") as port:
        yield port, directory / "audit.jsonl"
