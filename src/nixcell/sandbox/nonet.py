"""Did a failed cell try the network it does not have? Its namespace's own counters say so.

A cell has only ``lo`` (and, with a network, the proxy's listener on it). Whatever the program
— pip, npm, git, curl, a Go binary with its own resolver — an attempt to reach anything else
leaves a trace in the kernel's SNMP counters of the cell's network namespace:

- a name lookup: the plan's nsswitch says ``hosts: files dns`` and there is no resolv.conf, so
  the query goes to 127.0.0.1:53 (or [::1]:53), where nothing listens: ``Udp NoPorts``;
- a connection to an address: no route leaves the namespace: ``Ip OutNoRoutes``.

Traffic to the proxy or to servers the cell runs on its own loopback moves neither.

How (the whole API; the CLI's fast path uses the same three steps as the runner):

1. bwrap runs with ``--block-fd R`` (``block_pipe``): the cell waits before its command;
2. after bwrap's info gives the cell's pid 1, ``NetProbe.open(pid)`` opens
   ``/proc/PID/net/snmp`` and ``snmp6`` and takes a baseline; then the write end of the pipe is
   closed, which lets the command run. An open counter file keeps reading its namespace after
   every process of the cell is gone; its cost is two opens and reads per run (≈ 15 µs);
3. after exit, ``detect(exit_code, probe, …)`` reads them again, only when the command failed,
   and returns a ``NoNetwork`` (or None); ``NoNetwork.line()`` is the one line to print last.

With a policy the proxy's audit names the hosts the cell asked for and no rule allowed
(``unallowed_hosts``), so the line names them. Stdlib ``os`` only: this is on the warm path.
"""

from __future__ import annotations

import os

from nixcell.quiet import suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

# (table, field) pairs of /proc/net/snmp and field names of /proc/net/snmp6 that count attempts.
WATCHED = (("Udp", "NoPorts"), ("Ip", "OutNoRoutes"))
WATCHED6 = ("Udp6NoPorts", "Ip6OutNoRoutes")
DEFAULT_PORTS = (80, 443)
# a name, an IPv4 address, or an IPv6 one (bracketed or not); compiled on first use (not warm)
_PLAIN_HOST = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}|\[?[0-9A-Fa-f:.]{2,45}\]?"


def block_pipe() -> tuple[int, int]:
    """(read end for bwrap's ``--block-fd``, write end to close once the probe is open)."""
    return os.pipe2(os.O_CLOEXEC)


def parse_snmp(text: str) -> dict[str, int]:
    """``/proc/net/snmp``: pairs of lines (``Udp: InDatagrams NoPorts …`` then the values)."""
    out: dict[str, int] = {}
    lines = text.splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        table, _, fields = names.partition(":")
        vtable, _, numbers = values.partition(":")
        if table != vtable:
            continue
        for name, value in zip(fields.split(), numbers.split(), strict=False):
            if value.lstrip("-").isdigit():
                out[f"{table}:{name}"] = int(value)
    return out


