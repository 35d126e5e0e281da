"""The host-side policy proxy: one asyncio server per nixcell process, any number of cells.

Each cell's listener is a socket inside that cell's network namespace (net/netns.py), so the
connection itself says which cell is talking: no proxy auth, nothing for the cell to forge. A
request is checked against the cell's policy before anything leaves the host, and again for every
request of a kept-alive, pipelined or tunnelled connection — never only at CONNECT. HTTPS is
intercepted with a leaf certificate from nixcell's CA; the upstream leg is verified TLS to the
host the policy allowed, at an address the resolved-address guard accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nixcell.net.audit import AuditLog, Record
from nixcell.net.stream import Server, Stream

# h11 and the request path load on the first connection: a cell that never connects (and
# every `-- true`) does not pay for them at start-up.

TYPE_CHECKING = False
if TYPE_CHECKING:
    import h11

    from nixcell.net.h11io import Side

    Upstreams = dict[tuple[str, str, int], Side]

log = logging.getLogger(__name__)
TLS_PORTS_REFUSED = frozenset({80})
MAX_CONNECTIONS = (
    1024  # open connections per cell  # CONNECT to a plain-HTTP port: use the proxy directly
)


@dataclass
class CellNet:
    """Everything the proxy knows about one cell."""

    cell_id: str
    policy: object  # net.policy.Policy
    audit: AuditLog
    upstream_ssl: ssl.SSLContext | None = None
    credentials: object | None = None  # net.credentials.CellCredentials
    recorder: object | None = None  # net.learn.Recorder (learn mode)
    own_addresses: frozenset = frozenset()
    connections: set[asyncio.Task] = field(default_factory=set)


class Proxy:
    """Serves cells until each one's ``stop`` is called; leaf certificates are shared."""

    def __init__(self) -> None:
        self._leaves = None

    def leaves(self):  # -> net.tls.LeafCache
        if self._leaves is None:
            from nixcell.net.tls import CertificateAuthority, LeafCache

            self._leaves = LeafCache(CertificateAuthority.load_or_create())
        return self._leaves

    async def serve(self, listener: socket.socket, cell: CellNet) -> Server:
        async def on_connect(stream: Stream) -> None:
            task = asyncio.current_task()
            assert task is not None
            if len(cell.connections) >= MAX_CONNECTIONS:  # a cell must not exhaust the host
                log.warning(
                    "cell %s: over %d open connections, refusing", cell.cell_id, MAX_CONNECTIONS
                )
                stream.close()
                return
            cell.connections.add(task)
            try:
                await self._client(cell, stream)
            except asyncio.CancelledError:
                # The cell is being torn down. Returning normally (not re-raising) keeps
                # asyncio's stream callback in 3.11 from logging a traceback per connection.
                pass
            except Exception:  # one broken connection must not end the proxy
                log.exception("proxy connection of cell %s failed", cell.cell_id)
            finally:
                cell.connections.discard(task)
                stream.close()

        return Server(listener, on_connect)

    async def stop(self, server: Server, cell: CellNet) -> None:
        """Stop accepting and cut every open connection of the cell."""
        server.close()
        for task in list(cell.connections):
            task.cancel()
        if cell.connections:
            await asyncio.gather(*cell.connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)

    # -- one connection from the cell ------------------------------------------------------
    async def _client(self, cell: CellNet, stream: Stream) -> None:
        import h11

        from nixcell.net.forward import exchange
        from nixcell.net.h11io import Side
        from nixcell.net.target import Target

        async def handle(req: h11.Request, upstreams: Upstreams) -> bool:
            if req.method == b"CONNECT":
                await self._connect(cell, side, req)
                return False
            target = Target.from_absolute(req.target)
            if target is None:
                await self._refuse(cell, side, req, 400, "not a proxy request")
                return True  # the refusal closes: next_cycle ends the connection
            target.check_host_header(req.headers)
            return await exchange(self, cell, side, req, target, upstreams)

        side = Side(h11.SERVER, stream)
        try:
            await _serve_requests(cell, side, handle, ("http", "-", 0))
        finally:
            await side.close()

    async def _refuse(
        self, cell: CellNet, side: Side, req: h11.Request, status: int, why: str
    ) -> None:
        import h11

        from nixcell.net.h11io import PeerGone, simple_response

        record = Record(
            cell.cell_id, req.method.decode(errors="replace"), "-", "-", 0,
            req.target.decode(errors="replace")[:200], "-", "deny", status, reason=why,
        )  # fmt: skip
        cell.audit.write(record)
        with contextlib.suppress(PeerGone, h11.LocalProtocolError):
            await side.send(*simple_response(status, f"nixcell proxy: {why}\n", close=True))

    async def _connect(self, cell: CellNet, side: Side, req: h11.Request) -> None:
        """CONNECT host:port: decide for the tunnel, then intercept TLS and check each request."""
        import h11

        from nixcell.net.forward import exchange
        from nixcell.net.h11io import Side
        from nixcell.net.hosts import BadHost, normalize_host
        from nixcell.net.target import Target, host_header_mismatch

        started = time.monotonic()
        raw = req.target.decode(errors="replace")
        try:
            host_part, _, port_part = raw.rpartition(":")
            host = normalize_host(host_part)
            port = int(port_part)
            if not 0 < port < 65536:
                raise ValueError
        except (BadHost, ValueError):
            await self._refuse(cell, side, req, 400, f"bad CONNECT target {raw!r}")
            return
        why = host_header_mismatch(req.headers, host, port)
        if why is not None:
            await self._refuse(cell, side, req, 400, f"CONNECT {raw!r}: {why}")
            return
        record = Record(cell.cell_id, "CONNECT", "https", host, port, "", "-", "deny")
        if cell.recorder is None:
            decision = cell.policy.decide_connect(host, port)  # type: ignore[attr-defined]
            record.rule = _rule_label(decision)
            if not decision.allowed:
                await self._deny(cell, side, record, decision, started, connect=True)
                return
        if port in TLS_PORTS_REFUSED:
            record.reason = f"CONNECT to port {port} is not TLS; send plain HTTP via the proxy"
            await self._deny(cell, side, record, None, started, connect=True)
            return
        await side.send(h11.Response(status_code=200, headers=[]))
        if side.conn.trailing_data[0]:
            return  # bytes before our 200: not a TLS client that waited for the tunnel
        context = self.leaves().server_context(host)
        if context.sni_callback is None:
            context.sni_callback = _record_sni
        try:
            await asyncio.wait_for(side.stream.start_tls(context, server_side=True), 30)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            log.info("cell %s: TLS handshake for %s failed: %s", cell.cell_id, host, exc)
            return
        sni = getattr(side.stream.ssl_object, "_nixcell_sni", None) or ""
        inner = Side(h11.SERVER, side.stream)

        async def handle(req: h11.Request, upstreams: Upstreams) -> bool:
            target = Target.in_tunnel(host, port, req, sni)
            return await exchange(self, cell, inner, req, target, upstreams)

        await _serve_requests(cell, inner, handle, ("https", host, port))

    async def _deny(
        self,
        cell: CellNet,
        side: Side,
        record: Record,
        decision: object | None,
        started: float,
        *,
        connect: bool,
    ) -> None:
        import h11

        from nixcell.net.forward import refuse
        from nixcell.net.h11io import PeerGone

        with contextlib.suppress(PeerGone, h11.LocalProtocolError):
            await refuse(cell, side, record, decision, started, close=connect)


