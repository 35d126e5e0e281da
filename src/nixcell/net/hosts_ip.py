"""IP literals as the C resolver reads them: every ``inet_aton`` form of IPv4, and IPv6.

glibc's ``getaddrinfo`` accepts IPv4 in 1 to 4 parts, each decimal, octal (leading ``0``) or hex
(``0x``), the last part filling the remaining bytes: ``127.1``, ``0x7f.0.0.1``, ``2130706433``
and ``0177.0.0.1`` are all 127.0.0.1. ``parse_ipv4`` reads exactly those forms (and refuses
``0x`` without digits, ``08``, parts out of range, more than four parts — which glibc refuses
too, then sends the name to DNS) so a numeric-looking host is either the address the resolver
would use or an error, never a name that resolves to something else.
"""

from __future__ import annotations

import ipaddress
import re

_NUMERIC_LABEL = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$", re.IGNORECASE)
_PART = re.compile(r"^(?:0x(?P<hex>[0-9a-f]+)|(?P<oct>0[0-7]*)|(?P<dec>[1-9][0-9]*))$", re.I)


class BadHost(ValueError):
    """Not a host name or IP literal we are willing to route."""


def looks_numeric(host: str) -> bool:
    """True when a resolver (or a URL parser) would try ``host`` as an IPv4 address: its last
    label is a number (``1.2.3.4``, ``example.0x10``); WHATWG calls this "ends in a number"."""
    return bool(_NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]))


def parse_ipv4(host: str, raw: str) -> str:
    """The dotted quad of an ``inet_aton`` spelling, or ``BadHost``."""
    parts = host.split(".")
    bad = BadHost(f"invalid host {raw!r}: numeric name that is not an IPv4 address")
    if not 1 <= len(parts) <= 4:
        raise bad
    values: list[int] = []
    for part in parts:
        found = _PART.match(part)
        if found is None:
            raise bad
        if found["hex"] is not None:
            values.append(int(found["hex"], 16))
        elif found["oct"] is not None:
            values.append(int(found["oct"], 8))
        else:
            values.append(int(found["dec"]))
    *head, last = values
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        raise bad
    number = last
    for position, value in enumerate(head):
        number |= value << (8 * (3 - position))
    return str(ipaddress.IPv4Address(number))


def parse_ipv6(host: str, raw: str) -> str:
    """The compressed form of an IPv6 literal (IPv4-mapped: the IPv4 address), or ``BadHost``.

    A zone id (``%eth0``, ``%25eth0``) names an interface of the host: refused."""
    if "%" in host:
        raise BadHost(f"invalid host {raw!r}: IPv6 zone ids are not routed")
    try:
        addr = ipaddress.IPv6Address(host)
    except ValueError:
        raise BadHost(f"invalid host {raw!r}") from None
    return str(addr.ipv4_mapped or addr)
