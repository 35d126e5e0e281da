# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""Cells with a network: real proxy, real cells, real HTTPS against loopback test upstreams.

Every upstream listens on 127.0.0.1 in this process (tests/integration/upstream.py). Cells reach
it only through the proxy, with the names pinned by ``resolve`` and loopback allowed by an
explicit cidr rule. Nothing here talks to any other address.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from tests.conftest import cli
from tests.integration import upstream as up

import nixcell
from nixcell import CellSpec


@pytest.fixture(autouse=True)
def _fresh(tls, plain):
    tls.seen.clear()
    plain.seen.clear()


def network(tls, *allow: str, **extra) -> dict:
    return up.loopback_network(tls, allow_hosts=list(allow), **extra)


def py(code: str, net: dict | None, *, packages=("python3",), **fields) -> nixcell.RunResult:
    spec = CellSpec(
        command=["python3", "-c", textwrap.dedent(code)],
        packages=list(packages),
        network=net,
        **fields,
    )
    return nixcell.run(spec, capture_output=True)


FETCH = """
import sys, urllib.request, urllib.error
def fetch(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except Exception as e:  # a CONNECT refused by the proxy: urllib reports its status
        if "Tunnel connection failed: 403" in str(e):
            return 403, str(e)
        return "error", repr(e)
"""


def test_allowed_passes_denied_host_gets_explained_403(offline_set, tls, plain):
    code = (
        FETCH
        + f"""
print(fetch("{tls.url("/hello")}"))
print(fetch("{tls.url("/x", host="other.test")}"))
print(fetch("{plain.url("/y", host="other.test")}"))
"""
    )
    result = py(code, network(tls, f"up.test:{tls.port}"))
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "(200, 'ok GET /hello 0\\n')", result
    assert lines[1].startswith("(403, ")  # refused at CONNECT, before any TLS
    assert lines[2].startswith("(403, ") and "other.test" in lines[2] and "no rule" in lines[2]
    assert f"--allow-host other.test:{plain.port}" in lines[2]  # plain HTTP: the body explains
    assert tls.paths() == ["/hello"]
    assert result.network_summary and "2 requests denied" in result.network_summary


