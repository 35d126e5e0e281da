# ruff: noqa: RUF001 - full-width and other look-alike characters are the point here
"""Hosts: one canonical address for every spelling the resolver reads, or a refusal.

Checked against the real C resolver (``getaddrinfo`` with ``AI_NUMERICHOST``: no DNS query is
sent), and against the rules: host rules, cidr rules and the address guard must all judge a
spelling as the address it is.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.net.addresses import canonical_network, embedded_addresses, special_label
from nixcell.net.hosts import BadHost, HostPattern, normalize_host, parse_ip
from nixcell.net.policy import Policy, Rule, numbered

FULL_WIDTH = {c: chr(ord(c) + 0xFEE0) for c in "0123456789abcdefxX"} | {".": "\uff0e"}


def cidr_rule(action: str, cidr: str) -> Rule:
    return Rule(action, None, ipaddress.ip_network(cidr), None, None, None, None, "test")


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0177.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.01", "127.0.0.1"),
        ("0x0a.0.0.1", "10.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("4294967295", "255.255.255.255"),
        ("１２７．０．０．１", "127.0.0.1"),
        ("０ｘ７ｆ．１", "127.0.0.1"),
        ("127。0。0。1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        ("::FFFF:7F00:1", "127.0.0.1"),
        ("0:0:0:0:0:ffff:7f00:1", "127.0.0.1"),
        ("0000:0000:0000:0000:0000:0000:0000:0001", "::1"),
        ("[0::1]", "::1"),
        ("64:FF9B::7F00:1", "64:ff9b::7f00:1"),
        ("64:ff9b::127.0.0.1", "64:ff9b::7f00:1"),
        ("API.GitHub.COM", "api.github.com"),
        ("api.github.com.", "api.github.com"),
        ("ａｐｉ．ｇｉｔｈｕｂ．ｃｏｍ", "api.github.com"),
        ("api。github。com", "api.github.com"),
        ("api｡github｡com", "api.github.com"),
        ("ＡＰＩ.github.com", "api.github.com"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("r3---sn-abc.googlevideo.com", "r3---sn-abc.googlevideo.com"),
        ("123.example.com", "123.example.com"),
        ("0x7f.example.com", "0x7f.example.com"),
    ],
)
def test_every_spelling_has_one_canonical_form(spelling: str, canonical: str) -> None:
    assert normalize_host(spelling) == canonical


@pytest.mark.parametrize(
    "spelling",
    [
        "fe80::1%eth0",
        "fe80::1%25eth0",
        "[fe80::1%25eth0]",
        "%31%32%37.0.0.1",
        "api%2egithub.com",
        "127.0.0.1.",  # glibc does not read it as an address: it would go to DNS
        "0x7f.1.",
        "1.2.3.4.5",
        "256.0.0.1",
        "0x100.0.0.1",
        "1.16777216",
        "4294967296",
        "08.0.0.1",
        "0x",
        "1.2.3.0x",
        "127.0.0.1 x",
        " api.github.com",
        "api.github.com\t",
        "api\x00.github.com",
        "a..b",
        ".a.b",
        "a.b..",
        "",
        ".",
        "[127.0.0.1]",
        "[api.github.com]",
        "[::1",
        "::1]",
        "[v1.x]",
        "::ffff:127.1",
        "faß.de",  # IDNA 2003 says fass.de, IDNA 2008 xn--fa-hia.de
        "ς.example",
        "a\u200db.example",
        "xn--zz.example",
        "xn--api-.example",
        "１２７．０．０．１．",
        "-a.example",
        "a-.example",
        "a_b\\.example",
        "a/b",
        "user@host",
        "a" * 64 + ".example",
    ],
)
def test_ambiguous_spellings_are_refused(spelling: str) -> None:
    with pytest.raises(BadHost) as err:
        normalize_host(spelling)
    assert "\n" not in str(err.value)


def _resolver(spelling: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """What the C resolver makes of a numeric host (AI_NUMERICHOST: no DNS query is sent)."""
    try:
        infos = socket.getaddrinfo(spelling, None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError, ValueError):
        return None
    addr = ipaddress.ip_address(infos[0][4][0].split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _agrees(spelling: str) -> None:
    try:
        canonical = normalize_host(spelling)
    except BadHost:
        return  # refused: always allowed
    bracketed = spelling.startswith("[") and spelling.endswith("]")
    resolved = _resolver(spelling[1:-1] if bracketed else spelling)  # brackets are URL syntax
    as_ip = parse_ip(canonical)
    assert resolved == as_ip, (spelling, canonical, resolved)
    assert normalize_host(canonical) == canonical  # idempotent: every layer may normalise again
    assert HostPattern.parse(spelling).matches(canonical)  # a rule spelled the same way matches


@st.composite
def inet_aton_spellings(draw: st.DrawFn) -> str:
    number = draw(st.integers(0, 2**32 - 1))
    count = draw(st.integers(1, 4))
    values = [(number >> (24 - 8 * i)) & 0xFF for i in range(count - 1)]
    values.append(number & ((1 << (8 * (5 - count))) - 1))
    parts = []
    for value in values:
        radix = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
        zeros = "0" * draw(st.integers(0, 2))
        if radix == "dec":
            parts.append(str(value))
        elif radix == "oct":
            parts.append("0" + zeros + format(value, "o"))
        else:
            text = zeros + format(value, "x")
            prefix = "0x" if radix == "hex" else "0X"
            parts.append(prefix + draw(st.sampled_from([text, text.upper()])))
    spelling = ".".join(parts)
    if draw(st.booleans()):
        spelling = "".join(FULL_WIDTH.get(c, c) for c in spelling)
    return spelling + draw(st.sampled_from(["", "", "", ".", "。", ".0", "x", "..", " "]))


@settings(max_examples=1500, deadline=None)
@given(inet_aton_spellings())
def test_inet_aton_forms_agree_with_the_resolver(spelling: str) -> None:
    _agrees(spelling)


@settings(max_examples=1500, deadline=None)
@given(st.text(alphabet="0123456789abcdefxX.:%[]", min_size=1, max_size=24))
def test_numeric_looking_garbage_agrees_or_is_refused(spelling: str) -> None:
    _agrees(spelling)


@st.composite
def ipv6_spellings(draw: st.DrawFn) -> str:
    addr = draw(
        st.one_of(
            st.ip_addresses(v=6),
            st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address("::ffff:" + str(a))),
            st.ip_addresses(v=4).map(lambda a: ipaddress.IPv6Address("64:ff9b::" + str(a))),
        )
    )
    form = draw(st.sampled_from(["compressed", "exploded", "upper", "dotted", "bracket"]))
    text = addr.compressed
    if form == "exploded":
        text = addr.exploded
    elif form == "upper":
        text = addr.compressed.upper()
    elif form == "dotted":
        tail = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        text = addr.exploded.rsplit(":", 2)[0] + ":" + str(tail)
    suffix = draw(st.sampled_from(["", "", "%eth0", "%25lo", "%1"]))
    return f"[{text}{suffix}]" if form == "bracket" else text + suffix


@settings(max_examples=800, deadline=None)
@given(ipv6_spellings())
def test_ipv6_forms_agree_with_the_resolver(spelling: str) -> None:
    _agrees(spelling.strip("[]") if "%" in spelling else spelling)
    if "%" in spelling:  # zone ids: the resolver takes them, nixcell never does
        with pytest.raises(BadHost):
            normalize_host(spelling)


LOOPBACK_SPELLINGS = [
    "127.0.0.1", "0x7f000001", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "127.1",
    "１２７．０．０．１", "::ffff:127.0.0.1", "[::ffff:7f00:1]", "0:0::ffff:127.0.0.1",
]


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_host_cidr_and_guard_see_the_same_address(spelling: str) -> None:
    host = normalize_host(spelling)
    addr = ipaddress.ip_address(host)
    deny_ip = Rule("deny", HostPattern.parse("127.0.0.1"), None, None, None, None, None, "t")
    allow_cidr = cidr_rule("allow", "127.0.0.0/8")
    assert deny_ip.matches_endpoint(host, 8080)
    assert allow_cidr.matches_endpoint(host, 8080)
    assert HostPattern.parse(spelling).matches(host)  # a rule may be spelled oddly too
    assert not Policy().address_allowed(addr, 80)[0]  # the guard: loopback
    assert Policy(numbered([allow_cidr])).address_allowed(addr, 80)[0]


@pytest.mark.parametrize(
    ("address", "embedded"),
    [
        ("64:ff9b::7f00:1", "127.0.0.1"),
        ("2002:7f00:1::", "127.0.0.1"),
        ("::ffff:0:7f00:1", "127.0.0.1"),
        ("::7f00:1", "127.0.0.1"),
    ],
)
def test_deny_rules_cover_ipv6_forms_of_an_address(address: str, embedded: str) -> None:
    addr = ipaddress.ip_address(address)
    assert ipaddress.ip_address(embedded) in embedded_addresses(addr)
    host = normalize_host(address)
    deny = Rule("deny", HostPattern.parse(embedded), None, None, None, None, None, "t")
    assert deny.matches_endpoint(host, 443)
    assert cidr_rule("deny", "127.0.0.0/8").matches_endpoint(host, 443)
    assert not cidr_rule("allow", "127.0.0.0/8").matches_endpoint(host, 443)
    assert not Policy().address_allowed(addr, 443)[0]


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("::ffff:127.0.0.0/104", "127.0.0.0/8"),
        ("::ffff:10.0.0.1/128", "10.0.0.1/32"),
        ("::/0", "::/0"),
    ],
)
def test_canonical_network(text: str, network: str) -> None:
    assert canonical_network(text) == ipaddress.ip_network(network)


@pytest.mark.parametrize("text", ["10/8", "0x0a.0.0.0/8", "fe80::%eth0/64", "127.1/8", "x"])
def test_canonical_network_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        canonical_network(text)


@settings(max_examples=500, deadline=None)
@given(inet_aton_spellings(), st.sampled_from(["10.0.0.0/8", "127.0.0.0/8", "0.0.0.0/1", "::/0"]))
def test_rules_and_guard_judge_every_spelling_as_its_address(spelling: str, cidr: str) -> None:
    try:
        host = normalize_host(spelling)
    except BadHost:
        return
    addr = parse_ip(host)
    if addr is None:  # "00x": a name to the resolver as well
        return
    net = ipaddress.ip_network(cidr)
    for action in ("allow", "deny"):
        spelled = Rule(action, HostPattern.parse(spelling), None, None, None, None, None, "t")
        plain = Rule(action, HostPattern.parse(str(addr)), None, None, None, None, None, "t")
        assert spelled.matches_endpoint(host, 443) and plain.matches_endpoint(host, 443)
        assert cidr_rule(action, cidr).matches_endpoint(host, 80) is (addr in net)
    guard = Policy(numbered([cidr_rule("allow", cidr)])).address_allowed(addr, 443)[0]
    assert guard is (addr in net or special_label(addr) is None)


@pytest.mark.parametrize("spelling", ["10.1.2.3", "0x0a010203", "012.1.2.3", "::ffff:10.1.2.3"])
def test_a_deny_naming_an_address_denies_every_name_resolving_to_it(spelling: str) -> None:
    deny = Rule("deny", HostPattern.parse(spelling), None, None, None, None, None, "deny")
    pol = Policy(numbered([deny, cidr_rule("allow", "10.0.0.0/8")]))
    for resolved in ("10.1.2.3", "::ffff:10.1.2.3", "64:ff9b::a01:203"):
        ok, why = pol.address_allowed(ipaddress.ip_address(resolved), 443)
        assert not ok and "rule 1" in why, resolved
    assert pol.address_allowed(ipaddress.ip_address("10.1.2.4"), 443)[0]
