"""Where a clone may connect: the repo host resolved once, checked, and pinned for git.

The daemon's git runs on the host (usually as root), outside any cell and its proxy, so a
``workspace.repo`` naming ``127.0.0.1``, a private address or a name resolving to one would make
the server fetch from its own loopback services or its LAN for any client (and tell open ports
from closed ones by git's error). The same guard as the proxy's (``net.addresses.refusal``)
applies: special addresses only where the server's ``repo_cidrs`` covers them. The checked
address is handed to git's curl with ``http.curloptResolve``, so a second DNS answer (rebinding)
cannot send git elsewhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from nixcell.jobs.contract import JobError

DEFAULT_PORTS = {"http": 80, "https": 443}


def networks(cidrs: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    from nixcell.net.addresses import canonical_network

    return tuple(canonical_network(c) for c in cidrs)


def pin(url: str, host: str, allowed: Iterable[str] = ()) -> str | None:
    """``HOST:PORT:ADDRESS`` for ``http.curloptResolve`` (None for an address literal: curl
    resolves nothing), or a one-line JobError."""
    from nixcell.net.addresses import refusal, unwrap
    from nixcell.net.session import own_addresses

    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    nets = networks(allowed)
    literal = host[1:-1] if host.startswith("[") else host
    try:
        ipaddress.ip_address(literal)
        is_literal = True
    except ValueError:
        is_literal = False
    try:
        infos = socket.getaddrinfo(literal, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise JobError(f"workspace.repo: cannot resolve {host}: {exc.strerror or exc}") from None
    own = own_addresses()
    why = None
    for info in infos:
        addr = unwrap(ipaddress.ip_address(info[4][0].split("%", 1)[0]))
        covered = any(addr.version == n.version and addr in n for n in nets)
        reason = None if covered else refusal(addr, own)
        if reason is None:
            if is_literal:
                return None
            shown = f"[{addr}]" if addr.version == 6 else str(addr)
            return f"{host}:{port}:{shown}"
        why = why or reason
    raise JobError(
        f"workspace.repo {url}: {why.split(';')[0]}; the server clones from such addresses only "
        "where its repo_cidrs allow"
    )
