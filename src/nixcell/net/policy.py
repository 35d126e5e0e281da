"""The network policy: ordered rules, first match wins, anything unmatched is denied.

Pure data and decisions — no sockets. The proxy asks three questions and gets answers it can
log: may this tunnel open (``decide_connect``), may this request pass (``decide``), may this
resolved address be dialled (``address_allowed``). Policies come from nix-jail's TOML format
(read as-is, plus the extensions ``methods``, ``port``, ``path`` globs and ``[resolve]``) and from
``--allow-host``/``--deny-host``/``--allow-cidr`` flags. Every rule remembers where it came from
(``github.toml:12``, ``--allow-host api.github.com``) so a denial can say which rule fired.

Reading policy files lives in ``policyfile`` (strict: every mistake names ``file:line``);
``nixcell policy check URL`` in ``policycheck``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from ipaddress import ip_address

from nixcell.errors import PolicyError
from nixcell.net.addresses import IPAddress, canonical_network, embedded_addresses, refusal, unwrap
from nixcell.net.hosts import HostPattern, parse_ip
from nixcell.net.urlpath import PathPattern

TYPE_CHECKING = False  # not `import typing`: start-up time
if TYPE_CHECKING:
    from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = frozenset({80, 443})
SCHEME_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def host_port_text(host: str, port: int | None) -> str:
    """``host`` or ``host:port`` as a user would type it (IPv6 bracketed when a port follows)."""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Rule:
    """One policy rule. ``ports=None``: 80 and 443 for a host *allow* rule, every port for a
    deny rule and for a cidr rule; ``methods``/``paths`` None mean any."""

    action: str
    host: HostPattern | None
    cidr: IPNetwork | None
    ports: frozenset[int] | None
    methods: frozenset[str] | None
    paths: tuple[PathPattern, ...] | None
    credential: str | None
    origin: str
    index: int = 0

    def __post_init__(self) -> None:
        if (self.host is None) == (self.cidr is None):
            raise ValueError("a rule needs exactly one of host and cidr")

    @property
    def conditional(self) -> bool:
        """True when the rule looks inside requests (methods or paths), not just at endpoints."""
        return self.methods is not None or self.paths is not None

    def describe(self) -> str:
        return f"rule {self.index} ({self.origin})"

    def matches_endpoint(self, host: str, port: int) -> bool:
        """Host (or cidr, for IP literals only) and port; ``host`` must be normalised.

        Without a port a host allow rule means the web ports (80, 443); a deny rule means every
        port (``--deny-host evil.test`` must not leave evil.test:8443 to a wider allow); a cidr
        rule means every port: it grants an address range, and the host rules still decide
        which ports are used. A deny rule naming an address also matches the IPv6 forms that
        lead to it (NAT64, 6to4, Teredo, IPv4-translated): denying more fails closed."""
        if self.ports is not None and port not in self.ports:
            return False
        web_only = self.ports is None and self.action == "allow" and self.cidr is None
        if web_only and port not in DEFAULT_PORTS:
            return False
        candidates: list[str] = [host]
        if self.action == "deny" and ":" in host and (addr := parse_ip(host)) is not None:
            candidates += [str(v4) for v4 in embedded_addresses(addr)]
        if self.cidr is not None:
            return any(ip_address(c) in self.cidr for c in candidates if parse_ip(c) is not None)
        assert self.host is not None
        return any(self.host.matches(c) for c in candidates)

    def judge(self, req: Request) -> str | None:
        """``"match"``, ``"no"``, or why this rule cannot judge ``req``'s path unambiguously
        (then the request is refused: a path rule may be dodged by a spelling it did not check)."""
        if not self.matches_endpoint(req.host, req.port):
            return "no"
        if self.methods is not None and req.method.upper() not in self.methods:
            return "no"
        if self.paths is None:
            return "match"
        for pattern in self.paths:
            problem = pattern.problem(req.path)
            if problem is not None:
                return f"the path holds {problem}"
            if pattern.matches(req.path):
                return "match"
        return "no"

    def matches(self, req: Request) -> bool:
        return self.judge(req) == "match"


@dataclass(frozen=True)
class Request:
    """One request as the proxy saw it; ``host`` and ``path`` already normalised."""

    method: str
    scheme: str
    host: str
    port: int
    path: str

    def url(self) -> str:
        port = None if SCHEME_PORTS.get(self.scheme) == self.port else self.port
        host = f"[{self.host}]" if ":" in self.host and port is None else self.host
        return f"{self.scheme}://{host_port_text(host, port)}{self.path}"

    def __str__(self) -> str:
        return f"{self.method} {self.url()}"


@dataclass(frozen=True)
class Decision:
    """The answer plus the rule that gave it, so logs and errors can name that rule."""

    allowed: bool
    rule: Rule | None
    credential: str | None = None
    subject: str = ""
    reason: str | None = None  # a denial that is not the rule's action (an ambiguous path)

    def explain(self) -> str:
        if self.rule is None:
            return f"denied: {self.subject} (no rule)"
        if self.reason is not None:
            return f"denied: {self.reason}, which {self.rule.describe()} cannot judge"
        verdict = "allowed" if self.allowed else "denied"
        return f"{verdict} by {self.rule.describe()}"

    def hint(self, req: Request) -> str | None:
        """The flag that would allow ``req``; None when allowed or denied by an explicit rule
        (flags' allows come after file rules and flags' denies, so no flag would help)."""
        if self.allowed or self.rule is not None:
            return None
        port = None if req.port in DEFAULT_PORTS else req.port
        return f"--allow-host {host_port_text(req.host, port)}"


@dataclass(frozen=True)
class Policy:
    """Ordered rules plus ``[resolve]`` pins and raw ``[[credentials]]`` tables (with ``_line``).

    ``source`` is the file the policy came from; None means command-line flags (see ``merge``).
    """

    rules: tuple[Rule, ...] = ()
    resolve: dict[str, tuple[str, ...]] = field(default_factory=dict)
    credentials: tuple[dict[str, Any], ...] = ()
    source: str | None = None

    def decide(self, req: Request) -> Decision:
        for rule in self.rules:
            verdict = rule.judge(req)
            if verdict == "match":
                allowed = rule.action == "allow"
                return Decision(allowed, rule, rule.credential if allowed else None, str(req))
            if verdict != "no":
                return Decision(False, rule, None, str(req), verdict)
        return Decision(False, None, None, str(req))

    def proxied_cidrs(self) -> tuple[IPNetwork, ...]:
        """The networks allow rules grant (for NO_PROXY: granted loopback must go via proxy)."""
        return tuple(r.cidr for r in self.rules if r.cidr is not None and r.action == "allow")

    def decide_connect(self, host: str, port: int) -> Decision:
        """May a tunnel to ``host:port`` open? Conditional rules cannot be judged before the
        requests are seen, so a conditional deny is passed over and any reachable allow opens
        the tunnel; each request inside is then checked with ``decide``. Credentials are a
        per-request matter, so the decision carries none."""
        subject = f"CONNECT {host_port_text(host, port)}"
        for rule in self.rules:
            if not rule.matches_endpoint(host, port):
                continue
            if rule.action == "allow":
                return Decision(True, rule, None, subject)
            if not rule.conditional:
                return Decision(False, rule, None, subject)
        return Decision(False, None, None, subject)

    def address_allowed(
        self, addr: IPAddress, port: int, own_addresses: frozenset[IPAddress] = frozenset()
    ) -> tuple[bool, str]:
        """May the proxy dial ``addr``? The first cidr rule covering it (and the port) decides,
        whatever its methods or paths (a conditional cidr deny refuses the address outright:
        fail closed), and so does a plain deny naming the address (``--deny-host 10.1.2.3``
        also denies every name resolving to it); otherwise only globally routable addresses
        that are not our own pass."""
        addr = unwrap(addr)
        for rule in self.rules:
            denies_ip = rule.action == "deny" and not rule.conditional and rule.host is not None
            denies_ip = denies_ip and rule.host.kind == "ip"  # type: ignore[union-attr]
            if (rule.cidr is not None or denies_ip) and rule.matches_endpoint(str(addr), port):
                verdict = "allowed" if rule.action == "allow" else "denied"
                return rule.action == "allow", f"{addr} {verdict} by {rule.describe()}"
        reason = refusal(addr, own_addresses)
        if reason is not None:
            return False, reason
        return True, f"{addr} is globally routable"


# ---------------------------------------------------------------------------------------------
# Values shared by the TOML reader and the flags: each raises ValueError with a short reason.


def _port_text(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r} (expected 1-65535)")
    return int(text)


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``; a bare IPv6 literal has no port;
    ``re:<regex>[:port]`` — digits after the regex's last ``:`` are the port."""
    text = text.strip()
    if text.startswith("re:"):
        head, colon, tail = text[3:].rpartition(":")
        if colon and tail.isdigit():
            return "re:" + head, _port_text(tail)
        return text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError(f"unclosed '[' in {text!r}")
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        return host, _port_text(rest[1:])
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port_text(port)
    return text, None


