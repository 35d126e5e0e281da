"""Who is calling: unix peers by SO_PEERCRED, TCP callers by bearer token or web session.

uvicorn does not put a connection's peer credentials in the ASGI scope, so ``PeerProtocol``
(uvicorn's h11 protocol, one instance per connection) reads them from the accepted socket once,
when the connection is made, and hands every request of that connection (WebSocket upgrades
included) a scope with ``scope["nixcell.peer"]`` set. Nothing a client sends can set it.
"""

from __future__ import annotations

import grp
import hashlib
import hmac
import ipaddress
import logging
import pwd
import secrets
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from nixcell.jobs.model import Caller

PEER = "nixcell.peer"  # the scope key
COOKIE = "nixcell_session"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
log = logging.getLogger("nixcell.jobs.api")


@dataclass(frozen=True)
class Peer:
    """The connection a request came on: a unix peer's uid, or the TCP address it reached."""

    family: str  # "unix" | "tcp"
    uid: int | None = None
    gid: int | None = None
    local: tuple[str, int] | None = None  # TCP: the listener's address the client connected to


def peer_of(sock: Any) -> Peer:
    """Read the peer of an accepted socket (the kernel's answer, not the client's)."""
    if sock is not None and sock.family == socket.AF_UNIX:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", raw)
        return Peer("unix", uid=uid, gid=gid)
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        return Peer("tcp", local=(host, port))
    return Peer("none")  # never authenticated


def _with_peer(app: Any, peer: Peer) -> Any:
    async def wrapped(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, PEER: peer}
        await app(scope, receive, send)

    return wrapped


class Admission:
    """Open connections per peer, and in all, bounded (review finding: one local user opening
    20 000 idle or streaming connections used the daemon's every file descriptor, so nobody
    else was answered and jobs could not open their files).

    The peer is known when a connection is made only on the unix socket (its uid); TCP callers
    are known per request, so all TCP connections share one key. Root's connections count only
    towards the total. The total stays well below ``RLIMIT_NOFILE``: the rest is for the jobs'
    own files, pipes and cells. Everything runs on the event loop's thread."""

    PER_PEER = 256

    def __init__(self, per_peer: int | None = None, total: int | None = None) -> None:
        self.per_peer = per_peer if per_peer is not None else self.PER_PEER
        self.total = total if total is not None else _total_connections()
        self.open: dict[str, int] = {}
        self.refusing: set[str] = set()  # keys at their cap (logged once per spell)

    def admit(self, key: str) -> Callable[[], None] | None:
        """A release callback (idempotent), or None when the connection must be refused."""
        in_all = sum(self.open.values())
        mine = self.open.get(key, 0)
        if in_all >= self.total or (key != "uid:0" and mine >= self.per_peer):
            if key not in self.refusing:
                self.refusing.add(key)
                log.warning(
                    "too many connections (%s has %d, %d in all): refusing", key, mine, in_all
                )
            return None
        self.refusing.discard(key)
        self.open[key] = mine + 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            left = self.open.get(key, 1) - 1
            if left > 0:
                self.open[key] = left
            else:
                self.open.pop(key, None)

        return release


def _total_connections() -> int:
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 1 << 16
    return max(16, min(8192, soft // 2))


ADMISSION: Admission | None = None  # one per daemon process, made at the first connection
_BUSY = b'{"error":"too many connections"}'
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_BUSY)).encode() + b"\r\nconnection: close\r\n\r\n" + _BUSY
)


def admission() -> Admission:
    global ADMISSION
    if ADMISSION is None:
        ADMISSION = Admission()
    return ADMISSION


def _peer_key(peer: Peer) -> str:
    return f"uid:{peer.uid}" if peer.family == "unix" else peer.family


class PeerProtocol(H11Protocol):
    """uvicorn's h11 protocol that knows its connection's peer (see the module docstring), and
    refuses a connection past ``Admission``'s bounds with one 503 before reading anything."""

    _release: Callable[[], None] | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        peer = peer_of(transport.get_extra_info("socket"))
        release = admission().admit(_peer_key(peer))
        if release is None:
            transport.write(_BUSY_RESPONSE)
            transport.close()
            return
        self._release = release
        super().connection_made(transport)
        self.app = _with_peer(self.app, peer)
        ws_class = self.ws_protocol_class
        if ws_class is not None:

            def make_ws(**kwargs: Any) -> Any:
                proto = ws_class(**kwargs)
                proto.app = _with_peer(proto.app, peer)
                lost = proto.connection_lost

                def connection_lost(exc: Exception | None) -> None:  # the upgraded connection's end
                    release()
                    lost(exc)

                proto.connection_lost = connection_lost
                return proto

            self.ws_protocol_class = make_ws  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._release is None:  # refused in connection_made: nothing of uvicorn's was set up
            return
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._release is None:
            return
        super().data_received(data)

    def eof_received(self) -> None:
        if self._release is None:
            return
        super().eof_received()


