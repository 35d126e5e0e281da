"""The resolved-address guard: what a name may resolve to before the proxy dials it."""

from __future__ import annotations

import ipaddress

import pytest

from nixcell.net.addresses import embedded_v4, special_label
from nixcell.net.hosts import HostPattern
from nixcell.net.policy import Policy, Rule, numbered


def cidr_rule(
    action: str,
    cidr: str,
    ports: set[int] | None = None,
    methods: set[str] | None = None,
    origin: str = "test",
) -> Rule:
    return Rule(
        action,
        None,
        ipaddress.ip_network(cidr),
        frozenset(ports) if ports else None,
        frozenset(methods) if methods else None,
        None,
        None,
        origin,
    )


def policy(*rules: Rule) -> Policy:
    return Policy(numbered(list(rules)))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.0.0.1", "private (RFC 1918)"),
        ("172.16.5.4", "private (RFC 1918)"),
        ("192.168.1.1", "private (RFC 1918)"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "this network"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "broadcast"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.2.1", "documentation"),
        ("192.0.0.8", "IETF"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "unique-local"),
        ("fd12:3456::1", "unique-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("::ffff:10.0.0.1", "10.0.0.1 is private"),
        ("::ffff:127.0.0.1", "127.0.0.1 is loopback"),
        ("::7f00:1", "IPv4-compatible"),
        ("2002:a00:1::1", "embeds 10.0.0.1 (6to4)"),
        ("2002:a9fe:a9fe::", "embeds 169.254.169.254 (6to4)"),
        ("64:ff9b::a00:1", "embeds 10.0.0.1 (NAT64)"),
        ("64:ff9b::7f00:1", "embeds 127.0.0.1 (NAT64)"),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "embeds 192.0.2.45 (Teredo)"),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", "Teredo"),
        ("64:ff9b:1::808:808", "local-use NAT64"),
    ],
)
def test_address_guard_refuses_local_ranges(address: str, why: str) -> None:
    ok, reason = Policy().address_allowed(ipaddress.ip_address(address), 443, frozenset())
    assert not ok
    assert why in reason
    assert "allow it with a cidr rule (--allow-cidr " in reason


def test_address_guard_reason_text() -> None:
    assert Policy().address_allowed(ipaddress.ip_address("127.0.0.1"), 80) == (
        False,
        "127.0.0.1 is loopback; allow it with a cidr rule (--allow-cidr 127.0.0.1/32)",
    )


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "2606:4700::1111",
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
    ],
)
def test_address_guard_allows_global(address: str) -> None:
    ok, reason = Policy().address_allowed(ipaddress.ip_address(address), 443, frozenset())
    assert ok, reason


def test_address_guard_refuses_own_addresses() -> None:
    own = frozenset({ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:4700::1")})
    for address in ("93.184.216.34", "::ffff:93.184.216.34", "2606:4700::1"):
        ok, reason = Policy().address_allowed(ipaddress.ip_address(address), 443, own)
        assert not ok and "this host's own addresses" in reason
    ok, _ = Policy().address_allowed(ipaddress.ip_address("64:ff9b::5db8:d822"), 443, own)
    assert not ok  # NAT64 form of an own address


def test_cidr_allow_exempts_loopback() -> None:
    pol = policy(cidr_rule("allow", "127.0.0.0/8", origin="--allow-cidr 127.0.0.0/8"))
    ok, reason = pol.address_allowed(ipaddress.ip_address("127.0.0.1"), 443)
    assert ok and reason == "127.0.0.1 allowed by rule 1 (--allow-cidr 127.0.0.0/8)"
    assert pol.address_allowed(ipaddress.ip_address("::ffff:127.0.0.2"), 80)[0]
    assert not pol.address_allowed(ipaddress.ip_address("10.0.0.1"), 443)[0]
    assert pol.address_allowed(ipaddress.ip_address("127.0.0.1"), 5432)[0]  # no port: every port
    web = policy(cidr_rule("allow", "127.0.0.0/8", ports={443}))
    assert not web.address_allowed(ipaddress.ip_address("127.0.0.1"), 5432)[0]  # not covered
    own = frozenset({ipaddress.ip_address("127.0.0.1")})
    assert pol.address_allowed(ipaddress.ip_address("127.0.0.1"), 443, own)[0]


def test_cidr_rules_first_one_decides() -> None:
    pol = policy(
        cidr_rule("deny", "127.0.0.1/32", ports={443}),
        cidr_rule("allow", "127.0.0.0/8", ports={443, 8080}),
        cidr_rule("deny", "8.8.8.0/24", methods={"POST"}),  # conditional: still refuses outright
    )
    assert not pol.address_allowed(ipaddress.ip_address("127.0.0.1"), 443)[0]
    assert pol.address_allowed(ipaddress.ip_address("127.0.0.1"), 8080)[0]  # rule 1: 443 only
    assert pol.address_allowed(ipaddress.ip_address("127.0.0.2"), 443)[0]
    assert not pol.address_allowed(ipaddress.ip_address("127.0.0.2"), 9090)[0]
    ok, reason = pol.address_allowed(ipaddress.ip_address("8.8.8.8"), 443)
    assert not ok and reason == "8.8.8.8 denied by rule 3 (test)"


def test_host_rules_do_not_exempt_addresses() -> None:
    pol = policy(Rule("allow", HostPattern.parse("*"), None, None, None, None, None, "x"))
    assert not pol.address_allowed(ipaddress.ip_address("10.0.0.1"), 443)[0]


def test_helpers() -> None:
    assert special_label(ipaddress.ip_address("8.8.8.8")) is None
    assert special_label(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
    assert embedded_v4(ipaddress.ip_address("8.8.8.8")) is None
    assert embedded_v4(ipaddress.ip_address("2001:4860::1")) is None
    assert embedded_v4(ipaddress.ip_address("64:ff9b::808:808")) == (
        "NAT64",
        ipaddress.IPv4Address("8.8.8.8"),
    )
