"""The upstream's response relayed back to the cell (the request side is net/forward.py).

A cell holding any credential gets every response from every host scrubbed of every spelling of
every real value: headers, bodies decoded first (net/decode.py), whole token responses
(net/bodies.py), WebSocket frames after a 101 (net/websocket.py). What cannot be read or
inspected is refused with a 502, never relayed unscrubbed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
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
from nixcell.net.h11io import (
    HOP_BY_HOP,
    PeerGone,
    Side,
    connection_names,
    header,
    pipe,
    strip_hop_by_hop,
)
from nixcell.net.payloads import Inspector
from nixcell.net.target import Target
from nixcell.net.websocket import cell_frames, relay_frames, server_frames

if TYPE_CHECKING:
    from nixcell.net.proxy import CellNet


async def relay_response(
    cell: CellNet, side: Side, up: Side, target: Target, record: Record, websocket: bool
) -> bool:
    """Relay the response. A cell holding any credential gets every response from every host
    scrubbed of every spelling of every real value (an allowed host may republish what a
    credential host stored): headers and bodies decoded first, what cannot be decoded or read
    refused (502), trailers dropped, WebSocket frames after a 101 scrubbed too."""
    creds = cell.credentials
    redact = cell.audit.redact

    async def refuse_response(why: str) -> bool:
        return await fail(side, record, redact(why))  # never an upstream's bytes, unscrubbed

    try:
        while True:
            event = await up.next_event()
            if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
                continue  # 100/103 from upstream: ours (if any) was already sent
            break
    except h11.RemoteProtocolError:  # e.g. Transfer-Encoding other than chunked
        return await refuse_response(f"{target.host} sent a response nixcell cannot read")
    if not isinstance(event, (h11.Response, h11.InformationalResponse)):
        raise PeerGone("no response from upstream")
    record.status = event.status_code
    if has_header(event.headers, b"transfer-encoding") and has_header(
        event.headers, b"content-length"
    ):
        return await refuse_response(
            f"{target.host} sent a response with both Content-Length and Transfer-Encoding"
        )
    if creds is not None:
        # An upstream's Connection may name any header, and naming one drops it here: named
        # Content-Encoding or Content-Type would hide that the body is compressed, or a token
        # response, from the decoder and the token mapping. Only true hop-by-hop names pass.
        hidden = connection_names(list(event.headers)) - HOP_BY_HOP - {b"close", b""}
        if hidden:
            names = ", ".join(sorted(n.decode("latin-1") for n in hidden))[:200]
            return await refuse_response(
                f"{target.host} named end-to-end headers in Connection ({names})"
            )
    headers = strip_hop_by_hop(list(event.headers), keep_upgrade=websocket)
    if creds is not None:
        await creds.settle()  # tokens issued meanwhile: compiled off the loop, then scrubbed
        headers = creds.scrub_headers(headers)  # type: ignore[attr-defined]
    if event.status_code == 101 and websocket:
        if creds is not None and has_header(headers, b"sec-websocket-extensions"):
            why = f"{target.host} negotiated a WebSocket extension nixcell did not offer"
            return await refuse_response(why)
        headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        await side.send(h11.InformationalResponse(status_code=101, headers=headers))
        await _switch(side, up, creds, target)
        return False
    decoder = None
    bodiless = record.method == "HEAD" or event.status_code in (204, 304)
    if creds is not None and not bodiless:
        try:
            decoder = decoder_for(headers)
        except UndecodableEncoding as exc:
            why = f"{target.host} sent a {exc}-encoded response, which nixcell cannot inspect"
            return await refuse_response(f"{why} for credentials")
        if decoder is not None:
            headers = without_encoding(headers)
    ctype = (header(headers, b"content-type") or b"").decode("latin-1").lower()
    wants = creds is not None and not bodiless and creds.wants_token_response(target.host, ctype)  # type: ignore[attr-defined]
    if wants:
        return await token_response(creds, side, up, target, record, headers, ctype, decoder)
    await side.send(h11.Response(status_code=event.status_code, headers=headers))
    scrub = creds.response_scrubber() if creds is not None else None  # type: ignore[attr-defined]
    length = content_length(event.headers)
    if scrub is None and length is not None and length >= DIRECT_BODY:
        await direct_body(up, side, length)
    else:
        inspector = None
        if creds is not None:  # archives and .gz files are looked into (payloads.py)
            spelled = creds.spellings()  # type: ignore[attr-defined]
            inspector = Inspector(spelled.found, spelled.width)
        await relay_body(up, side, scrub, "response", decoder, inspector)
    return side.reusable()


def has_header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bool:
    return any(key.lower() == name for key, _ in headers)


async def _switch(side: Side, up: Side, creds: object | None, target: Target) -> None:
    """After a 101: relay bytes both ways until either side closes. For a credentialed cell
    the frames are parsed (net/websocket.py): the server's scrubbed, the cell's with dummies
    swapped toward the credential's hosts (else sent as they are: they hold dummies only)."""
    client_extra, _ = side.conn.trailing_data
    up_extra, _ = up.conn.trailing_data
    upward = cell_frames(creds, target.scheme, target.host) if creds is not None else None

    async def down() -> None:
        if creds is None:
            side.stream.write(up_extra)
            await pipe(up.stream, side.stream)
        else:
            await relay_frames(up.stream, side.stream, server_frames(creds), bytes(up_extra))
        # The server is gone; TLS has no half-close, so the cell learns it by the close.
        side.stream.close()

    async def upstream() -> None:
        if upward is None:
            up.stream.write(client_extra)
            await pipe(side.stream, up.stream)
        else:
            await relay_frames(side.stream, up.stream, upward, bytes(client_extra))

    with contextlib.suppress(Exception):
        await asyncio.gather(upstream(), down())