def unix_caller(uid: int, gid: int | None, admin_group: str | None) -> Caller:
    """``uid:N``, named from pwd; admin = root or a member of ``admin_group``."""
    try:
        entry = pwd.getpwuid(uid)
        name, primary = entry.pw_name, entry.pw_gid
    except KeyError:
        name, primary = str(uid), gid
    admin = uid == 0
    if not admin and admin_group:
        try:
            group = grp.getgrnam(admin_group)
        except KeyError:
            group = None
        if group is not None:
            groups = set(_groups(name, primary)) if name != str(uid) else {primary}
            admin = group.gr_gid in groups or name in group.gr_mem
    return Caller(key=f"uid:{uid}", name=name, admin=admin)


def _groups(name: str, primary: int | None) -> list[int]:
    import os

    try:
        return os.getgrouplist(name, primary if primary is not None else -1)
    except OSError:
        return [primary] if primary is not None else []


def token_caller(config: Any, presented: str) -> Caller | None:
    """The caller of a bearer token (``ServerConfig.token``: every hash compared in constant
    time, no early exit)."""
    found = config.token(presented) if hasattr(config, "token") else None
    if found is None:
        return None
    return Caller(key=f"token:{found.name}", name=f"token {found.name}", admin=bool(found.admin))


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Sessions:
    """Web logins: random cookie values mapped to the *hash* of the token that signed in, in
    memory (a restart logs out). The caller is worked out again from the current config on
    every request, so a SIGHUP that removes, rotates or demotes a token takes its sessions with
    it (a cookie is never worth more than its token is now)."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._by_cookie: dict[str, tuple[str, str]] = {}  # cookie -> (token digest, proof)
        self.proof_of_last = ""  # the proof of the session ``create`` made last

    def create(self, caller: Caller, *, token: str) -> str:
        """A new session's cookie value; its proof is then ``proof_of_last`` (same thread)."""
        del caller  # who it is is asked of the config at each request
        if len(self._by_cookie) >= self.LIMIT:  # bounded: drop the oldest
            self._by_cookie.pop(next(iter(self._by_cookie)))
        value = secrets.token_urlsafe(32)
        self.proof_of_last = secrets.token_urlsafe(32)
        self._by_cookie[value] = (_digest(token), self.proof_of_last)
        return value

    def get(self, value: str | None, config: Any = None, proof: str | None = None) -> Caller | None:
        """The caller of cookie ``value`` shown with its ``proof`` (both, or nobody): the cookie
        travels to every port of the host, the proof only from this origin's script."""
        entry = self._by_cookie.get(value) if value else None
        if entry is None or not proof:
            return None
        digest, expected = entry
        if not hmac.compare_digest(proof.encode(), expected.encode()):
            return None
        found = None
        for token in getattr(config, "tokens", ()):
            if hmac.compare_digest(str(token.hash), digest) and found is None:
                found = token
        if found is None:  # revoked or rotated since the login: signed out for good
            self._by_cookie.pop(value, None)  # type: ignore[arg-type]
            return None
        return Caller(
            key=f"token:{found.name}", name=f"token {found.name}", admin=bool(found.admin)
        )


def _digest(token: str) -> str:
    """The ``[[tokens]]`` spelling of a token's hash (``config.Token.verify``'s)."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def allowed_hosts(local: tuple[str, int], listen: Any = ()) -> frozenset[str]:
    """Host header values a TCP listener answers (DNS rebinding): its own address, the name it
    was configured with (``listen``'s ``HOST:PORT`` of the same port), and the localhost names
    when it is on loopback."""
    host, port = local
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    shown = f"[{host}]" if address is not None and address.version == 6 else host
    names = {shown}
    if address is not None and address.is_loopback:
        names.update(_LOOPBACK_NAMES)
    for spec in listen or ():
        name, sep, text = str(spec).rpartition(":")
        if sep and not str(spec).startswith("unix:") and text == str(port) and name:
            names.add(name)
    return frozenset(f"{name}:{port}".lower() for name in names)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
