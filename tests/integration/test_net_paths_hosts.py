# ruff: noqa: RUF001 - embedded cell scripts; full-width spellings are the point
"""Encoding differentials end to end: a real cell, the real proxy, loopback upstreams.

Every bypass spelling of a path or a host is sent by a raw client inside the cell (so no client
library tidies it first), through each entry point of the proxy (origin-form inside a CONNECT
tunnel, absolute-form inside a tunnel, absolute-form plain HTTP); the test checks the status the
cell saw *and* that the upstream never received the request. Only loopback is used.
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


CLIENT = r"""
import json, socket, ssl, sys

def status_of(data):
    parts = data.split(b"\r\n", 1)[0].split()
    return parts[1].decode() if len(parts) > 1 else "none"

def recv_all(s):
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except Exception:
            break
        if not chunk:
            break
        out += chunk
    return out

def request(target, host):
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("utf-8")

def tunnel(connect, target, host=None, sni=None):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode("utf-8"))
    head = s.recv(4096)
    if not head.startswith(b"HTTP/1.1 200"):
        return "connect-" + status_of(head)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    t = ctx.wrap_socket(s, server_hostname=sni)
    t.sendall(request(target, host or connect))
    return status_of(recv_all(t))

def plain(target, host):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(request(target, host))
    return status_of(recv_all(s))

out = []
for kind, args in json.loads(sys.argv[1]):
    out.append(tunnel(*args) if kind == "tunnel" else plain(*args))
