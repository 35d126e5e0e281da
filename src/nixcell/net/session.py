"""Per-cell network set-up and teardown: policy + credentials + namespace + proxy listener.

``open_cell_network`` does everything that can fail *before* the cell starts (a bad policy file,
a missing credential, no namespace), so a cell never runs with less isolation than asked: it
gets its network exactly as planned, or it does not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from nixcell.errors import PolicyError
from nixcell.net import netns
from nixcell.net.audit import AuditLog
from nixcell.net.proxy import CellNet, shared_proxy

SIOCGIFADDR = 0x8915


@dataclass
class CellNetworkSession:
    cell: CellNet
    net: netns.CellNetwork
    server: object  # asyncio.Server
    env: dict[str, str] = field(default_factory=dict)
    learn_output: str | None = None
    _closed: bool = False

    def launcher_argv(self) -> list[str]:
        return self.net.enter_argv(netns.nsenter_path())

    def pass_fds(self) -> list[int]:
        return self.net.pass_fds()

    def secrets(self) -> list[str]:
        creds = self.cell.credentials
        return creds.secrets() if creds is not None else []  # type: ignore[attr-defined]

    async def close(self) -> None:
        """Stop serving the cell and release its namespace; renders the learned policy."""
        if self._closed:
            return
        self._closed = True
        try:
            await shared_proxy().stop(self.server, self.cell)  # type: ignore[arg-type]
        finally:
            self.net.close()
            self.cell.audit.close()
        if self.cell.recorder is not None:
            from nixcell.net.learn import render_policy

            self.learn_output = render_policy(self.cell.recorder)  # type: ignore[arg-type]

    def summary(self) -> str | None:
        return self.cell.audit.summary()


def build_policy(network: dict[str, object]):  # -> net.policy.Policy
    """The cell's policy from the plan's network section: flags, files and --resolve pins."""
    from nixcell.net.policy import Policy, load_policy, merge, policy_from_flags

    files = [load_policy(path) for path in network.get("policy_files") or []]  # type: ignore[union-attr]
    flags = policy_from_flags(
        list(network.get("allow_hosts") or []),  # type: ignore[call-overload]
        list(network.get("deny_hosts") or []),  # type: ignore[call-overload]
        list(network.get("allow_cidrs") or []),  # type: ignore[call-overload]
    )
    pins = {str(k): tuple(v) for k, v in dict(network.get("resolve") or {}).items()}  # type: ignore[call-overload]
    if pins:
        from nixcell.net.hosts import normalize_host

        flags = Policy(flags.rules, {normalize_host(k): v for k, v in pins.items()}, (), None)
    return merge(flags, *files)


def build_credentials(policy, names: list[str]):  # -> CellCredentials | None
    """Load the credentials named by ``--credential`` or bound to a rule; None if there are none."""
    wanted = list(dict.fromkeys([*names, *(r.credential for r in policy.rules if r.credential)]))
    if not wanted:
        return None
    from nixcell.net.credentials import CellCredentials, parse_credentials

    specs = {}
    for table in policy.credentials:
        source = str(table.get("_file") or policy.source or "policy")
        raw = {k: v for k, v in table.items() if k != "_file"}
        for spec in parse_credentials([raw], source):
            if spec.name in specs:
                raise PolicyError(f"{source}: credential {spec.name!r} is defined twice")
            specs[spec.name] = spec
    missing = [n for n in wanted if n not in specs]
    if missing:
        raise PolicyError(
            f"credential {missing[0]!r} is not defined: add a [[credentials]] table named "
            f"{missing[0]!r} to the policy file"
        )
    return CellCredentials.load([specs[n] for n in wanted])


async def open_cell_network(network: dict[str, object], cell_id: str) -> CellNetworkSession:
    """Everything a cell with a network needs, ready before the cell starts."""
    policy = build_policy(network)
    credentials = build_credentials(policy, list(network.get("credentials") or []))  # type: ignore[call-overload]
    redact = credentials.redact if credentials is not None else (lambda text: text)
    audit = AuditLog(cell_id, network.get("audit"), redact)  # type: ignore[arg-type]
    upstream_ssl = None
    if network.get("upstream_ca"):
        from nixcell.net.tls import upstream_context

        upstream_ssl = upstream_context(list(network["upstream_ca"]))  # type: ignore[call-overload]
    recorder = None
    if network.get("learn"):
        from nixcell.net.learn import Recorder

        recorder = Recorder()
    cell = CellNet(
        cell_id=cell_id,
        policy=policy,
        audit=audit,
        upstream_ssl=upstream_ssl,
        credentials=credentials,
        recorder=recorder,
        own_addresses=own_addresses(),
    )
    net = netns.create(int(network.get("port") or netns.DEFAULT_PORT))  # type: ignore[call-overload]
    try:
        server = await shared_proxy().serve(net.listener, cell)
    except BaseException:
        net.close()
        audit.close()
        raise
    env = credentials.cell_env() if credentials is not None else {}
    return CellNetworkSession(cell, net, server, env)


def own_addresses() -> frozenset:
    """This host's interface addresses: the guard refuses them unless a cidr rule allows."""
    found: set = set()
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            with contextlib.suppress(OSError):
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, req)
                found.add(ipaddress.IPv4Address(res[20:24]))
    with contextlib.suppress(OSError), open("/proc/net/if_inet6") as f:
        for line in f:
            found.add(ipaddress.IPv6Address(int(line.split()[0], 16)))
    return frozenset(found)
