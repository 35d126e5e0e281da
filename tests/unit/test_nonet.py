"""The no-network hint's logic: counter files, the proxy's denials, the one line (no cells here;
tests/integration/test_nonet_hint.py runs real programs in real cells)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.sandbox.nonet import (
    NetProbe,
    NoNetwork,
    attempts,
    detect,
    parse_snmp,
    parse_snmp6,
    unallowed_hosts,
)

SNMP = """Ip: Forwarding DefaultTTL InReceives OutNoRoutes
Ip: 2 64 8 {noroute}
Icmp: InMsgs InDestUnreachs
Icmp: 4 4
IcmpMsg: InType3 OutType3
IcmpMsg: 4 4
Udp: InDatagrams NoPorts InErrors
Udp: 0 {noports} 0
UdpLite: InDatagrams NoPorts
UdpLite: 0 7
"""
SNMP6 = "Ip6InReceives 3\nIp6OutNoRoutes {noroute6}\nUdp6InDatagrams 0\nUdp6NoPorts {noports6}\n"


@dataclass
class Rec:
    host: object
    port: object = 443
    action: str = "deny"
    rule: str = "no rule"


def snmp(noroute=0, noports=0):
    return parse_snmp(SNMP.format(noroute=noroute, noports=noports))


def snmp6(noroute6=0, noports6=0):
    return parse_snmp6(SNMP6.format(noroute6=noroute6, noports6=noports6))


@pytest.mark.parametrize(
    ("v4", "v6", "count"),
    [
        ({}, {}, 0),
        ({"noports": 4}, {}, 4),  # a DNS query to 127.0.0.1:53
        ({"noroute": 2}, {}, 2),  # a connection to an address outside
        ({}, {"noports6": 1}, 1),  # a DNS query to [::1]:53
        ({}, {"noroute6": 3}, 3),
        ({"noports": 1, "noroute": 1}, {"noports6": 1, "noroute6": 1}, 4),
    ],
)
def test_attempts_count_only_the_watched_counters(v4, v6, count):
    assert attempts(snmp(**v4), snmp6(**v6)) == count


def test_parse_ignores_other_tables_and_malformed_lines():
    parsed = parse_snmp(SNMP.format(noroute=1, noports=2))
    assert parsed["Udp:NoPorts"] == 2 and parsed["UdpLite:NoPorts"] == 7  # not mixed up
    assert parse_snmp("Ip: A B\nTcp: 1 2\nUdp: NoPorts\nUdp: x\n") == {}
    assert parse_snmp6("Udp6NoPorts\nIp6OutNoRoutes 5 6\nx y\nUdp6NoPorts 9\n") == {
        "Udp6NoPorts": 9
    }


def test_probe_reads_a_real_namespace_and_sees_no_attempt_of_its_own():
    probe = NetProbe.open(os.getpid())
    assert probe is not None
    try:
        assert probe.tried() is False  # nothing this test did counts
    finally:
        probe.close()
    probe.close()  # idempotent
    assert NetProbe.open(2**22 + 1) is None  # no such pid: no probe, never an error


@pytest.mark.parametrize(
    ("records", "hosts"),
    [
        ([Rec("pypi.org")], ("pypi.org",)),
        ([Rec("pypi.org"), Rec("pypi.org"), Rec("files.test")], ("pypi.org", "files.test")),
        ([Rec("a.test", 8080)], ("a.test:8080",)),
        ([Rec("a.test", 80)], ("a.test",)),
        ([Rec("2001:4860::1", 3128)], ("[2001:4860::1]:3128",)),
        # not globally routable: a host rule never reaches them, so no flag is offered
        ([Rec("::1", 3128), Rec("127.0.0.1"), Rec("[::1]"), Rec("169.254.169.254")], ()),
        (
            [
                Rec("10.0.0.1"),
                Rec("192.168.1.1", 8080),
                Rec("fd00:ec2::254"),
                Rec("::ffff:10.0.0.1"),
            ],
            (),
        ),
        ([Rec("100.64.0.1"), Rec("0.0.0.0"), Rec("224.0.0.1"), Rec("8.8.8.8")], ("8.8.8.8",)),
        ([Rec("b.test", rule="rule 2 (policy.toml)")], ()),  # an explicit deny: no flag helps
        ([Rec("c.test", action="error")], ()),  # allowed, the upstream failed
        ([Rec("d.test", action="allow")], ()),
        ([Rec("-"), Rec(""), Rec(None), Rec("e.test", port="x"), Rec("f.test", port=70000)], ()),
        ([Rec("x\x1b]0;pwned\x07"), Rec("a b"), Rec("é.test"), Rec("x\n")], ()),
    ],
)
def test_unallowed_hosts(records, hosts):
    assert unallowed_hosts(records) == hosts


@given(st.text(max_size=80), st.integers(min_value=-5, max_value=70000))
def test_a_host_named_by_the_cell_never_puts_control_bytes_on_the_terminal(host, port):
    found = detect(1, None, networked=True, denied=[Rec(host, port)])
    if found is None:
        return
    for front in ("cli", "mcp"):
        assert found.line(front).isascii() and found.line(front).isprintable()
    assert all(" " not in h and "," not in h for h in found.hosts)


class FakeProbe:
    def __init__(self, tried):
        self._tried = tried

    def tried(self):
        return self._tried


@pytest.mark.parametrize(
    ("code", "probe", "networked", "denied", "expected"),
    [
        (0, FakeProbe(True), False, (), None),  # it succeeded: never a hint
        (0, None, True, [Rec("pypi.org")], None),
        (1, FakeProbe(False), False, (), None),  # it failed without touching the network
        (1, None, False, (), None),  # no probe (pid gone): no guess
        (1, FakeProbe(True), False, (), NoNetwork((), False)),
        (6, FakeProbe(True), True, (), NoNetwork((), True)),  # around the proxy
        (56, FakeProbe(False), True, [Rec("pypi.org")], NoNetwork(("pypi.org",), True)),
        (124, FakeProbe(True), False, (), NoNetwork((), False)),  # a timeout is a failure too
    ],
)
def test_detect(code, probe, networked, denied, expected):
    assert detect(code, probe, networked=networked, denied=denied) == expected


def test_lines_say_what_to_do():
    none = NoNetwork((), False)
    assert none.line() == (
        "the cell has no network; allow a host with --allow-host HOST, or --policy FILE"
    )
    assert "allow_hosts" in none.line("mcp") and "--allow-host" not in none.line("mcp")
    one = NoNetwork(("pypi.org",), True)
    assert one.line() == (
        "the cell has no network access to pypi.org; allow with --allow-host pypi.org"
    )
    assert "pypi.org" in one.line("mcp") and "allow_hosts" in one.line("mcp")
    many = NoNetwork(tuple(f"h{i}.test" for i in range(5)), True)
    assert "and 2 more" in many.line() and many.line().count("--allow-host") == 3
    assert "proxy" in NoNetwork((), True).line()
    assert all("\n" not in x.line() for x in (none, one, many))


def test_probe_without_snmp6_watches_ipv4_alone(tmp_path):
    """A kernel without IPv6 has no snmp6: the probe still works from snmp alone."""
    path = tmp_path / "snmp"
    path.write_text(SNMP.format(noroute=0, noports=0))
    probe = NetProbe((os.open(path, os.O_RDONLY),))
    try:
        assert probe.tried() is False
        path.write_text(SNMP.format(noroute=0, noports=2))  # same inode: the fd sees it
        assert probe.tried() is True
    finally:
        probe.close()