def test_method_and_path_rules(offline_set, tls, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(
        f"""
[[rules]]
action = "allow"
methods = ["GET"]
port = {tls.port}
[rules.pattern]
host = "up.test"
path = "/repos/**"
"""
    )
    code = (
        FETCH
        + f"""
for url, m in [("/repos/a/b", "GET"), ("/repos/a", "POST"), ("/admin", "GET"),
               ("/repos/%2e%2e/admin", "GET"), ("/repos/..%2fadmin", "GET"), ("//admin", "GET")]:
    print(fetch("{tls.url()}"[:-1] + url, m)[0])
"""
    )
    result = py(code, network(tls, policy_files=[str(policy)]))
    assert result.stdout.decode().split() == ["200", "403", "403", "403", "403", "403"], result
    assert tls.paths() == ["/repos/a/b"]


RAW = """
import socket, ssl, sys
def raw_tunnel(host, port, sni, payload, connect_host=None):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT {connect_host or host}:{port} HTTP/1.1\\r\\nHost: {host}:{port}\\r\\n\\r\\n".encode())
    head = s.recv(4096)
    if not head.startswith(b"HTTP/1.1 200"):
        return head.split(b"\\r\\n")[0].decode()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    t = ctx.wrap_socket(s, server_hostname=sni)
    t.sendall(payload)
    out = b""
    while True:
        try:
            chunk = t.recv(65536)
        except Exception:
            break
        if not chunk:
            break
        out += chunk
        if out.count(b"HTTP/1.1 ") >= payload.count(b"HTTP/1.1\\r\\n") and out.endswith(b"\\n"):
            break
    import re
    return " ".join(m.decode() for m in re.findall(rb"HTTP/1.1 (\\d+)", out))
"""


def test_keepalive_and_pipelined_requests_are_each_checked(offline_set, tls, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\naction = "allow"\nport = {tls.port}\n'
        '[rules.pattern]\nhost = "up.test"\npath = "/ok/**"\n'
    )
    p = tls.port
    code = (
        RAW
        + f"""
one = (b"GET /ok/1 HTTP/1.1\\r\\nHost: up.test:{p}\\r\\n\\r\\n"
       b"GET /secret HTTP/1.1\\r\\nHost: up.test:{p}\\r\\n\\r\\n"
       b"GET /ok/2 HTTP/1.1\\r\\nHost: up.test:{p}\\r\\n\\r\\n")
print(raw_tunnel("up.test", {p}, "up.test", one))
"""
    )
    result = py(code, network(tls, policy_files=[str(policy)]))
    assert result.stdout.decode().split() == ["200", "403", "200"], result
    assert tls.paths() == ["/ok/1", "/ok/2"]


def test_plain_http_pipelining_is_checked_per_request(offline_set, tls, plain):
    p = plain.port
    code = f"""
import socket
s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
s.sendall(b"GET http://up.test:{p}/a HTTP/1.1\\r\\nHost: up.test:{p}\\r\\n\\r\\n"
          b"GET http://evil.test:{p}/b HTTP/1.1\\r\\nHost: evil.test:{p}\\r\\n\\r\\n"
          b"GET http://up.test:{p}/c HTTP/1.1\\r\\nHost: up.test:{p}\\r\\nConnection: close\\r\\n\\r\\n")
out = b""
while chunk := s.recv(65536):
    out += chunk
import re
print(" ".join(m.decode() for m in re.findall(rb"HTTP/1.1 (\\d+)", out)))
"""
    result = py(code, network(tls, f"up.test:{p}"))
    assert result.stdout.decode().split() == ["200", "403", "200"], result
    assert plain.paths() == ["/a", "/c"]


@pytest.mark.parametrize(
    "case, payload_host, sni, connect_host",
    [
        ("absolute URI to another host", "other.test", "up.test", None),
        ("Host header is another host", "other.test", "up.test", None),
        ("SNI is another host", "up.test", "other.test", None),
    ],
)
def test_tunnel_cannot_address_another_host(
    offline_set, tls, case, payload_host, sni, connect_host
):
    p = tls.port
    if case.startswith("absolute"):
        req = f"GET https://{payload_host}:{p}/x HTTP/1.1\\r\\nHost: {payload_host}:{p}\\r\\n\\r\\n"
    else:
        req = f"GET /x HTTP/1.1\\r\\nHost: {payload_host}:{p}\\r\\n\\r\\n"
    code = RAW + f'print(raw_tunnel("up.test", {p}, "{sni}", b"{req}"))'
    result = py(code, network(tls, f"up.test:{p}", f"other.test:{p + 1}"))
    # a Host that contradicts the tunnel is ambiguous (400, net/framing.py); the rest: policy
    expected = "400" if case.startswith("Host") else "403"
    assert result.stdout.decode().split() == [expected], (case, result)
    assert tls.seen == []


@pytest.mark.parametrize(
    "target",
    ["127.0.0.2", "[::1]", "UP.TEST", "up.test.", "EVIL.test.", "evil.TEST"],
)
def test_hosts_are_normalised_before_matching(offline_set, tls, target):
    p = tls.port
    net = network(tls, f"up.test:{p}", deny_hosts=["evil.test"])
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"https://{target}:{p}/n"]
    result = nixcell.run(
        CellSpec(command=argv, packages=["curl"], network=net), capture_output=True
    )
    allowed = target.lower().rstrip(".") == "up.test"
    # curl prints 000 when the proxy refuses the CONNECT (before any TLS)
    assert result.stdout == (b"200" if allowed else b"000"), (target, result)
    assert tls.paths() == (["/n"] if allowed else [])
    if not allowed:
        assert result.network_summary and "CONNECT" in result.network_summary


def test_connect_to_a_port_no_rule_allows_is_refused(offline_set, tls):
    code = RAW + 'print(raw_tunnel("up.test", 22, "up.test", b""))'
    result = py(code, network(tls, f"up.test:{tls.port}"))
    assert result.stdout.decode().strip() == "HTTP/1.1 403", result