def parse_host_port(text: str) -> tuple[HostPattern, frozenset[int] | None]:
    """A ``--allow-host`` value: ``api.github.com:8443``, ``*.example.com``, ``[::1]:8080``."""
    try:
        host, port = split_host_port(text)
        pattern = HostPattern.parse(host)
    except ValueError as exc:
        raise PolicyError(f"invalid host {text!r}: {exc}") from None
    return pattern, None if port is None else frozenset({port})


def _cidr_port(text: str) -> tuple[IPNetwork, frozenset[int] | None]:
    """A ``--allow-cidr`` value: ``10.0.0.0/8``, ``10.0.0.0/8:5432``, ``[fd00::/8]:443``."""
    raw, port = text.strip(), None
    if raw.startswith("[") or raw.count(":") == 1:
        raw, port = split_host_port(raw)
    return canonical_network(raw), None if port is None else frozenset({port})


# ---------------------------------------------------------------------------------------------
# Building policies.


def numbered(rules: list[Rule]) -> tuple[Rule, ...]:
    return tuple(replace(rule, index=i) for i, rule in enumerate(rules, 1))


def policy_from_flags(
    allow_hosts: list[str], deny_hosts: list[str], allow_cidrs: list[str]
) -> Policy:
    """Rules from command-line flags: denies first, then allows, each in the order given."""
    rules: list[Rule] = []
    for flag, action, values in (
        ("--deny-host", "deny", deny_hosts),
        ("--allow-host", "allow", allow_hosts),
    ):
        for text in values:
            try:
                host, port = split_host_port(text)
                pattern = HostPattern.parse(host)
            except ValueError as exc:
                raise PolicyError(f"{flag} {text}: {exc}") from None
            ports = None if port is None else frozenset({port})
            rules.append(Rule(action, pattern, None, ports, None, None, None, f"{flag} {text}"))
    for text in allow_cidrs:
        try:
            net, ports = _cidr_port(text)
        except ValueError as exc:
            raise PolicyError(f"--allow-cidr {text}: {exc}") from None
        rules.append(Rule("allow", None, net, ports, None, None, None, f"--allow-cidr {text}"))
    return Policy(numbered(rules))


