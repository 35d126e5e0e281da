"""Outside review (issue 11, the service boundary), against the real daemon: one caller cannot
take the daemon's connections from everybody else.

The finding: a local user in the socket group opened 20 000 connections (idle ones, and
``/events`` streams); the daemon ran out of file descriptors, nobody else was answered, its log
grew by half a million ``accept()`` tracebacks and its memory by ~900 MB. Now every peer has a
bound (``auth.Admission``) and so does the total, well below ``RLIMIT_NOFILE``."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture
from tests.integration.test_jobs_auth import _config, users  # noqa: F401 - the fixture

from nixcell.jobs import auth

pytestmark = pytest.mark.integration
PER_PEER = 256  # auth.Admission.PER_PEER
FLOOD = PER_PEER * 3

# A hostile client: N connections of one kind, held open until stdin closes. The system
# python (the venv's is not readable by the test users); stdlib only.
HOLDER = r"""
import socket, sys, resource
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
kind, n, where = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first = {
    "idle": b"",
    "partial": b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\n",
    "events": b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n\r\n",
    "attach": b"GET /api/v1/jobs/1/attach HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
}[kind]
held = []
for _ in range(n):
    try:
        if where.startswith("unix:"):
            s = socket.socket(socket.AF_UNIX); s.connect(where[5:])
        else:
            host, port = where.rsplit(":", 1); s = socket.create_connection((host, int(port)))
        if first:
            tcp = not where.startswith("unix:")
            s.sendall(first.replace(b"Host: x", b"Host: " + where.encode()) if tcp else first)
        held.append(s)
    except OSError:
        break
print(len(held), flush=True)
sys.stdin.read()
"""


def _hold(kind: str, n: int, where: str, user: str | None) -> subprocess.Popen[str]:
    argv = ["/usr/bin/python3", "-c", HOLDER, kind, str(n), where]
    if user is not None:
        argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    assert proc.stdout is not None
    proc.stdout.readline()  # all made (or refused)
    time.sleep(0.5)  # the daemon has accepted what it will
    return proc


WHOAMI = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
s.sendall(b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
got = b""
while chunk := s.recv(65536):
    got += chunk
print(got.decode())
"""


def _whoami(d, user: str) -> dict:
    argv = ["setpriv", "--reuid", user, "--regid", user, "--init-groups"]
    argv += ["/usr/bin/python3", "-c", WHOAMI, d.socket]
    out = subprocess.run(argv, capture_output=True, timeout=60, cwd="/")
    head, _, body = out.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), (out.stdout[:300], out.stderr[-300:])
    return json.loads(body)


def _eventually(check, wait: float = 60.0):
    """``check()`` once it stops raising (a bound, not a timing assertion)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _fds(d) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/fd"))


@pytest.mark.parametrize("kind", ["idle", "partial", "events", "attach"])
def test_one_user_cannot_take_every_connection(jobsd, users, kind):  # noqa: F811
    d = jobsd(config=_config(users), tcp=True)
    flood = _hold(kind, FLOOD, d.server, users["a"])
    try:
        assert _fds(d) < PER_PEER + 100  # held at a's bound, not 3x it
        assert _whoami(d, users["b"])["key"].startswith("uid:")  # another user is answered
        status, _, _ = d.request("GET", "/api/v1/whoami")  # root too
        assert status == 200
        status, _, _ = d.request("GET", "/api/v1/whoami", tcp=True, token=d.user_token)
        assert status == 200  # and TCP
        if kind == "attach":  # refused upgrades (4404) are closed by the daemon: slots freed
            _eventually(lambda: _whoami(d, users["a"]))  # after the close handshake's timeout
    finally:
        flood.communicate("", timeout=60)
    time.sleep(0.5)
    assert _whoami(d, users["a"])["key"].startswith("uid:")  # a is answered again after
    assert d.log().count("too many connections") <= 3  # one line per spell, not a flood


def test_tcp_flood_leaves_the_unix_socket_alone(jobsd, users):  # noqa: F811
    d = jobsd(config=_config(users), tcp=True)
    flood = _hold("partial", FLOOD, f"127.0.0.1:{d.port}", None)
    try:
        assert _whoami(d, users["b"])["key"].startswith("uid:")
        assert _fds(d) < PER_PEER + 100
    finally:
        flood.communicate("", timeout=60)


def test_per_peer_bound_is_what_this_file_floods_past():
    assert auth.Admission.PER_PEER == PER_PEER


def test_connection_bound_admission_unit():
    """Admission: per-peer and total bounds, root only in the total, release idempotent."""
    adm = auth.Admission(per_peer=3, total=5)
    a = [adm.admit("uid:1") for _ in range(4)]
    assert [r is not None for r in a] == [True, True, True, False]
    roots = [adm.admit("uid:0") for _ in range(3)]
    assert [r is not None for r in roots] == [True, True, False]  # total 5 reached
    assert adm.admit("uid:2") is None
    a[0]()
    a[0]()  # twice: released once
    assert adm.open == {"uid:1": 2, "uid:0": 2}
    assert adm.admit("uid:2") is not None