def test_direct_connections_fail(offline_set, tls):
    """TCP, UDP and DNS from the cell reach nothing on the host; the cell has no route out.

    Only loopback is used: host services the test starts on 127.0.0.1, which the cell's
    127.0.0.1 (its own lo) must not reach. No packet is aimed at any other address.
    """
    import socket

    udp_host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_host.bind(("127.0.0.1", 0))
    udp_host.settimeout(1.0)
    udp_port = udp_host.getsockname()[1]
    code = f"""
import socket
def attempt(fn):
    try:
        fn(); return "sent"
    except OSError as e:
        return type(e).__name__
tcp = lambda: socket.create_connection(("127.0.0.1", {tls.port}), timeout=3)
udp = lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("127.0.0.1", {udp_port}))
dns = lambda: socket.getaddrinfo("up.test", 443)
print(attempt(tcp), attempt(udp), attempt(dns))
print(open("/proc/net/dev").read().count(":"), len(open("/proc/net/route").read().splitlines()) - 1)
"""
    with udp_host:
        result = py(code, network(tls, f"up.test:{tls.port}"))
        try:
            got = udp_host.recvfrom(16)
        except TimeoutError:
            got = None
    tcp, _udp, dns, *rest = result.stdout.decode().split()
    assert tcp == "ConnectionRefusedError", result
    assert got is None  # the datagram stayed on the cell's own lo
    assert dns == "gaierror", result
    assert rest == ["1", "0"]  # only lo, no route
    assert tls.seen == []


def test_no_policy_cell_has_no_proxy_and_only_lo(offline_set):
    code = """
import os, socket
print(sorted(k for k in os.environ if "proxy" in k.lower()))
print(open("/proc/net/dev").read().count(":"))
try:
    socket.create_connection(("127.0.0.1", 3128), timeout=3); print("proxy")
except OSError as e:
    print(type(e).__name__)
"""
    result = py(code, None)
    assert result.stdout.decode().split("\n")[:3] == ["[]", "1", "ConnectionRefusedError"]


def test_real_clients_curl_urllib_node(offline_set, tls):
    p = tls.port
    net = network(tls, f"up.test:{p}")
    curl = nixcell.run(
        CellSpec(command=["curl", "-sS", tls.url("/curl")], packages=["curl"], network=net),
        capture_output=True,
    )
    assert curl.stdout == b"ok GET /curl 0\n", curl
    node = nixcell.run(
        CellSpec(
            command=[
                "node",
                "-e",
                f"fetch('{tls.url('/node')}').then(r=>r.text()).then(console.log)",
            ],
            packages=["nodejs"],
            network=net,
        ),
        capture_output=True,
    )
    assert node.stdout == b"ok GET /node 0\n\n", node
    pyres = py(FETCH + f'print(fetch("{tls.url("/py")}")[1], end="")', net)
    assert pyres.stdout == b"ok GET /py 0\n", pyres
    assert tls.paths() == ["/curl", "/node", "/py"]


WS = """
import base64, os, socket, ssl
def ws(port, path):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT up.test:{port} HTTP/1.1\\r\\nHost: up.test:{port}\\r\\n\\r\\n".encode())
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context()
    t = ctx.wrap_socket(s, server_hostname="up.test")
    key = base64.b64encode(os.urandom(16)).decode()
    t.sendall((f"GET {path} HTTP/1.1\\r\\nHost: up.test:{port}\\r\\nUpgrade: websocket\\r\\n"
               f"Connection: Upgrade\\r\\nSec-WebSocket-Key: {key}\\r\\n"
               "Sec-WebSocket-Version: 13\\r\\n\\r\\n").encode())
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += t.recv(1)
    status = head.split(b" ")[1].decode()
    if status != "101":
        return status
    mask = b"abcd"
    t.sendall(bytes([0x81, 0x85]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hello")))
    frame = t.recv(7)
    return status + " " + frame[2:].decode()
"""


def test_websocket_upgrade_is_checked_then_relayed(offline_set, tls, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\naction = "allow"\nport = {tls.port}\n'
        '[rules.pattern]\nhost = "up.test"\npath = "/ws/**"\n'
    )
    code = (
        WS
        + f"""
print(ws({tls.port}, "/ws/chat"))
print(ws({tls.port}, "/forbidden"))
"""
    )
    result = py(code, network(tls, policy_files=[str(policy)]))
    assert result.stdout.decode().splitlines() == ["101 hello", "403"], result
    assert tls.paths() == ["/ws/chat"]


def test_policy_check_command(offline_set, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[[rules]]\naction = "allow"\nmethods = ["GET"]\n[rules.pattern]\nhost = "api\\\\.github\\\\.com"\n'
    )
    ok = cli("policy", "check", "https://api.github.com/zen", "--policy", str(policy))
    assert ok.returncode == 0 and "allowed" in ok.stdout.decode(), ok
    no = cli("policy", "check", "https://api.github.com/x", "-X", "POST", "--policy", str(policy))
    assert no.returncode == 1 and "denied" in no.stdout.decode()
    evil = cli(
        "policy", "check", "https://evil-api.github.com.attacker.net/", "--policy", str(policy)
    )
    assert evil.returncode == 1