def parse_snmp6(text: str) -> dict[str, int]:
    """``/proc/net/snmp6``: one ``Name value`` per line."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def attempts(snmp: Mapping[str, int], snmp6: Mapping[str, int]) -> int:
    """How many packets the namespace could not send anywhere or nobody received."""
    count = sum(snmp.get(f"{table}:{name}", 0) for table, name in WATCHED)
    return count + sum(snmp6.get(name, 0) for name in WATCHED6)


class NetProbe:
    """The counters of one cell's network namespace, opened before its command runs.

    The baseline is kept as raw text and parsed only if the command fails: a successful run
    pays two opens and two reads. ``snmp6`` is absent on a kernel without IPv6: then only
    ``snmp`` is watched."""

    __slots__ = ("_base", "_fds")

    def __init__(self, fds: tuple[int, ...]) -> None:
        self._fds: tuple[int, ...] | None = fds
        self._base = self._texts()

    @classmethod
    def open(cls, pid: int) -> NetProbe | None:
        """None when the counters cannot be opened (then no hint is ever given: only a hint)."""
        flags = os.O_RDONLY | os.O_CLOEXEC
        try:
            fds = [os.open(f"/proc/{pid}/net/snmp", flags)]
        except OSError:
            return None
        with suppress(OSError):
            fds.append(os.open(f"/proc/{pid}/net/snmp6", flags))
        return cls(tuple(fds))

    def _texts(self) -> tuple[str, ...] | None:
        if self._fds is None:
            return None
        try:
            return tuple(_read(fd) for fd in self._fds)
        except OSError:
            return None

    def tried(self) -> bool:
        """Did anything in the cell try to reach beyond its namespace since ``open``?"""
        now, base = self._texts(), self._base
        if now is None or base is None:
            return False
        return _attempts(now) > _attempts(base)

    def close(self) -> None:
        fds, self._fds = self._fds, None
        for fd in fds or ():
            os.close(fd)


def _attempts(texts: tuple[str, ...]) -> int:
    return attempts(parse_snmp(texts[0]), parse_snmp6(texts[1]) if len(texts) > 1 else {})


def _read(fd: int) -> str:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 65536, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks).decode("ascii", errors="replace")


def unallowed_hosts(records: Iterable[object]) -> tuple[str, ...]:
    """``host[:port]`` of the proxy's denials that no rule decided (an allow flag would help; an
    explicit deny rule wins over allow flags, so those are not offered), in order, once each."""
    import re

    plain = re.compile(_PLAIN_HOST)
    hosts: dict[str, None] = {}
    for record in records:
        if getattr(record, "action", None) != "deny" or getattr(record, "rule", None) != "no rule":
            continue
        host, port = getattr(record, "host", ""), getattr(record, "port", 0)
        # the cell chose the name: only a plain host name or address reaches the user's terminal
        if not isinstance(host, str) or not plain.fullmatch(host):
            continue
        if type(port) is not int or not 0 <= port < 65536:
            continue
        if _special_address(host):  # a host rule never reaches it (net/addresses.py): no flag
            continue
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, as --allow-host spells it with a port
        hosts[host if port in DEFAULT_PORTS or not port else f"{host}:{port}"] = None
    return tuple(hosts)


def _special_address(host: str) -> bool:
    """An IP literal that is not globally routable (the host's loopback, the LAN, the cloud
    metadata service): ``--allow-host`` would not reach it, so the hint must not offer it."""
    import ipaddress

    from nixcell.net.addresses import special_label

    try:
        addr = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return special_label(addr) is not None


class NoNetwork:
    """A failed command that tried the network: the hosts the policy lacked, if it had one."""

    __slots__ = ("hosts", "policy")

    def __init__(self, hosts: tuple[str, ...] = (), policy: bool = False) -> None:
        self.hosts = hosts
        self.policy = policy

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoNetwork) and (self.hosts, self.policy) == (
            other.hosts,
            other.policy,
        )

    def __repr__(self) -> str:
        return f"NoNetwork(hosts={self.hosts!r}, policy={self.policy!r})"

    def line(self, front: str = "cli", limit: int = 3) -> str:
        """The one line for the user; ``front`` "mcp" speaks of the server's config instead."""
        shown = self.hosts[:limit]
        more = f" and {len(self.hosts) - limit} more" if len(self.hosts) > limit else ""
        if shown and front == "mcp":
            return (
                f"the cell has no network access to {', '.join(shown)}{more}: add "
                f"{'it' if len(self.hosts) == 1 else 'them'} to the environment's allow_hosts "
                "in the server's config"
            )
        if shown:
            flags = " ".join(f"--allow-host {h}" for h in shown)
            return f"the cell has no network access to {', '.join(shown)}{more}; allow with {flags}"
        if self.policy:
            return (
                "a program in the cell tried to reach the network directly; the cell's only way "
                "out is its proxy (HTTPS_PROXY)"
            )
        if front == "mcp":
            return (
                'the cell has no network; give its environment one with allow_hosts = ["HOST"] '
                '(or policy = "FILE") in the server\'s config'
            )
        return "the cell has no network; allow a host with --allow-host HOST, or --policy FILE"


def detect(
    exit_code: int,
    probe: NetProbe | None,
    *,
    networked: bool = False,
    denied: Iterable[object] = (),
) -> NoNetwork | None:
    """What to tell the user of a command that ended with ``exit_code``: None when it succeeded
    or never tried the network. ``denied``: the proxy's denial records (with a network)."""
    if exit_code == 0:
        return None
    hosts = unallowed_hosts(denied)
    if hosts:
        return NoNetwork(hosts, policy=True)
    if probe is not None and probe.tried():
        return NoNetwork((), policy=networked)
    return None
