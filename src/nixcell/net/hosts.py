"""Host names and host patterns, normalised one way for policy, credentials and the proxy.

A name is compared only after ``normalize_host``: lower case, IDNA (punycode) for non-ASCII, one
trailing dot dropped, IPv6 brackets removed. Anything that is not a plain DNS name or an IP
literal (userinfo, spaces, ``%``, ``/``, empty labels) is refused rather than guessed at: a proxy
that parses a host more leniently than the upstream does is how policies get bypassed.

Patterns are anchored and case-insensitive:
- ``api.github.com`` matches exactly that name;
- ``*.example.com`` matches any name *below* example.com, never example.com itself;
- ``*`` matches every name;
- a pattern with regex syntax (nix-jail's format, e.g. ``api\\.github\\.com`` or ``.*``) is a
  regular expression matched against the whole name, never a substring;
- an IP literal matches that address only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_REGEX_CHARS = re.compile(r"[\\^$()\[\]{}+?|]|\.\*")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BadHost(ValueError):
    """Not a host name or IP literal we are willing to route."""


def parse_ip(host: str) -> IPAddress | None:
    """The address if ``host`` (already normalised) is an IP literal; IPv4-mapped v6 unwrapped."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def normalize_host(raw: str) -> str:
    """The canonical form of a host name or IP literal, or ``BadHost``."""
    host = raw.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise BadHost("empty host")
    if ":" in host:  # only an IPv6 literal may contain a colon here
        if "%" in host:
            raise BadHost(f"invalid host {raw!r}: IPv6 zone ids are not routed")
        try:
            addr = ipaddress.IPv6Address(host)  # a zone id ("%eth0") is refused here too
        except ValueError:
            raise BadHost(f"invalid host {raw!r}") from None
        return str(addr.ipv4_mapped or addr)
    if host.endswith("."):
        host = host[:-1]
    try:
        ascii_host = host.encode("ascii").decode()
    except UnicodeEncodeError:
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadHost(f"invalid host {raw!r}") from None
    host = ascii_host.lower()
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise BadHost(f"invalid host {raw!r}")
    if labels[-1].isdigit():  # 127.1, 0x7f.1 and friends: numeric forms resolvers accept
        raise BadHost(f"invalid host {raw!r}: numeric name that is not a dotted IPv4 address")
    return host


@dataclass(frozen=True)
class HostPattern:
    """One anchored host pattern; build it with ``HostPattern.parse``."""

    text: str
    kind: str  # "exact" | "suffix" | "any" | "regex" | "ip"
    value: str
    regex: re.Pattern[str] | None = None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Parse a pattern; ``ValueError`` with a short reason when it is malformed."""
        raw = text.strip()
        if raw == "*":
            return cls(text, "any", "*")
        if _REGEX_CHARS.search(raw):
            try:
                compiled = re.compile(raw, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"invalid host regex {raw!r}: {exc}") from None
            return cls(text, "regex", raw, compiled)
        if raw.startswith("*."):
            try:
                suffix = normalize_host(raw[2:])
            except BadHost:
                raise ValueError(f"invalid host pattern {raw!r}") from None
            return cls(text, "suffix", suffix)
        if "*" in raw:
            raise ValueError(f"invalid host pattern {raw!r}: '*' only as '*' or a leading '*.'")
        try:
            host = normalize_host(raw)
        except BadHost:
            raise ValueError(f"invalid host pattern {raw!r}") from None
        return cls(text, "ip" if parse_ip(host) else "exact", host)

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised (``normalize_host``)."""
        if self.kind == "any":
            return True
        if self.kind == "exact" or self.kind == "ip":
            if self.kind == "ip":
                addr = parse_ip(host)
                return addr is not None and str(addr) == self.value
            return host == self.value
        if self.kind == "suffix":
            return host.endswith("." + self.value)
        assert self.regex is not None
        return self.regex.fullmatch(host) is not None

    def __str__(self) -> str:
        return self.text