def merge(*policies: Policy) -> Policy:
    """One policy from flags (``source`` None) and files, in this order: the flags' denies, then
    every file's rules in the order given, then the flags' allows. A deny typed on the command
    line always wins; an allow flag widens what the files leave unmatched but cannot override a
    file's explicit deny — the safer reading when the two disagree."""
    flags = [p for p in policies if p.source is None]
    files = [p for p in policies if p.source is not None]
    rules = [r for p in flags for r in p.rules if r.action == "deny"]
    rules += [r for p in files for r in p.rules]
    rules += [r for p in flags for r in p.rules if r.action == "allow"]
    resolve: dict[str, tuple[str, ...]] = {}
    owners: dict[str, str] = {}
    for policy in policies:
        for host, addresses in policy.resolve.items():
            if host in resolve and resolve[host] != addresses:
                raise PolicyError(
                    f"conflicting [resolve] entries for {host!r} in {owners[host]} "
                    f"and {policy.source}"
                )
            resolve[host] = addresses
            owners[host] = policy.source or "flags"
    credentials = tuple(c for p in policies for c in p.credentials)
    source = ", ".join(p.source for p in files if p.source) or None
    return Policy(numbered(rules), resolve, credentials, source)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy TOML file; every problem is a one-line ``PolicyError`` naming file:line."""
    from nixcell.net.policyfile import load_policy as load  # the reader builds on this module

    return load(path)


def parse_policy(text: str, name: str) -> Policy:
    """Parse policy TOML held in memory; ``name`` is used in messages and rule origins."""
    from nixcell.net.policyfile import parse_policy as parse

    return parse(text, name)
