"""Relaying message bodies: through h11, past it for long downloads, decoded for credentialed
cells, and whole for OAuth token responses (net/forward.py decides which). Trailers are never
passed on: what a server puts there could carry a secret past the body's scrubber."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import h11

from nixcell.net.audit import Record
from nixcell.net.decode import AnyDecoder, BadEncodedBody
from nixcell.net.h11io import Headers, PeerGone, Side, header, simple_response
from nixcell.net.payloads import Inspector
from nixcell.net.target import Target

DIRECT_BODY = 1 << 20  # response bodies this long skip h11's receive buffer
MAX_TOKEN_BODY = 4 << 20  # credential-host JSON/form-shaped responses read whole to map tokens


async def fail(side: Side, record: Record, why: str) -> bool:
    """Answer 502 instead of a response the proxy will not pass on; the connection closes."""
    record.action, record.status, record.reason = "error", 502, why
    await side.send(*simple_response(502, f"nixcell proxy: {why}\n", close=True))
    return False


async def relay_body(
    src: Side,
    dst: Side,
    rewriter: object | None,
    what: str,
    decoder: AnyDecoder | None = None,
    inspector: Inspector | None = None,
) -> None:
    """Relay one message body: decoded first when ``decoder`` is given (the framing is then
    redone by h11), through a same-length ``rewriter`` (credentials) if any, and held back by
    ``inspector`` while a compressed payload in it is looked into (payloads.py)."""

    async def out(pieces: list[bytes]) -> None:
        for data in pieces:
            if data:
                await dst.send(h11.Data(data=data))

    def passed(data: bytes) -> list[bytes]:
        return inspector.feed(data) if inspector is not None else [data]

    try:
        while True:
            event = await src.next_event()
            if isinstance(event, h11.Data):
                for piece in decoder.feed(event.data) if decoder else (event.data,):
                    data = rewriter.feed(piece) if rewriter else piece  # type: ignore[attr-defined]
                    await out(passed(data))
            elif isinstance(event, h11.EndOfMessage):  # its trailers are dropped
                for piece in decoder.finish() if decoder else ():
                    data = rewriter.feed(piece) if rewriter else piece  # type: ignore[attr-defined]
                    await out(passed(data))
                tail = rewriter.flush() if rewriter is not None else b""  # type: ignore[attr-defined]
                await out(passed(tail))
                await out(inspector.finish() if inspector is not None else [])
                await dst.send(h11.EndOfMessage())
                return
            else:
                raise PeerGone(f"{what} body ended early")
    except BadEncodedBody as exc:
        raise PeerGone(str(exc)) from None


def content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    if header(headers, b"transfer-encoding") is not None:
        return None
    value = header(headers, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def direct_body(up: Side, side: Side, length: int) -> None:
    """Relay a long Content-Length response body past h11's receive buffer (three copies of
    every byte). h11 then never sees the body's end, so the upstream connection is closed after
    it instead of being reused: one new connection on a later request, against ≥ 1 MiB."""
    while (event := up.conn.next_event()) is not h11.NEED_DATA:  # what h11 already holds
        if isinstance(event, h11.EndOfMessage):
            await side.send(event)
            return
        if not isinstance(event, h11.Data):
            raise PeerGone("response body ended early")
        length -= len(event.data)
        await side.send(event)
    while length > 0:
        data = await up.read_raw()
        if not data:
            raise PeerGone("response body ended early")
        data = data[:length]  # bytes past the body are dropped with the connection
        length -= len(data)
        await side.send(h11.Data(data=data))
    await side.send(h11.EndOfMessage())


async def token_response(
    creds: object,
    side: Side,
    up: Side,
    target: Target,
    record: Record,
    headers: Headers,
    ctype: str,
    decoder: AnyDecoder | None,
) -> bool:
    """A credential host's response: held (decoded when compressed) until its start shows it
    is neither JSON nor ``key=value`` text, then streamed scrubbed; else read whole (up to a
    cap), every token it issues mapped to a dummy (net/issued.py), then sent. Whatever the
    media type says: a server picks it, not the cell. Too big while JSON/form-shaped,
    undecodable, unparsable yet token-shaped, past the cell's token cap: 502, never the body."""
    from nixcell.errors import CredentialError
    from nixcell.net.issued import shape

    body = bytearray()
    try:
        while True:
            event = await up.next_event()
            if isinstance(event, h11.Data):
                pieces, ended = iter(decoder.feed(event.data) if decoder else (event.data,)), False
            elif isinstance(event, h11.EndOfMessage):
                pieces, ended = iter(decoder.finish() if decoder else ()), True
            else:
                raise PeerGone("response ended early")
            for piece in pieces:  # what is left in ``pieces`` past the cap is streamed
                body += piece
                if len(body) > MAX_TOKEN_BODY:
                    break
            over, kind = len(body) > MAX_TOKEN_BODY, shape(bytes(body[:4096]))
            if over and kind != "other":
                why = f"token response too large (over the {MAX_TOKEN_BODY >> 20} MiB cap)"
                return await fail(side, record, why)
            if over or (kind == "other" and not ended):
                rest = itertools.chain((bytes(body),), pieces)
                return await _stream_rest(creds, side, up, record, headers, rest, ended, decoder)
            if ended:
                break
    except BadEncodedBody as exc:
        return await fail(side, record, str(exc))
    try:
        tokens = creds.issue_tokens(target.host, bytes(body))  # type: ignore[attr-defined]
        await creds.settle()  # type: ignore[attr-defined]
        data = creds.hide_tokens(target.host, bytes(body), tokens)  # type: ignore[attr-defined]
    except CredentialError as exc:
        return await fail(side, record, str(exc))
    framed = [
        (k, v) for k, v in headers if k.lower() not in (b"content-length", b"transfer-encoding")
    ]
    framed.append((b"content-length", str(len(data)).encode()))
    await side.send(h11.Response(status_code=record.status, headers=framed))
    await side.send(*([h11.Data(data=data)] if data else []), h11.EndOfMessage())
    return side.reusable()


async def _stream_rest(
    creds: object,
    side: Side,
    up: Side,
    record: Record,
    headers: Headers,
    pieces: Iterator[bytes],
    ended: bool,
    decoder: AnyDecoder | None,
) -> bool:
    """Not JSON or form after all: what was held, the rest of the decoded event, then the
    rest of the body, through the scrubber."""
    await creds.settle()  # type: ignore[attr-defined]
    scrubber = creds.response_scrubber()  # type: ignore[attr-defined]
    await side.send(h11.Response(status_code=record.status, headers=headers))
    try:
        for piece in pieces:
            data = scrubber.feed(piece)
            if data:
                await side.send(h11.Data(data=data))
    except BadEncodedBody as exc:
        raise PeerGone(str(exc)) from None
    if not ended:
        await relay_body(up, side, scrubber, "response", decoder)
        return side.reusable()
    tail = scrubber.flush()
    await side.send(*([h11.Data(data=tail)] if tail else []), h11.EndOfMessage())
    return side.reusable()