async def _serve_requests(
    cell: CellNet,
    side: Side,
    handle: Callable[[h11.Request, Upstreams], Awaitable[bool]],
    where: tuple[str, str, int],
) -> None:
    """Read the cell's requests one after another (kept-alive, pipelined) and ``handle`` each,
    until a handler says stop or the connection cannot carry another; then close upstreams.
    Every head passes net/framing.py's checks in ``side.next_event`` before it is handled; a
    message that fails them is answered 400 (``where`` labels its audit line) and ends the
    connection, so no byte after it is read as a request."""
    import h11

    from nixcell.net.framing import FramingError
    from nixcell.net.h11io import PeerGone

    upstreams: Upstreams = {}
    try:
        while True:
            event = None
            try:
                event = await side.next_event()
                if not isinstance(event, h11.Request):
                    return
                if not await handle(event, upstreams) or not side.next_cycle():
                    return
            except FramingError as exc:
                req = event if isinstance(event, h11.Request) else None
                await _malformed(cell, side, exc, where, req)
                return
            except (PeerGone, h11.RemoteProtocolError):
                return
    finally:
        for up in upstreams.values():
            await up.close()


async def _malformed(
    cell: CellNet,
    side: Side,
    exc: Exception,
    where: tuple[str, str, int],
    req: h11.Request | None,
) -> None:
    """Answer a request refused for its framing (when no answer has started) and audit it."""
    import h11

    from nixcell.net.h11io import PeerGone, simple_response

    status = getattr(exc, "status", 400)
    reason = f"malformed request: {exc}"
    method = req.method.decode(errors="replace") if req is not None else "-"
    path = req.target.decode(errors="replace")[:200] if req is not None else "-"
    record = Record(cell.cell_id, method, *where, path, "-", "deny", status, reason=reason)
    cell.audit.write(record)
    if side.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
        with contextlib.suppress(PeerGone, h11.LocalProtocolError):
            await side.send(*simple_response(status, f"nixcell proxy: {reason}\n", close=True))


def _record_sni(ssl_object: object, server_name: str | None, _ctx: ssl.SSLContext) -> None:
    """Remember the SNI the cell sent, to compare it with the CONNECT host."""
    with contextlib.suppress(AttributeError):
        ssl_object._nixcell_sni = server_name or ""  # type: ignore[attr-defined]


def _rule_label(decision: object | None) -> str:
    rule = getattr(decision, "rule", None)
    if rule is None:
        return "no rule"
    return f"rule {rule.index} ({rule.origin})"


_shared: Proxy | None = None


def shared_proxy() -> Proxy:
    """The process's proxy (one per nixcell process, DESIGN.md §4)."""
    global _shared
    if _shared is None:
        _shared = Proxy()
    return _shared
