"""One request through the proxy: where it goes, whether it may, and relaying it.

The path the policy checked is the path that is sent: requests go upstream with the normalised
path (net/urlpath.py), so an upstream that decodes differently cannot be steered around a rule.
Credentials are swapped here — dummy to real on the way out, real to dummy on the way back —
only for the credential's own hosts (net/credentials.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import h11

from nixcell.net.audit import Record
from nixcell.net.h11io import (
    STREAM_LIMIT,
    PeerGone,
    Side,
    header,
    pipe,
    simple_response,
    strip_hop_by_hop,
)
from nixcell.net.hosts import BadHost, normalize_host, parse_ip
from nixcell.net.urlpath import normalize_path

if TYPE_CHECKING:
    from nixcell.net.proxy import CellNet, Proxy

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CONNECT_TIMEOUT = 30.0
MAX_DRAIN = 1 << 20  # body we read and drop to keep a connection after a denial
MAX_TOKEN_BODY = 4 << 20  # credential-host JSON/form responses read whole to map OAuth tokens


@dataclass
class Target:
    scheme: str
    host: str
    port: int
    path: str
    query: str = ""
    error: str | None = None  # set when the request must be refused before any policy

    @classmethod
    def from_absolute(cls, raw: bytes) -> Target | None:
        """``GET http://host/path`` sent to the proxy; None for origin-form targets."""
        text = raw.decode("ascii", errors="replace")
        if text.startswith("/") or "://" not in text:
            return None
        try:
            parts = urlsplit(text)
        except ValueError:
            return cls("http", "-", 0, text[:200], error="unparsable URL")
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            return cls(scheme or "-", "-", 0, text[:200], error=f"scheme {scheme!r} not proxied")
        scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        return cls._build(scheme, parts.netloc, parts.path, parts.query)

    @classmethod
    def _build(cls, scheme: str, netloc: str, path: str, query: str) -> Target:
        if "@" in netloc:
            return cls(scheme, "-", 0, path, error="credentials in the URL authority")
        host_text, port = _split_netloc(netloc, DEFAULT_PORTS[scheme])
        try:
            host = normalize_host(host_text)
        except BadHost as exc:
            return cls(scheme, host_text[:100] or "-", port or 0, path, error=str(exc))
        if port is None:
            return cls(scheme, host, 0, path, error="bad port")
        try:
            norm = normalize_path(path or "/")
        except ValueError as exc:
            return cls(scheme, host, port, path[:200], error=f"bad path: {exc}")
        return cls(scheme, host, port, norm, query)

    @classmethod
    def in_tunnel(cls, host: str, port: int, req: h11.Request, sni: str) -> Target:
        """A request inside a CONNECT tunnel: it may only address the tunnel's own host."""
        text = req.target.decode("ascii", errors="replace")
        if text.startswith("/") or text == "*":
            path, _, query = text.partition("?")
            target = cls._build("https", _netloc(host, port), path.split("#")[0], query)
        else:
            target = cls.from_absolute(req.target) or cls(
                "https", host, port, text[:200], error="bad request target"
            )
            target.scheme = "https"
        if target.error:
            return target
        if (target.host, target.port) != (host, port):
            target.error = f"request for {target.host}:{target.port} inside a tunnel to {host}"
            return target
        host_header = header(req.headers, b"host")
        if host_header is not None:
            h_text, h_port = _split_netloc(host_header.decode("ascii", "replace"), port)
            try:
                same = (normalize_host(h_text), h_port) == (host, port)
            except BadHost:
                same = False
            if not same:
                target.error = f"Host header {host_header.decode(errors='replace')!r} ≠ {host}"
                return target
        if sni:
            try:
                sni_ok = normalize_host(sni) == host
            except BadHost:
                sni_ok = False
            if not sni_ok:
                target.error = f"TLS server name {sni!r} ≠ tunnel host {host}"
        return target

    def url_path(self) -> bytes:
        return (self.path + (f"?{self.query}" if self.query else "")).encode()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_netloc(netloc: str, default: int) -> tuple[str, int | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        host, rest = netloc[1:end], netloc[end + 1 :]
    else:
        host, sep, port_text = netloc.rpartition(":")
        if not sep:
            return netloc, default
        rest = ":" + port_text
    if not rest:
        return host, default
    digits = rest[1:]
    if not rest.startswith(":") or not digits.isdigit() or not 0 < int(digits) < 65536:
        return host, None
    return host, int(digits)


def deny_text(record: Record, decision: object | None) -> str:
    """The short body of a 403: what was refused, by which rule, and how to allow it."""
    what = f"{record.method} {record.scheme}://{_netloc(record.host, record.port)}{record.path}"
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
    if existing is not None and existing.conn.our_state is h11.IDLE:
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
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    addr,
                    target.port,
                    ssl=ssl_ctx,
                    server_hostname=target.host if ssl_ctx else None,
                    limit=STREAM_LIMIT,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            last = exc
            continue
        side = Side(h11.CLIENT, reader, writer)
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
    path = target.url_path()
    if creds is not None:  # ?access_token=<dummy> style APIs
        path = creds.rewrite_request_target(target.host, path)  # type: ignore[attr-defined]
    await up.send(h11.Request(method=req.method, target=path, headers=headers))
    if side.conn.client_is_waiting_for_100_continue:
        await side.send(h11.InformationalResponse(status_code=100, headers=[]))
    await _body(side, up, body_rw, "request")
    return await _response(cell, side, up, target, record, websocket)


async def _body(src: Side, dst: Side, rewriter: object | None, what: str) -> None:
    """Relay one message body, through a same-length ``rewriter`` (credentials) if any."""
    while True:
        event = await src.next_event()
        if isinstance(event, h11.Data):
            data = rewriter.feed(event.data) if rewriter else event.data  # type: ignore[attr-defined]
            if data:
                await dst.send(h11.Data(data=data))
        elif isinstance(event, h11.EndOfMessage):
            tail = rewriter.flush() if rewriter else b""  # type: ignore[attr-defined]
            await dst.send(*([h11.Data(data=tail)] if tail else []), h11.EndOfMessage())
            return
        else:
            raise PeerGone(f"{what} body ended early")


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
    ctype = (header(headers, b"content-type") or b"").decode("latin-1").lower()
    if creds is not None and creds.wants_token_response(target.host, ctype):  # type: ignore[attr-defined]
        return await _token_response(creds, side, up, target, event.status_code, headers, ctype)
    await side.send(h11.Response(status_code=event.status_code, headers=headers))
    scrub = creds.response_scrubber() if creds is not None else None  # type: ignore[attr-defined]
    await _body(up, side, scrub, "response")
    return side.reusable()


async def _token_response(
    creds: object, side: Side, up: Side, target: Target, status: int, headers: list, ctype: str
) -> bool:
    """A credential host's JSON/form response: read it whole (any framing, up to a cap), map
    issued OAuth tokens to dummies, then send. Too big or unmappable: 502, never the raw body."""
    from nixcell.errors import CredentialError

    body = bytearray()
    while True:
        event = await up.next_event()
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_TOKEN_BODY:
                await side.send(
                    *simple_response(502, "nixcell proxy: token response too large\n", close=True)
                )
                return False
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            raise PeerGone("response ended early")
    try:
        mapped = creds.observe_token_response(target.host, bytes(body), ctype)  # type: ignore[attr-defined]
    except CredentialError as exc:
        await side.send(*simple_response(502, f"nixcell proxy: {exc}\n", close=True))
        return False
    scrubber = creds.response_scrubber()  # type: ignore[attr-defined]
    data = scrubber.feed(mapped) + scrubber.flush()
    framed = [
        (k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")
    ]
    framed.append((b"content-length", str(len(data)).encode()))
    await side.send(h11.Response(status_code=status, headers=framed))
    await side.send(*([h11.Data(data=data)] if data else []), h11.EndOfMessage())
    return side.reusable()


async def _switch(side: Side, up: Side) -> None:
    """After a 101: relay raw bytes both ways until either side closes."""
    client_extra, _ = side.conn.trailing_data
    up_extra, _ = up.conn.trailing_data
    if client_extra:
        up.writer.write(client_extra)
    if up_extra:
        side.writer.write(up_extra)
    with contextlib.suppress(Exception):
        await asyncio.gather(pipe(side.reader, up.writer), pipe(up.reader, side.writer))
