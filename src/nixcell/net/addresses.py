"""Which resolved addresses a cell may reach without an explicit cidr rule.

A host rule says *which names* a cell may reach; it must not become a path to the host's own
services, the LAN or the cloud metadata endpoint when a name resolves (or rebinds) to one of them.
So every address DNS returns, and every IP literal, is checked here: only globally routable
addresses pass. ``ipaddress.is_global`` is the base, but Python 3.11 misses several ranges (it
calls ``fec0::/10``, ``64:ff9b::/96`` and the IPv4-compatible ``::a.b.c.d`` global), so the known
special ranges are listed explicitly, first match wins, with the reason a user will read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_SPECIAL: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), label)
    for net, label in (
        ("0.0.0.0/32", "unspecified"),
        ("0.0.0.0/8", "'this network' (0.0.0.0/8)"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (RFC 6598, carrier-grade NAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "link-local (the cloud metadata service)"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "reserved for IETF protocol assignments"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("198.18.0.0/15", "benchmarking (RFC 2544)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)

_V6_SPECIAL: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), label)
    for net, label in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("fd00:ec2::254/128", "unique-local (the cloud metadata service)"),
        ("fc00::/7", "unique-local (fc00::/7)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
        ("100::/64", "discard-only"),
        ("2001:db8::/32", "documentation"),
        ("2001:2::/48", "benchmarking"),
        ("2001::/32", "a Teredo tunnel address"),
        ("64:ff9b:1::/48", "local-use NAT64 (RFC 8215)"),
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT "IPv4-translated" (RFC 2765)
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated "IPv4-compatible" (::a.b.c.d)
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def unwrap(addr: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.1``) is the IPv4 address it maps."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def special_label(addr: IPAddress) -> str | None:
    """Why ``addr`` is not globally routable (``"loopback"``), or None when it is."""
    addr = unwrap(addr)
    table: Iterable[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]
    table = _V4_SPECIAL if isinstance(addr, ipaddress.IPv4Address) else _V6_SPECIAL
    for net, label in table:
        if addr in net:
            return label
    if addr.is_multicast:
        return "multicast"
    if addr.is_loopback or addr.is_link_local or addr.is_unspecified:
        return "local"
    if addr.is_reserved:
        return "reserved"
    if not addr.is_global:
        return "not globally routable"
    return None


def embedded_v4(addr: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address a 6to4, Teredo or NAT64 address leads to, with the form's name."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr.sixtofour is not None:
        return "6to4", addr.sixtofour
    if addr.teredo is not None:
        return "Teredo", addr.teredo[1]
    if addr in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _TRANSLATED:
        return "IPv4-translated", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def embedded_addresses(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """Every IPv4 address an IPv6 address can lead to (its NAT64, 6to4, Teredo, translated or
    compatible form): a deny naming the IPv4 address denies these too."""
    addr = unwrap(addr)
    out: list[ipaddress.IPv4Address] = []
    embedded = embedded_v4(addr)
    if embedded is not None:
        out.append(embedded[1])
    if isinstance(addr, ipaddress.IPv6Address) and addr in _COMPATIBLE and int(addr) > 1:
        out.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return out


def canonical_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A cidr as the address guard compares it; ``ValueError`` when malformed or ambiguous.

    Only the standard spellings are accepted (no ``inet_aton`` forms such as ``10/8``, no zone
    ids). A range inside ``::ffff:0:0/96`` is the IPv4 range it maps, since an IPv4-mapped host
    is canonicalised to its IPv4 address."""
    if "%" in text:
        raise ValueError(f"invalid cidr {text!r}: IPv6 zone ids are not routed")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"invalid cidr {text!r} (expected ADDRESS/BITS, e.g. 10.0.0.0/8)"
        ) from None
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None
        return ipaddress.IPv4Network(f"{mapped}/{net.prefixlen - 96}")
    return net


def refusal(addr: IPAddress, own_addresses: frozenset[IPAddress] = frozenset()) -> str | None:
    """The reason to refuse ``addr`` when no cidr rule covers it, or None when it may be used."""
    addr = unwrap(addr)
    fix = f"allow it with a cidr rule (--allow-cidr {addr}/{addr.max_prefixlen})"
    own = {unwrap(a) for a in own_addresses}
    if addr in own:
        return f"{addr} is one of this host's own addresses; {fix}"
    embedded = embedded_v4(addr)
    if embedded is not None:
        form, v4 = embedded
        label = "one of this host's own addresses" if v4 in own else special_label(v4)
        if label is not None:
            return f"{addr} embeds {v4} ({form}), which is {label}; {fix}"
        if form == "NAT64":  # Python calls 64:ff9b::/96 reserved; DNS64 networks need it
            return None
    label = special_label(addr)
    if label is not None:
        return f"{addr} is {label}; {fix}"
    return None
