"""The Host values a TCP listener answers (DNS rebinding), table-driven: its own address, the
configured name, the localhost names only on loopback; everything else refused."""

from __future__ import annotations

import pytest

from nixcell.jobs.auth import allowed_hosts, is_loopback


@pytest.mark.parametrize(
    ("local", "listen", "host", "ok"),
    [
        (("127.0.0.1", 7878), (), "127.0.0.1:7878", True),
        (("127.0.0.1", 7878), (), "localhost:7878", True),
        (("127.0.0.1", 7878), (), "[::1]:7878", True),
        (("127.0.0.1", 7878), (), "localhost:7879", False),
        (("127.0.0.1", 7878), (), "localhost", False),
        (("127.0.0.1", 7878), (), "127.0.0.1", False),
        (("127.0.0.1", 7878), (), "evil.example:7878", False),
        (("127.0.0.1", 7878), (), "localhost.evil.example:7878", False),
        (("127.0.0.1", 7878), (), "127.0.0.1.nip.io:7878", False),
        (("127.0.0.1", 7878), (), "0x7f000001:7878", False),
        (("127.0.0.1", 7878), (), "2130706433:7878", False),
        (("127.0.0.1", 7878), (), "127.1:7878", False),
        (("127.0.0.1", 7878), (), "127.0.0.1:7878.", False),
        (("127.0.0.1", 7878), (), "", False),
        (("::1", 7878), (), "[::1]:7878", True),
        (("::1", 7878), (), "::1:7878", False),
        (("10.1.2.3", 7878), (), "10.1.2.3:7878", True),
        (("10.1.2.3", 7878), (), "localhost:7878", False),  # not loopback: no localhost names
        (("10.1.2.3", 7878), ("jobs.example:7878",), "jobs.example:7878", True),
        (("10.1.2.3", 7878), ("jobs.example:9999",), "jobs.example:7878", False),
        (("10.1.2.3", 7878), ("unix:/run/x:7878",), "unix:/run/x:7878", False),
    ],
)
def test_allowed_hosts(local, listen, host, ok):
    assert (host in allowed_hosts(local, listen)) is ok


@pytest.mark.parametrize(
    ("host", "loop"),
    [("127.0.0.1", True), ("127.5.5.5", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("10.0.0.1", False),
     ("example.com", False)],
)  # fmt: skip
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop
