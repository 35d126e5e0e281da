"""``nixcell run``'s network flags and the ``nixcell policy`` commands."""

from __future__ import annotations

import os

import click

NET_HELP = "No network flag: the cell has no network at all (only lo)."


def network_options(f):
    opts = [
        click.option(
            "--allow-host",
            multiple=True,
            metavar="PATTERN",
            help="Allow a host through the proxy: api.x.com, *.x.com (not x.com), host:port "
            "(ports 80 and 443 without one), 're:REGEX' for an anchored regex. " + NET_HELP,
        ),
        click.option(
            "--deny-host",
            multiple=True,
            metavar="PATTERN",
            help="Deny a host (same patterns) on every port, or only :port; denies come first.",
        ),
        click.option(
            "--allow-cidr",
            multiple=True,
            metavar="CIDR",
            help="Allow destination addresses (e.g. 127.0.0.0/8[:port]); private and loopback "
            "addresses are refused unless a cidr rule allows them.",
        ),
        click.option(
            "--policy",
            "policy_files",
            multiple=True,
            metavar="FILE",
            help="Policy TOML (nix-jail format plus methods, port, path; [[credentials]]).",
        ),
        click.option(
            "--credential",
            "credentials",
            multiple=True,
            metavar="NAME",
            help="Use a [[credentials]] entry of the policy: the cell gets a dummy token, the "
            "proxy swaps in the real one for the credential's hosts.",
        ),
        click.option(
            "--upstream-ca",
            multiple=True,
            metavar="FILE",
            help="Extra CA the proxy trusts for upstream TLS (private CAs).",
        ),
        click.option(
            "--resolve",
            "resolves",
            multiple=True,
            metavar="HOST:ADDR",
            help="Pin a host to an address, like curl --resolve (the address guard still applies).",
        ),
        click.option("--audit", metavar="FILE", help="Append one JSON line per proxy decision."),
        click.option(
            "--learn",
            is_flag=True,
            help="Let every request through the proxy (address guard still on), then print a "
            "policy allowing exactly what was used to stdout (the cell's stdout goes to stderr).",
        ),
        click.option(
            "--learn-output",
            metavar="FILE",
            help="With --learn: write the policy here instead (the cell's stdout stays stdout).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _abs(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def network_from_flags(o: dict[str, object]) -> dict[str, object] | None:
    """The spec's ``network`` from the flags; None (no network) when no flag asks for one."""
    _no_empty_names(o)
    keys = ("allow_host", "deny_host", "allow_cidr", "policy_files", "credentials", "resolves")
    used = any(o.get(k) for k in keys) or o.get("learn") or o.get("audit") or o.get("upstream_ca")
    if not used:
        if o.get("learn_output"):
            raise click.UsageError("--learn-output needs --learn")
        return None
    resolve: dict[str, list[str]] = {}
    for item in o.get("resolves") or ():  # type: ignore[union-attr]
        host, addr = parse_resolve(str(item))
        resolve.setdefault(host, []).append(addr)
    return {
        "allow_hosts": list(o.get("allow_host") or ()),  # type: ignore[call-overload]
        "deny_hosts": list(o.get("deny_host") or ()),  # type: ignore[call-overload]
        "allow_cidrs": list(o.get("allow_cidr") or ()),  # type: ignore[call-overload]
        "policy_files": [_abs(str(p)) for p in o.get("policy_files") or ()],  # type: ignore[union-attr]
        "credentials": list(o.get("credentials") or ()),  # type: ignore[call-overload]
        "upstream_ca": [_abs(str(p)) for p in o.get("upstream_ca") or ()],  # type: ignore[union-attr]
        "resolve": resolve,
        "audit": _abs(str(o["audit"])) if o.get("audit") else None,
        "learn": bool(o.get("learn")),
    }


_FILE_FLAGS = {
    "policy_files": "--policy",
    "upstream_ca": "--upstream-ca",
    "audit": "--audit",
    "learn_output": "--learn-output",
    "workdir": "--workdir",
}


def _no_empty_names(o: dict[str, object]) -> None:
    """``--audit ''`` (an unset shell variable) must not quietly mean "no audit"."""
    for key, flag in _FILE_FLAGS.items():
        value = o.get(key)
        values = value if isinstance(value, tuple | list) else (value,)
        if any(v == "" for v in values):
            raise click.UsageError(f"{flag} needs a path, got ''")


def parse_resolve(item: str) -> tuple[str, str]:
    """``--resolve HOST:ADDR`` as (normalised host, canonical address); one UsageError line.

    A host name never holds a ':', so the address is everything after the first one (an IPv6
    address may be bracketed). A port is refused by name: the pin holds on every port.
    """
    import ipaddress

    from nixcell.net.hosts import BadHost, normalize_host

    host, sep, addr = item.partition(":")
    if not sep or not host or not addr:
        raise click.UsageError(f"--resolve needs HOST:ADDR (e.g. api.test:127.0.0.1), got {item!r}")
    bare = addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr
    try:  # the standard spelling only: no inet_aton forms (0x7f.1), no zone ids
        if "%" in bare:
            raise ValueError
        pinned = str(ipaddress.ip_address(bare))
    except ValueError:
        address, _, port = addr.rpartition(":")
        if port.isdigit() and _is_ip(address.strip("[]")):
            raise click.UsageError(
                f"--resolve {item}: no port here (the pin holds on every port): "
                f"write {host}:{address}"
            ) from None
        raise click.UsageError(
            f"--resolve {item}: {addr!r} is not an IP address (names are not looked up)"
        ) from None
    try:
        return normalize_host(host), pinned
    except BadHost as exc:
        raise click.UsageError(f"--resolve {item}: {exc}") from None


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@click.group()
def policy() -> None:
    """Inspect network policies."""


@policy.command()
@click.argument("url")
@click.option("--method", "-X", default="GET", show_default=True, help="HTTP method.")
@click.option("--policy", "policy_files", multiple=True, metavar="FILE", help="Policy TOML.")
@click.option("--allow-host", multiple=True, metavar="PATTERN")
@click.option("--deny-host", multiple=True, metavar="PATTERN")
@click.option("--allow-cidr", multiple=True, metavar="CIDR")
def check(url: str, method: str, **o: object) -> int:
    """Explain which rule matches METHOD URL; exit 0 if allowed, 1 if denied."""
    from nixcell.net.policycheck import explain_check
    from nixcell.net.session import build_policy

    network = network_from_flags({**o, "learn": False}) or {"allow_hosts": []}
    allowed, text = explain_check(build_policy(network), url, method)
    click.echo(text)
    return 0 if allowed else 1
