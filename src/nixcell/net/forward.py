"""One request through the proxy: whether it may go, and relaying it (targets: net/target.py).

The path the policy checked is the path that is sent: requests go upstream with the normalised
path (net/urlpath.py), so an upstream that decodes differently cannot be steered around a rule.
Credentials are swapped here — dummy to real on the way out, real to dummy on the way back —
only for the credential's own hosts (net/credentials.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import h11

from nixcell.net.audit import Record
from nixcell.net.bodies import (
    DIRECT_BODY,
    content_length,
    direct_body,
    fail,
    relay_body,
    token_response,
)
from nixcell.net.decode import UndecodableEncoding, decoder_for, without_encoding
from nixcell.net.framing import FramingError
from nixcell.net.h11io import (
    PeerGone,
    Side,
    header,
    pipe,
    simple_response,
    strip_hop_by_hop,
)
from nixcell.net.hosts import parse_ip
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
    cell.audit.write(record)
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
    if creds is not None:
        headers = creds.rewrite_request_headers(target.host, headers)  # type: ignore[attr-defined]
        if credential:
            inject = creds.inject_for  # type: ignore[attr-defined]
            headers = inject(target.host, headers, credential)
        if creds.applies_to(target.host):  # type: ignore[attr-defined]
            headers = [(k, v) for k, v in headers if k.lower() != b"accept-encoding"]
            headers.append((b"accept-encoding", b"identity"))  # so scrubbing sees plain bytes
        body_rw = creds.request_body_rewriter(target.host)  # type: ignore[attr-defined]
    if websocket:
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
    # Exactly one framing header, the one matching how the checked body is relayed: whatever
    # the cell sent (or a rewrite added) is dropped first.
    headers = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
    assert side.head is not None  # every request head was checked (Side.next_event)
    headers += side.head.framing_header()
    path = target.url_path()
    if creds is not None:  # ?access_token=<dummy> style APIs
        path = creds.rewrite_request_target(target.host, path)  # type: ignore[attr-defined]
    await up.send(h11.Request(method=req.method, target=path, headers=headers))
    if side.conn.client_is_waiting_for_100_continue:
        await side.send(h11.InformationalResponse(status_code=100, headers=[]))
    await relay_body(side, up, body_rw, "request")
    return await _response(cell, side, up, target, record, websocket)


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = DEFAULT_PORTS[target.scheme]
    return host if target.port == default else f"{host}:{target.port}"


async def _response(
    cell: CellNet, side: Side, up: Side, target: Target, record: Record, websocket: bool
) -> bool:
    creds = cell.credentials
    while True:
        event = await up.next_event()
        if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            continue  # 100/103 from upstream: ours (if any) was already sent
        break
    if not isinstance(event, (h11.Response, h11.InformationalResponse)):
        raise PeerGone("no response from upstream")
    record.status = event.status_code
    headers = strip_hop_by_hop(list(event.headers), keep_upgrade=websocket)
    if creds is not None:
        headers = creds.scrub_headers(headers)  # type: ignore[attr-defined]
    if event.status_code == 101 and websocket:
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        await side.send(h11.InformationalResponse(status_code=101, headers=headers))
        await _switch(side, up)
        return False
    decoder = None
    if creds is not None and creds.applies_to(target.host):  # type: ignore[attr-defined]
        try:
            decoder = decoder_for(headers)
        except UndecodableEncoding as exc:
            why = f"{target.host} sent a {exc}-encoded response, which nixcell cannot inspect"
            return await fail(side, record, f"{why} for credentials")
        if decoder is not None:
            headers = without_encoding(headers)
    ctype = (header(headers, b"content-type") or b"").decode("latin-1").lower()
    if creds is not None and creds.wants_token_response(target.host, ctype):  # type: ignore[attr-defined]
        return await token_response(creds, side, up, target, record, headers, ctype, decoder)
    await side.send(h11.Response(status_code=event.status_code, headers=headers))
    scrub = creds.response_scrubber() if creds is not None else None  # type: ignore[attr-defined]
    length = content_length(event.headers)
    if scrub is None and length is not None and length >= DIRECT_BODY:
        await direct_body(up, side, length)
    else:
        await relay_body(up, side, scrub, "response", decoder)
    return side.reusable()


async def _switch(side: Side, up: Side) -> None:
    """After a 101: relay raw bytes both ways until either side closes."""
    client_extra, _ = side.conn.trailing_data
    up_extra, _ = up.conn.trailing_data
    with contextlib.suppress(Exception):
        up.stream.write(client_extra)
        side.stream.write(up_extra)
        await asyncio.gather(pipe(side.stream, up.stream), pipe(up.stream, side.stream))