print(json.dumps(out))
"""


def run_client(probes: list, net: dict) -> list[str]:
    spec = CellSpec(
        command=["python3", "-c", CLIENT, json.dumps(probes)], packages=["python3"], network=net
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def policy_file(tmp_path, text: str, name: str = "p.toml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- paths -------------------------------------------------------------------------------------

DODGES = [
    "/admin;x/secret",
    "/admin;/secret",
    "/admin%2Fsecret",
    "/admin%2fsecret",
    "/admin%5Csecret",
    "/%2Fadmin",
    "/%2fadmin/x",
    "/admin%00/",
    "/ok/..%3B/admin",
    "/ok/..%3b/admin",
    "/ok/..;/admin",
    "/admin%252Fsecret",
    "/ok/%2e%2e/admin",
    "/ok/.%2E/admin",
    "/ok/%252e%252e/admin",
    "/ok%2F..%2Fadmin",
    "/admin%3F/x",
    "/admin%23/x",
    "/admin%C0%AFx",
    "/ok/..%C0%AF../admin",
    "/admin%EF%BC%8Fx",
    "/ADMIN/secret",
    "/Admin/secret",
    "/%61dmin/secret",
    "//admin/secret",
    "/ok/../admin/secret",
    "/admin./secret",
    "/ok/..%20/admin",
    "/admin\\secret",
    "/ok/..\\admin",
]


def _path_probes(tls, plain, paths: list[str]) -> list:
    tp, pp = tls.port, plain.port
    probes = []
    for path in paths:
        probes.append(["tunnel", [f"up.test:{tp}", path]])
        probes.append(["tunnel", [f"up.test:{tp}", f"https://up.test:{tp}{path}"]])
        probes.append(["plain", [f"http://up.test:{pp}{path}", f"up.test:{pp}"]])
    return probes


def test_path_deny_rule_is_not_dodged_by_any_spelling(offline_set, tls, plain, tmp_path):
    ports = f"[{tls.port}, {plain.port}]"
    policy = policy_file(
        tmp_path,
        f"""
        [[rules]]
        action = "deny"
        port = {ports}
        [rules.pattern]
        host = "up.test"
        path = "/admin/**"

        [[rules]]
        action = "allow"
        port = {ports}
        [rules.pattern]
        host = "up.test"
        """,
    )
    controls = ["/ok/a", "/ok/%61b", "/ok//c", "/ok/./d", "/x/../ok/e"]
    net = up.loopback_network(tls, policy_files=[policy])
    probes = _path_probes(tls, plain, DODGES + controls)
    statuses = run_client(probes, net)
    got = dict(zip([json.dumps(p) for p in probes], statuses, strict=True))
    split = 3 * len(DODGES)
    assert set(statuses[:split]) <= {"403", "400"}, got
    assert statuses[split:] == ["200"] * 3 * len(controls), got
    # the upstream saw the controls only, in canonical form: what was checked is what was sent
    expected = ["/ok/a", "/ok/ab", "/ok/c", "/ok/d", "/ok/e"]
    assert sorted(tls.paths()) == sorted(expected * 2)
    assert sorted(plain.paths()) == sorted(expected)


def test_path_allow_rule_cannot_be_left_by_any_spelling(offline_set, tls, plain, tmp_path):
    ports = f"[{tls.port}, {plain.port}]"
    policy = policy_file(
        tmp_path,
        f"""
        [[rules]]
        action = "allow"
        port = {ports}
        [rules.pattern]
        host = "up.test"
        path = "/ok/**"
        """,
    )
    attacks = [p for p in DODGES if p.startswith("/ok")] + [
        "/ok%2F..%2F..%2Fetc",
        "/ok/..%2Fadmin",
        "/ok/%2E%2E%2Fadmin",
        "/ok;/../admin",
        "/OK/x",
    ]
    net = up.loopback_network(tls, policy_files=[policy])
    statuses = run_client(_path_probes(tls, plain, attacks), net)
    assert set(statuses) <= {"403", "400"}, dict(zip(attacks * 3, statuses, strict=False))
    assert tls.seen == [] and plain.seen == []


def test_allow_encoded_is_the_explicit_opt_in(offline_set, tls, tmp_path):
    policy = policy_file(
        tmp_path,
        f"""
        [[rules]]
        action = "deny"
        port = {tls.port}
        [rules.pattern]
        host = "up.test"
        path = "/api/admin/**"
        allow_encoded = true

        [[rules]]
        action = "allow"
        port = {tls.port}
        [rules.pattern]
        host = "up.test"
        path = "/api/projects/*/mr"
        allow_encoded = true
        """,
    )
    p = tls.port
    paths = [
        "/api/projects/g%2fp/mr",  # allowed: %2F is data inside one segment
        "/api/projects/g/p/mr",  # a real slash is two segments: no match
        "/api/projects/x%2F..%2F..%2Fadmin%2Fx/mr",  # the deny reads every decoding: denied
        "/api/admin%2Fx",
        "/api/projects/g%00/mr",  # control bytes: never, opt-in or not
    ]
    statuses = run_client(
        [["tunnel", [f"up.test:{p}", path]] for path in paths],
        up.loopback_network(tls, policy_files=[policy]),
    )
    assert statuses == ["200", "403", "403", "403", "403"], statuses
    assert tls.paths() == ["/api/projects/g%2Fp/mr"]  # forwarded as matched


# --- hosts -------------------------------------------------------------------------------------

LOOPBACK = [
    "0x7f000001",
    "0x7f.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "127.1",
    "0X7F.1",
    "127.0.0.01",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
]
REFUSED_HOSTS = [
    "127.0.0.1.",
    "0x7f.1.",
    "1.2.3.4.5",
    "[fe80::1%25lo]",
    "%31%32%37.0.0.1",
    "127.0.0.1%00",
    "08.0.0.1",
]


def _host_probes(tls, plain, hosts: list[str]) -> list:
    tp, pp = tls.port, plain.port
    probes = []
    for host in hosts:
        probes.append(["tunnel", [f"{host}:{tp}", "/h", None, None]])
        probes.append(["plain", [f"http://{host}:{pp}/h", f"{host}:{pp}"]])
    return probes


def test_every_spelling_of_an_address_meets_the_same_rules(offline_set, tls, plain):
    probes = _host_probes(tls, plain, ["127.0.0.1", *LOOPBACK])
    ca = [str(tls.ca_file)]
    # 1. a host rule and a cidr rule for 127.0.0.1 allow every spelling of it
    allowed = {
        "allow_hosts": [f"127.0.0.1:{tls.port}", f"127.0.0.1:{plain.port}"],
        "allow_cidrs": ["127.0.0.0/8"],
        "upstream_ca": ca,
    }
    assert run_client(probes, allowed) == ["200"] * len(probes)
    assert len(tls.seen) == len(plain.seen) == len(LOOPBACK) + 1
    assert {s.host for s in tls.seen} == {f"127.0.0.1:{tls.port}"}  # sent in canonical form
    tls.seen.clear()
    plain.seen.clear()
    # 2. a deny of 127.0.0.1 denies every spelling (CONNECT refused, plain request refused)
    denied = {**allowed, "deny_hosts": ["127.0.0.1"]}
    assert set(run_client(probes, denied)) <= {"connect-403", "403"}
    # 3. without a cidr rule the address guard refuses every spelling (loopback)
    guarded = {"allow_hosts": ["*"], "upstream_ca": ca}
    assert set(run_client(probes, guarded)) <= {"502", "403", "connect-403"}
    assert tls.seen == [] and plain.seen == []


def test_ambiguous_hosts_are_refused_end_to_end(offline_set, tls, plain):
    probes = _host_probes(tls, plain, REFUSED_HOSTS)
    net = {
        "allow_hosts": ["*", f"*:{tls.port}", f"*:{plain.port}"],
        "allow_cidrs": ["0.0.0.0/0", "::/0"],
        "upstream_ca": [str(tls.ca_file)],
    }
    statuses = run_client(probes, net)
    assert set(statuses) <= {"connect-400", "connect-403", "400", "403"}, dict(
        zip([p[1][0] for p in probes], statuses, strict=True)
    )
    assert tls.seen == [] and plain.seen == []


def test_full_width_and_idna_names_meet_the_rules_for_their_ascii_form(offline_set, tls):
    """Rules may be written in full-width or ideographic forms and match the ASCII name; on the
    wire such a name never passes (the request line is ASCII): refused, never forwarded."""
    p = tls.port
    ascii_names = ["up.test", "UP.TEST.", "evil.test", "EVIL.test."]
    wire_names = ["ｕｐ．ｔｅｓｔ", "up。test"]
    probes = [["tunnel", [f"{n}:{p}", "/n", f"{n}:{p}", None]] for n in ascii_names + wire_names]
    net = up.loopback_network(
        tls, allow_hosts=[f"ｕｐ。ｔｅｓｔ:{p}", f"*.test:{p}"], deny_hosts=["ＥＶＩＬ．test"]
    )
    statuses = run_client(probes, net)
    assert statuses[:2] == ["200"] * 2, statuses
    assert statuses[2:4] == ["connect-403"] * 2, statuses
    assert set(statuses[4:]) <= {"connect-none", "connect-400", "connect-403"}, statuses
    assert {s.host for s in tls.seen} == {f"up.test:{p}"} and len(tls.seen) == 2


# --- policy semantics --------------------------------------------------------------------------


def test_deny_host_without_port_denies_every_port(offline_set, tls, plain):
    tp, pp = tls.port, plain.port
    probes = [
        ["tunnel", [f"evil.test:{tp}", "/e"]],
        ["plain", [f"http://evil.test:{pp}/e", f"evil.test:{pp}"]],
        ["tunnel", [f"EVIL.test.:{tp}", "/e"]],
        ["tunnel", [f"up.test:{tp}", "/u"]],
        ["plain", [f"http://up.test:{pp}/u", f"up.test:{pp}"]],
    ]
    net = up.loopback_network(
        tls, allow_hosts=[f"*.test:{tp}", f"*.test:{pp}"], deny_hosts=["evil.test"]
    )
    assert run_client(probes, net) == ["connect-403", "403", "connect-403", "200", "200"]
    assert tls.paths() == ["/u"] and plain.paths() == ["/u"]


def test_allow_host_takes_patterns_not_regexes(offline_set, tls):
    for pattern in ("x.*", "a|evil.test", "up.tes?", "(up).test"):
        result = cli("run", "-p", "coreutils", "--allow-host", pattern, "--", "true")
        assert result.returncode == 2, (pattern, result)
        lines = result.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and "re:" in lines[0] and "Traceback" not in lines[0], lines
    p = tls.port
    probes = [
        ["tunnel", [f"up.test:{p}", "/r"]],
        ["tunnel", [f"evil.test:{p}", "/r"]],
        ["tunnel", [f"xup.test:{p}", "/r"]],
    ]
    net = up.loopback_network(tls, allow_hosts=[rf"re:up\.test:{p}"])
    assert run_client(probes, net) == ["200", "connect-403", "connect-403"]


def test_policy_file_cidr_for_loopback_routes_loopback_through_the_proxy(
    offline_set, plain, tmp_path
):
    policy = policy_file(
        tmp_path,
        f"""
        [[rules]]
        action = "allow"
        [rules.pattern]
        cidr = "127.0.0.1/32"

        [[rules]]
        action = "allow"
        port = {plain.port}
        [rules.pattern]
        host = "127.0.0.1"
        """,
    )
    code = f"""
import os, urllib.request
print(repr(os.environ.get("NO_PROXY")))
print(urllib.request.urlopen("http://127.0.0.1:{plain.port}/via-proxy", timeout=20).status)
"""
    spec = CellSpec(
        command=["python3", "-c", code], packages=["python3"], network={"policy_files": [policy]}
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.stdout.decode().split() == ["''", "200"], result
    assert plain.paths() == ["/via-proxy"]


def test_deny_of_an_address_covers_names_resolving_to_it(offline_set, tls, plain):
    tp, pp = tls.port, plain.port
    probes = [
        ["tunnel", [f"up.test:{tp}", "/d"]],
        ["plain", [f"http://up.test:{pp}/d", f"up.test:{pp}"]],
    ]
    for deny in ("127.0.0.1", "0x7f000001", "::ffff:127.0.0.1"):
        net = up.loopback_network(
            tls, allow_hosts=[f"up.test:{tp}", f"up.test:{pp}"], deny_hosts=[deny]
        )
        assert run_client(probes, net) == ["403", "403"], deny
    assert tls.seen == [] and plain.seen == []
