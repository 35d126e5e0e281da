"""Host names and host patterns, canonicalised one way for policy, credentials and the proxy.

A host is compared only after ``normalize_host``, which reads it exactly as the resolver would
and returns one spelling per destination: an IPv4 address in any ``inet_aton`` form
(``0x7f000001``, ``0177.0.0.1``, ``127.1``) becomes its dotted quad, an IPv6 literal its
compressed form (an IPv4-mapped one its IPv4 address), a name is lower-cased, mapped from
full-width or other compatibility forms and IDNA-encoded, with one trailing dot dropped. The
proxy dials that canonical form, so host rules, cidr rules, credential hosts and the address
guard all judge the address that is used. What cannot be made unambiguous is refused: zone ids,
percent-encoded or bracketed non-IPv6 hosts, empty labels, spaces and control characters, names
IDNA 2003 and IDNA 2008 encode differently (``faß.de``), ``xn--`` labels that do not round-trip,
and numeric-looking names that the C resolver would not read as an address (``1.2.3.4.5``,
``08.1``, ``127.0.0.1.``). ``host_forms`` in net/hosts_ip.py holds the numeric parsers.

Patterns (``HostPattern.parse``) are anchored and case-insensitive:
- ``api.github.com`` matches exactly that name; ``*.example.com`` any name *below* example.com,
  never example.com itself; ``*`` every name; an IP literal (any spelling) that address only;
- ``re:<regex>`` is a regular expression matched against the whole canonical name. Without the
  prefix a pattern may hold only a host name's characters (and a leading ``*.``): ``x.*`` or
  ``a|b`` is an error, never a silent regex. Policy *files* follow nix-jail's format, where a
  host with regex syntax (``api\\.github\\.com``, ``.*\\.x\\.com``) is a regex: ``nix_jail=True``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from nixcell.net.hosts_ip import BadHost, looks_numeric, parse_ipv4, parse_ipv6

__all__ = ["BadHost", "HostPattern", "IPAddress", "normalize_host", "parse_ip"]

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_REGEX_CHARS = re.compile(r"[\\^$()\[\]{}+?|]|\.\*")
_PATTERN_CHARS = re.compile(r"^(?:\*\.)?[A-Za-z0-9_.\-\[\]:]+$")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(host: str) -> IPAddress | None:
    """The address if ``host`` (already normalised) is an IP literal; IPv4-mapped v6 unwrapped."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _idna(host: str, raw: str) -> str:
    """ASCII form of a non-ASCII name; refused when IDNA 2003 (Python's codec, which
    ``socket.getaddrinfo`` uses) and IDNA 2008/UTS 46 (curl, browsers) disagree."""
    import idna  # only for non-ASCII names: start-up time

    try:
        old = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        old = None
    try:
        mapped = idna.uts46_remap(host, std3_rules=False, transitional=False)
        labels = [
            label if label.isascii() else idna.alabel(label).decode("ascii")
            for label in mapped.split(".")
        ]
        new = ".".join(labels).lower()
    except (idna.IDNAError, UnicodeError, ValueError):
        new = None
    if old is None or new is None:
        raise BadHost(f"invalid host {raw!r}: not a valid internationalised name")
    if old != new:
        raise BadHost(
            f"invalid host {raw!r}: ambiguous internationalised name ({old} or {new})"
        )
    return old


def _check_a_label(label: str, raw: str) -> None:
    """An ``xn--`` label must be punycode that decodes to a valid name and encodes back to it."""
    import idna

    try:
        ok = idna.alabel(idna.ulabel(label)).decode("ascii") == label
    except (idna.IDNAError, UnicodeError, ValueError):
        ok = False
    if not ok:
        raise BadHost(f"invalid host {raw!r}: {label!r} is not valid punycode")


@lru_cache(maxsize=4096)  # pure; every request of a keep-alive connection names the same host
def normalize_host(raw: str) -> str:
    """The canonical form of a host name or IP literal, or ``BadHost``."""
    host = raw
    if not host:
        raise BadHost("empty host")
    if any(ord(c) < 0x21 or ord(c) == 0x7F or c.isspace() for c in host):
        raise BadHost(f"invalid host {raw!r}: spaces or control characters")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]") and ":" in host):
            raise BadHost(f"invalid host {raw!r}: brackets only around an IPv6 address")
        return parse_ipv6(host[1:-1], raw)
    if ":" in host:  # only an IPv6 literal may contain a colon here
        return parse_ipv6(host, raw)
    if "%" in host:
        raise BadHost(f"invalid host {raw!r}: percent-encoded host names are not routed")
    if not host.isascii():
        host = _idna(host, raw)  # full-width letters and digits, U+3002 and friends map here
    if host.endswith("."):
        host = host[:-1]
        if looks_numeric(host):
            raise BadHost(f"invalid host {raw!r}: numeric name with a trailing dot")
    host = host.lower()
    if looks_numeric(host):
        return parse_ipv4(host, raw)
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise BadHost(f"invalid host {raw!r}")
    for label in labels:
        if label.startswith("xn--"):
            _check_a_label(label, raw)
    return host


@dataclass(frozen=True)
class HostPattern:
    """One anchored host pattern; build it with ``HostPattern.parse``."""

    text: str
    kind: str  # "exact" | "suffix" | "any" | "regex" | "ip"
    value: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str, *, nix_jail: bool = False) -> HostPattern:
        """Parse a pattern; ``ValueError`` with a short reason when it is malformed.

        ``nix_jail``: a pattern with regex syntax is a regex (policy files); otherwise only
        ``re:`` makes one, and other non-host characters are an error."""
        raw = text.strip()
        if raw.startswith("re:") or (nix_jail and _REGEX_CHARS.search(raw)):
            return cls._regex(text, raw[3:] if raw.startswith("re:") else raw)
        if raw == "*":
            return cls(text, "any", "*")
        if raw.isascii() and not _PATTERN_CHARS.match(raw):
            raise ValueError(
                f"invalid host pattern {raw!r}: a host name, '*' or '*.domain' "
                "(write 're:<regex>' for a regular expression)"
            )
        if raw.startswith("*."):
            try:
                suffix = normalize_host(raw[2:])
            except BadHost as exc:
                raise ValueError(f"invalid host pattern {raw!r}: {exc}") from None
            if parse_ip(suffix) is not None:
                raise ValueError(f"invalid host pattern {raw!r}: '*.' before an IP address")
            return cls(text, "suffix", suffix)
        if "*" in raw:
            raise ValueError(f"invalid host pattern {raw!r}: '*' only as '*' or a leading '*.'")
        try:
            host = normalize_host(raw)
        except BadHost as exc:
            raise ValueError(f"invalid host pattern {raw!r}: {exc}") from None
        return cls(text, "ip" if parse_ip(host) else "exact", host)

    @classmethod
    def _regex(cls, text: str, source: str) -> HostPattern:
        if not source:
            raise ValueError("empty host regex")
        try:
            compiled = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"invalid host regex {source!r}: {exc}") from None
        return cls(text, "regex", source, compiled)

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised (``normalize_host``)."""
        if self.kind == "any":
            return True
        if self.kind == "ip":
            addr = parse_ip(host)
            return addr is not None and str(addr) == self.value
        if self.kind == "exact":
            return host == self.value
        if self.kind == "suffix":
            return host.endswith("." + self.value)
        assert self.regex is not None
        return self.regex.fullmatch(host) is not None

    def __str__(self) -> str:
        return self.text
