"""One request through the proxy: whether it may go, and relaying it (targets: net/target.py).

The path the policy checked is the path that is sent: requests go upstream with the normalised
path (net/urlpath.py), so an upstream that decodes differently cannot be steered around a rule.
Credentials are swapped here: dummy to real on the way out, only toward the credential's own
hosts (and over cleartext only with ``allow_plaintext``, net/credentials.py). The response comes
back through net/response.py, which scrubs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import h11

from nixcell.net.audit import Record
from nixcell.net.bodies import relay_body
from nixcell.net.credentials import PlaintextRefused
from nixcell.net.framing import FramingError
from nixcell.net.h11io import (
    Headers,
    PeerGone,
    Side,
    header,
    simple_response,
    strip_hop_by_hop,
)
from nixcell.net.hosts import parse_ip
from nixcell.net.response import relay_response
from nixcell.net.stream import Stream
from nixcell.net.target import DEFAULT_PORTS, Target, netloc

if TYPE_CHECKING:
    from nixcell.net.proxy import CellNet, Proxy

CONNECT_TIMEOUT = 30.0
MAX_DRAIN = 1 << 20  # body we read and drop to keep a connection after a denial
_FRAMING = (b"content-length", b"transfer-encoding")


def deny_text(record: Record, decision: object | None) -> str:
    """The short body of a 403: what was refused, by which rule, and how to allow it."""
    what = f"{record.method} {record.scheme}://{netloc(record.host, record.port)}{record.path}"
    if decision is None:
        return f"nixcell: denied {what}: {record.reason}\n"
    text = f"nixcell: {decision.explain()}"  # type: ignore[attr-defined]
    rule = getattr(decision, "rule", None)
    if rule is None:
        from nixcell.net.policy import Request

        req = Request(record.method, record.scheme, record.host, record.port, record.path)
        hint = decision.hint(req)  # type: ignore[attr-defined]
        text += f"; allow it with {hint}" if hint else ""
    return text + "\n"


async def _drain(side: Side) -> bool:
    """Read and drop the request body so the connection can carry on after a refusal."""
    if side.conn.client_is_waiting_for_100_continue:
        return False
    seen = 0
    while True:
        event = await side.next_event()
        if isinstance(event, h11.Data):
            seen += len(event.data)
            if seen > MAX_DRAIN:
                return False
        else:
            return isinstance(event, h11.EndOfMessage)


async def exchange(
    proxy: Proxy,
    cell: CellNet,
    side: Side,
    req: h11.Request,
    target: Target,
    upstreams: dict[tuple[str, str, int], Side],
) -> bool:
    """Check and relay one request; False when the client connection must close."""
    from nixcell.net.policy import Request

    started = time.monotonic()
    method = req.method.decode("ascii", errors="replace")
    record = Record(
        cell.cell_id, method, target.scheme, target.host, target.port, target.path, "-", "deny"
    )
    decision = None
    if target.error is None and cell.recorder is None:
        decision = cell.policy.decide(  # type: ignore[attr-defined]
            Request(method, target.scheme, target.host, target.port, target.path)
        )
        record.rule = "no rule" if decision.rule is None else decision.rule.describe()
    elif target.error is None:
        record.rule = "learn"
    if target.error is not None or (decision is not None and not decision.allowed):
        record.reason = target.error
        return await refuse(cell, side, record, decision, started)
    try:
        up = await _upstream(proxy, cell, target, upstreams)
    except _Refused as exc:
        record.reason = str(exc)
        return await refuse(cell, side, record, None, started)
    except _Failed as exc:
        record.action, record.status, record.reason = "error", 502, str(exc)
        cell.audit.write(record)
        await side.send(*simple_response(502, f"nixcell proxy: {exc}\n", close=True))
        return False
    record.action = "allow"
    credential = getattr(decision, "credential", None)
    try:
        keep = await _relay(cell, side, up, req, target, credential, record)
    except FramingError as exc:  # the cell's body (400) or the upstream's response (502)
        keep = False
        record.action = "deny" if exc.status < 500 else "error"
        record.status, record.reason = exc.status, f"malformed message: {exc}"
        if side.conn.our_state is h11.SEND_RESPONSE:  # nothing of a response sent yet
            with contextlib.suppress(PeerGone, h11.LocalProtocolError):
                text = f"nixcell proxy: {record.reason}\n"
                await side.send(*simple_response(exc.status, text, close=True))
    except (PeerGone, h11.ProtocolError) as exc:
        record.action, record.reason = "error", f"connection broke: {exc}"
        keep = False
    if not up.next_cycle():
        upstreams.pop((target.scheme, target.host, target.port), None)
        await up.close()
    record.bytes_up, record.bytes_down = up.bytes_out, up.bytes_in
    up.bytes_out = up.bytes_in = 0
    record.duration_ms = round((time.monotonic() - started) * 1000, 2)
    cell.audit.write(record)
    if cell.recorder is not None:
        cell.recorder.record(  # type: ignore[attr-defined]
            Request(method, target.scheme, target.host, target.port, target.path), record.status
        )
    return keep


async def refuse(
    cell: CellNet,
    side: Side,
    record: Record,
    decision: object | None,
    started: float,
    *,
    close: bool = False,
) -> bool:
    """Answer 403 with the explanation and audit it; True when the connection can go on."""
    body = deny_text(record, decision)
    record.status = 403
    record.reason = record.reason or body.strip()
    record.duration_ms = round((time.monotonic() - started) * 1000, 2)
    by_policy = decision is not None and not decision.allowed  # type: ignore[attr-defined]
    cell.audit.write(record, by_policy=by_policy)
    keep = False if close else await _drain(side)
    await side.send(*simple_response(403, body, close=not keep))
    return keep


class _Refused(Exception):
    """The resolved-address guard refused every address of the host."""


class _Failed(Exception):
    """The upstream could not be reached."""


async def _upstream(
    proxy: Proxy, cell: CellNet, target: Target, upstreams: dict[tuple[str, str, int], Side]
) -> Side:
    key = (target.scheme, target.host, target.port)
    existing = upstreams.get(key)
    if existing is not None and existing.quiet():
        return existing
    for other in list(upstreams):  # one upstream at a time per client connection
        await upstreams.pop(other).close()
    addresses = await _addresses(cell, target)
    ssl_ctx = None
    if target.scheme == "https":
        ssl_ctx = cell.upstream_ssl
        if ssl_ctx is None:
            from nixcell.net.tls import upstream_context

            ssl_ctx = cell.upstream_ssl = upstream_context()
    last: Exception | None = None
    for addr in addresses:
        try:
            hostname = target.host if ssl_ctx else None
            stream = await asyncio.wait_for(
                Stream.open(addr, target.port, ssl_ctx, hostname), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            last = exc
            continue
        side = Side(h11.CLIENT, stream)
        upstreams[key] = side
        return side
    raise _Failed(f"cannot reach {target.host}:{target.port}: {last}")


async def _addresses(cell: CellNet, target: Target) -> list[str]:
    pinned = cell.policy.resolve.get(target.host)  # type: ignore[attr-defined]
    if parse_ip(target.host) is not None:
        candidates = [target.host]
    elif pinned:
        candidates = list(pinned)
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(target.host, target.port, type=1)  # SOCK_STREAM
        except OSError as exc:
            raise _Failed(f"cannot resolve {target.host}: {exc.strerror or exc}") from None
        candidates = list(dict.fromkeys(info[4][0] for info in infos))
    allowed, reasons = [], []
    for text in candidates:
        addr = parse_ip(text.split("%")[0])
        if addr is None:
            continue
        guard = cell.policy.address_allowed  # type: ignore[attr-defined]
        ok, why = guard(addr, target.port, cell.own_addresses)
        (allowed if ok else reasons).append(str(addr) if ok else why)
    if not allowed:
        raise _Refused("; ".join(reasons) or f"no usable address for {target.host}")
    return allowed


async def _relay(
    cell: CellNet,
    side: Side,
    up: Side,
    req: h11.Request,
    target: Target,
    credential: str | None,
    record: Record,
) -> bool:
    creds = cell.credentials
    websocket = (header(req.headers, b"upgrade") or b"").lower() == b"websocket"
    headers = strip_hop_by_hop(list(req.headers), keep_upgrade=websocket)
    headers = [(k, v) for k, v in headers if k.lower() not in (b"host", b"expect")]
    headers.insert(0, (b"host", _host_header(target).encode()))
    body_rw = None
    path = target.url_path()
    if creds is not None:
        try:  # dummies -> reals in headers and ?access_token=<dummy> targets, injection
            headers, path, body_rw = creds.prepare_request(  # type: ignore[attr-defined]
                target.scheme, target.host, headers, path, credential
            )
        except PlaintextRefused as exc:
            return await _refuse_plaintext(side, record, str(exc))
        headers = credentialed_request_headers(headers)
    if websocket:
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    # Exactly one framing header, the one matching how the checked body is relayed: whatever
    # the cell sent (or a rewrite added) is dropped first. Swaps keep lengths: it stays true.
    headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
    assert side.head is not None  # every request head was checked (Side.next_event)
    headers += side.head.framing_header()
    await up.send(h11.Request(method=req.method, target=path, headers=headers))
    if side.conn.client_is_waiting_for_100_continue:
        await side.send(h11.InformationalResponse(status_code=100, headers=[]))
    try:
        await relay_body(side, up, body_rw, "request")
    except PlaintextRefused as exc:  # a dummy in a body bound for cleartext: the request is cut
        return await _refuse_plaintext(side, record, str(exc))
    return await relay_response(cell, side, up, target, record, websocket)


def credentialed_request_headers(headers: Headers) -> Headers:
    """Any request of a cell holding credentials asks for what the scrubber can read: an
    identity body (a coding it cannot decode is refused), no WebSocket compression, and whole
    bodies: with ``Range`` a cell could fetch a stored secret in pieces, none of them the secret
    the scrubber looks for."""
    drop = (b"accept-encoding", b"sec-websocket-extensions", b"range", b"if-range")
    return [(k, v) for k, v in headers if k.lower() not in drop] + [
        (b"accept-encoding", b"identity")
    ]


async def _refuse_plaintext(side: Side, record: Record, why: str) -> bool:
    """403 for a real credential that would travel over cleartext (the rest of the cell's body
    is read and dropped, bounded); audited by the caller."""
    record.action, record.status, record.reason = "deny", 403, why
    keep = await _drain(side)
    await side.send(*simple_response(403, f"nixcell: {why}\n", close=not keep))
    return keep


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = DEFAULT_PORTS[target.scheme]
    return host if target.port == default else f"{host}:{target.port}"
