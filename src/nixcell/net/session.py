"""Per-cell network set-up and teardown: policy + credentials + namespace + proxy listener.

``open_cell_network`` does everything that can fail *before* the cell starts (a bad policy file,
a missing credential, no namespace), so a cell never runs with less isolation than asked: it
gets its network exactly as planned, or it does not run.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass, field

from nixcell.errors import PolicyError
from nixcell.net import netns
from nixcell.net.audit import AuditLog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.net.proxy import CellNet

SIOCGIFADDR = 0x8915


@dataclass
class CellNetworkSession:
    """One cell's network: its namespace and listener now, its proxy when first needed.

    Everything that can refuse the run (credentials, audit file, namespace) happens in
    ``prepare_cell_network``, before the cell starts. A flags-only policy (already validated
    when the plan was made) is compiled when the first connection arrives, so a cell that never
    connects pays nothing for the proxy; any failure then closes the listener (fail closed).
    """

    network: dict[str, object]
    cell_id: str
    net: netns.CellNetwork
    audit: AuditLog
    credentials: object | None = None
    policy: object | None = None
    env: dict[str, str] = field(default_factory=dict)
    cell: CellNet | None = None
    server: object | None = None  # asyncio.Server
    learn_output: str | None = None
    failure: str | None = None
    _closed: bool = False

    def secrets(self) -> list[str]:
        creds = self.credentials
        return creds.secrets() if creds is not None else []  # type: ignore[attr-defined]

    def _make_cell(self) -> CellNet:
        from nixcell.net.proxy import CellNet

        network = self.network
        policy = self.policy if self.policy is not None else build_policy(network)
        upstream_ssl = None
        if network.get("upstream_ca"):
            from nixcell.net.tls import upstream_context

            upstream_ssl = upstream_context(list(network["upstream_ca"]))  # type: ignore[call-overload]
        recorder = None
        if network.get("learn"):
            from nixcell.net.learn import Recorder

            recorder = Recorder()
        return CellNet(
            cell_id=self.cell_id,
            policy=policy,
            audit=self.audit,
            upstream_ssl=upstream_ssl,
            credentials=self.credentials,
            recorder=recorder,
            own_addresses=own_addresses(),
        )

    async def start(self) -> None:
        """Serve the cell's listener on the running event loop."""
        from nixcell.net.proxy import shared_proxy

        try:
            self.cell = self._make_cell()
            self.server = await shared_proxy().serve(self.net.listener, self.cell)
        except Exception as exc:
            self.failure = f"the cell's proxy could not start: {exc}"
            self.net.listener.close()  # fail closed: connections are refused from now on
            raise

    async def stop(self) -> None:
        if self.server is not None and self.cell is not None:
            from nixcell.net.proxy import shared_proxy

            server, self.server = self.server, None
            await shared_proxy().stop(server, self.cell)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.stop()
        self.release()

    def release(self) -> None:
        """Free the namespace and files; renders the learned policy. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.net.close()
        self.audit.close()
        if self.cell is not None and self.cell.recorder is not None:
            from nixcell.net.learn import render_policy

            self.learn_output = render_policy(self.cell.recorder)  # type: ignore[arg-type]
        elif self.network.get("learn"):
            from nixcell.net.learn import Recorder, render_policy

            self.learn_output = render_policy(Recorder())

    def summary(self) -> str | None:
        return self.audit.summary()


class LazyProxy:
    """For a blocking caller: a thread that starts the proxy when the cell first connects."""

    def __init__(self, session: CellNetworkSession) -> None:
        import threading

        self.session = session
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="nixcell-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        listener = self.session.net.listener
        ready, _, _ = select.select([listener, self._stop_r], [], [])
        if listener not in ready:
            return
        import asyncio

        asyncio.run(self._serve())

    async def _serve(self) -> None:
        import asyncio

        try:
            await self.session.start()
        except Exception:  # recorded in session.failure; the listener is closed
            return
        stopped = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._stop_r, stopped.set)
        await stopped.wait()
        await self.session.stop()

    def stop(self) -> None:
        """Stop serving (after the cell ended) and wait for the thread. Idempotent: the pipe's
        fds are closed once, never again after their numbers may belong to someone else."""
        if self._stop_w < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._stop_r = self._stop_w = -1


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


def prepare_cell_network(
    network: dict[str, object],
    cell_id: str,
    staging: dict[str, object] | None = None,
    net: netns.CellNetwork | None = None,
) -> CellNetworkSession:
    """Everything that can refuse the run, done before the cell starts; no event loop needed.

    ``staging``: what the same namespace helper also does (``CellLaunch.holder_args``).
    ``net``: a listener a backend made in its own cell's network (Docker's pause container, a
    microVM's channel) in place of a fresh lo-only namespace; the session owns it from here."""
    policy = None
    credentials = None
    if network.get("policy_files") or network.get("credentials"):
        policy = build_policy(network)  # files can bind credentials to rules
        credentials = build_credentials(policy, list(network.get("credentials") or []))  # type: ignore[call-overload]
    redact = credentials.redact if credentials is not None else (lambda text: text)  # type: ignore[attr-defined]
    audit = AuditLog(cell_id, network.get("audit"), redact)  # type: ignore[arg-type]
    try:
        if net is None:
            port = int(network.get("port") or netns.DEFAULT_PORT)  # type: ignore[call-overload]
            net = netns.create(port, **(staging or {}))
    except BaseException:
        audit.close()
        raise
    env = credentials.cell_env() if credentials is not None else {}  # type: ignore[attr-defined]
    return CellNetworkSession(network, cell_id, net, audit, credentials, policy, env)


async def open_cell_network(
    network: dict[str, object],
    cell_id: str,
    staging: dict[str, object] | None = None,
    net: netns.CellNetwork | None = None,
) -> CellNetworkSession:
    """``prepare_cell_network`` plus the proxy serving it on the running loop."""
    session = prepare_cell_network(network, cell_id, staging, net)
    try:
        await session.start()
    except BaseException:
        session.release()
        raise
    return session


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