def test_bad_policy_file_is_one_line_error(offline_set, tmp_path):
    policy = tmp_path / "bad.toml"
    policy.write_text('[[rules]]\naction = "alow"\n[rules.pattern]\nhost = "x.com"\n')
    result = cli("run", "-p", "bash", "--policy", str(policy), "--", "true")
    err = result.stderr.decode()
    assert result.returncode == 2 and err.count("\n") == 1 and "bad.toml:2" in err, err
    assert "Traceback" not in err


def test_cli_network_run_prints_denial_summary(offline_set, tls):
    p = tls.port
    pins = ["--resolve=up.test:127.0.0.1", "--resolve=other.test:127.0.0.1"]
    result = cli(
        "run", "-p", "curl", f"--allow-host=up.test:{p}", "--allow-cidr=127.0.0.1/32", *pins,
        f"--upstream-ca={tls.ca_file}", "--",
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} ", tls.url("/a"), tls.url("/b", host="other.test"),
    )  # fmt: skip
    assert result.stdout == b"200 000 ", result  # 000: CONNECT refused before any TLS
    *_, summary, hint = result.stderr.decode().strip().splitlines()
    assert summary == f"nixcell: 1 request denied: CONNECT other.test:{p} (no rule)"
    # curl failed (exit 56): the no-network hint is the last line (test_nonet_hint.py)
    assert hint == (
        f"nixcell: the cell has no network access to other.test:{p}; "
        f"allow with --allow-host other.test:{p}"
    )


def test_audit_file_has_one_json_line_per_decision(offline_set, tls, tmp_path):
    audit = tmp_path / "audit.jsonl"
    code = (
        FETCH
        + f"""
print(fetch("{tls.url("/a")}")[0], fetch("{tls.url("/b", host="other.test")}")[0])
"""
    )
    result = py(code, network(tls, f"up.test:{tls.port}", audit=str(audit)))
    assert result.stdout.decode().split() == ["200", "403"], result
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    fields = {"time", "cell", "method", "scheme", "host", "port", "path", "rule", "action",
              "status", "bytes_up", "bytes_down", "duration_ms"}  # fmt: skip
    assert all(fields <= set(line) for line in lines)
    decisions = [(x["method"], x["host"], x["path"], x["action"]) for x in lines]
    assert ("GET", "up.test", "/a", "allow") in decisions
    assert ("GET", "other.test", "/b", "deny") in decisions or (
        "CONNECT",
        "other.test",
        "",
        "deny",
    ) in decisions


def test_async_api_cells_share_one_proxy_in_parallel(offline_set, tls):
    """run_async: the proxy serves on the caller's loop; several cells at once, no cross-talk."""
    import asyncio

    async def main():
        specs = [
            CellSpec(
                command=[
                    "python3",
                    "-c",
                    textwrap.dedent(FETCH + f'print(fetch("{tls.url(f"/c{i}")}")[1], end="")'),
                ],
                packages=["python3"],
                network=network(tls, f"up.test:{tls.port}"),
            )
            for i in range(5)
        ]
        return await asyncio.gather(*(nixcell.run_async(s, capture_output=True) for s in specs))

    results = asyncio.run(main())
    assert [r.stdout for r in results] == [f"ok GET /c{i} 0\n".encode() for i in range(5)]
    assert sorted(tls.paths()) == [f"/c{i}" for i in range(5)]


def test_missing_upstream_ca_is_refused_even_after_a_cached_run(offline_set, tls, tmp_path):
    """A CA file that vanished after a successful run must not be skipped by the plan cache."""
    import shutil

    ca = tmp_path / "ca.pem"
    shutil.copy(tls.ca_file, ca)
    argv = ["run", "-p", "bash", "--allow-host", "x.test", f"--upstream-ca={ca}", "--", "true"]
    assert cli(*argv).returncode == 0
    assert cli(*argv).returncode == 0  # now from the plan cache
    ca.unlink()
    result = cli(*argv)
    err = result.stderr.decode().strip().splitlines()
    assert result.returncode != 0 and "Traceback" not in result.stderr.decode()
    assert err[-1] == f"nixcell: cannot load upstream CA file {ca}: No such file or directory"
