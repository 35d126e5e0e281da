# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The proxy's relay: long bodies, keep-alive after them, and upstreams that send too much.

Bodies of 1 MiB and more skip h11's receive buffer (net/forward.py ``_direct_body``); these
tests check that what arrives is exactly what the upstream sent, that the client connection
carries on (the upstream connection is replaced), and that bytes an upstream sends past its
response never become the answer to the cell's next request. Loopback upstreams only.
"""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
from tests.integration import upstream as up

import nixcell
from nixcell import CellSpec


@pytest.fixture(autouse=True)
def _fresh(tls, plain):
    tls.seen.clear()
    plain.seen.clear()


# One keep-alive connection through the proxy: CONNECT tunnel (https) or absolute URIs (http).
CONNECTION = """
import hashlib, http.client, json, sys
cfg = json.loads(sys.argv[1])
if cfg["tls"]:
    c = http.client.HTTPSConnection("127.0.0.1", 3128, timeout=60)
    c.set_tunnel("up.test", cfg["port"])
    base = ""
else:
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=60)
    base = f"http://up.test:{cfg['port']}"
"""

CLIENT = (
    CONNECTION
    + """
out = []
for path in cfg["paths"]:
    c.request("GET", base + path)
    r = c.getresponse()
    body = r.read()
    out.append([r.status, len(body), hashlib.sha256(body).hexdigest()[:16], body[:40].decode(errors="replace")])
print(json.dumps(out))
"""
)


def run_client(server: up.Upstream, tls: up.Upstream, script: str = CLIENT, **cfg: object) -> list:
    """Run ``script`` in a cell against ``server`` (one proxied connection); its JSON output."""
    net = up.loopback_network(tls, allow_hosts=[f"up.test:{server.port}"])
    cfg = {"tls": server.tls, "port": server.port, **cfg}
    spec = CellSpec(
        command=["python3", "-c", textwrap.dedent(script), json.dumps(cfg)],
        packages=["python3"],
        network=net,
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    return json.loads(result.stdout.decode().strip().splitlines()[-1])


def digest(size: int) -> str:
    return hashlib.sha256(b"x" * size).hexdigest()[:16]


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_long_bodies_arrive_whole_and_the_connection_carries_on(offline_set, tls, plain, scheme):
    server = tls if scheme == "https" else plain
    big = 5 * 1024 * 1024 + 7  # past the 1 MiB direct-relay threshold, not a buffer multiple
    paths = ["/big/1000", f"/big/{big}", "/after", f"/big/{big}", f"/big/{big}", "/end"]
    got = run_client(server, tls, paths=paths)
    assert [g[:3] for g in got] == [
        [200, 1000, digest(1000)],
        [200, big, digest(big)],
        [200, 16, hashlib.sha256(b"ok GET /after 0\n").hexdigest()[:16]],
        [200, big, digest(big)],
        [200, big, digest(big)],
        [200, 14, hashlib.sha256(b"ok GET /end 0\n").hexdigest()[:16]],
    ], got
    assert server.paths() == paths


@pytest.mark.parametrize("size", [5, 3 * 1024 * 1024])
def test_bytes_past_a_response_never_answer_the_next_request(offline_set, tls, size):
    """The upstream appends a whole extra response after its body. The cell gets exactly the
    body, and its next request gets the upstream's real answer (on a fresh upstream
    connection), not the appended one — for short bodies (h11) and long ones (direct)."""
    got = run_client(tls, tls, paths=[f"/overrun/{size}", "/after", f"/overrun/{size}", "/end"])
    assert [g[1:3] for g in got] == [
        [size, digest(size)],
        [16, hashlib.sha256(b"ok GET /after 0\n").hexdigest()[:16]],
        [size, digest(size)],
        [14, hashlib.sha256(b"ok GET /end 0\n").hexdigest()[:16]],
    ], got
    assert "smuggled" not in json.dumps(got)
    assert tls.paths() == [f"/overrun/{size}", "/after", f"/overrun/{size}", "/end"]


UPLOAD = (
    CONNECTION
    + """
out = []
for size in cfg["sizes"]:
    c.request("POST", base + f"/up/{size}", body=bytes(range(256)) * (size // 256))
    r = c.getresponse()
    out.append([r.status, r.read().decode()])
print(json.dumps(out))
"""
)


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_long_uploads_arrive_whole(offline_set, tls, plain, scheme):
    server = tls if scheme == "https" else plain
    sizes = [6 * 1024 * 1024, 256, 3 * 1024 * 1024]
    got = run_client(server, tls, UPLOAD, sizes=sizes)
    assert got == [[200, f"ok POST /up/{n} {n}\n"] for n in sizes], got
    pattern = bytes(range(256))
    assert [s.body == pattern * (len(s.body) // 256) for s in server.seen] == [True] * 3
    assert [len(s.body) for s in server.seen] == sizes
