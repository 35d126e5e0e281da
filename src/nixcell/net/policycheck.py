"""``nixcell policy check URL``: what the proxy would decide for one request, step by step.

The same three questions the proxy asks (net/policy.py: the tunnel, the request, each address
it would dial), answered for a URL typed by the user, with the rule that fired and a hint.
"""

from __future__ import annotations

import ipaddress
import urllib.parse

from nixcell.errors import PolicyError
from nixcell.net.hosts import normalize_host, parse_ip
from nixcell.net.policy import (
    SCHEME_PORTS,
    TOKEN,
    Policy,
    Request,
    host_port_text,
    split_host_port,
)
from nixcell.net.urlpath import normalize_path


def explain_check(policy: Policy, url: str, method: str = "GET") -> tuple[bool, str]:
    """Would ``method url`` pass ``policy``? Returns the verdict and a short explanation."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise PolicyError(f"invalid URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEME_PORTS:
        raise PolicyError(f"unsupported URL {url!r} (expected an http, https, ws or wss URL)")
    if not TOKEN.fullmatch(method):
        raise PolicyError(f"invalid method {method!r}")
    userinfo, at_sign, hostport = parts.netloc.rpartition("@")
    try:
        raw_host, port = split_host_port(hostport)
        host = normalize_host(raw_host)
        path = normalize_path(parts.path)
    except ValueError as exc:
        raise PolicyError(f"invalid URL {url!r}: {exc}") from None
    http_scheme = "https" if scheme in ("https", "wss") else "http"
    req = Request(method.upper(), http_scheme, host, port or SCHEME_PORTS[scheme], path)
    lines = [f"request: {req}"]
    if at_sign:
        lines.append(f"note: {userinfo!r} before '@' is userinfo; the host is {host}")
    allowed = True
    if http_scheme == "https":
        tunnel = policy.decide_connect(host, req.port)
        verdict = tunnel.explain() if tunnel.rule else "denied (no rule)"
        lines.append(f"tunnel: CONNECT {host_port_text(host, req.port)}: {verdict}")
        allowed = tunnel.allowed
    decision = policy.decide(req)
    if decision.rule is None:
        lines.append("rule: no rule matched: denied by default")
    elif decision.reason is not None:
        lines.append(f"rule: {decision.explain()}")
    else:
        lines.append(f"rule: matched {decision.rule.describe()}: {decision.rule.action}")
    allowed = allowed and decision.allowed
    literal = parse_ip(host)
    addresses = (
        [literal] if literal else [ipaddress.ip_address(a) for a in policy.resolve.get(host, ())]
    )
    for addr in addresses:
        ok, reason = policy.address_allowed(addr, req.port)
        lines.append(f"address: {reason}")
        allowed = allowed and ok
    if not addresses:
        lines.append(f"address: checked when {host} resolves (local and private ones refused)")
    lines.append(f"result: {'allowed' if allowed else 'denied'}")
    hint = decision.hint(req)
    if hint is not None:
        lines.append(f"hint: {hint}")
    return allowed, "\n".join(lines)
