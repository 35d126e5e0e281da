"""h11 connections over the proxy's streams: its two sides (cell and upstream).

h11 holds the HTTP/1.1 state machine (framing, keep-alive, pipelining, upgrades) and never does
I/O; this module feeds it bytes and writes out what it produces, h11's intended use. Before h11
parses a head, its raw bytes go through net/framing.py's strict checks (h11 is lenient): every
head of every request on a connection, and of every upstream response, so nothing reaches the
policy, an upstream or the cell that two parsers could frame differently.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

from nixcell.net.chunks import ChunkScanner
from nixcell.net.framing import (
    MAX_HEAD,
    FramingError,
    Head,
    check_request,
    check_response,
    head_end,
)
from nixcell.net.stream import Stream

IDLE_TIMEOUT = 600.0  # a connection idle this long is closed

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
    }
)

Headers = list[tuple[bytes, bytes]]


class PeerGone(Exception):
    """The other end closed or broke the connection."""


class Side:
    """One HTTP/1.1 connection (``h11.SERVER`` toward the cell, ``h11.CLIENT`` upstream)."""

    def __init__(self, role: type[h11.SERVER] | type[h11.CLIENT], stream: Stream) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD + 4)
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0
        self.head: Head | None = None  # the last head checked (the request or response read)
        self._checked = False  # the head at the front of h11's buffer passed the checks
        self._pending: bytearray | None = None  # a head's bytes while it is incomplete
        self.request_method: bytes | None = None  # of the request being answered (server side)
        self._searched = 0
        self._eof = False
        self._chunks: ChunkScanner | None = None  # the cell's chunked body, checked as it comes

    def _expects_head(self) -> bool:
        if self.conn.our_role is h11.SERVER:
            return self.conn.their_state is h11.IDLE
        return self.conn.their_state is h11.SEND_RESPONSE

    def _check_head(self) -> bool:
        """Check the head at the front of h11's buffer once it is complete; False: need more.
        Raises FramingError (status 502 when the head is an upstream's response)."""
        if self._pending is None:
            self._pending = bytearray(self.conn.trailing_data[0][: MAX_HEAD + 4])
            self._searched = 0
        end = head_end(self._pending, self._searched)
        if end is None:
            if self._eof:  # h11 cuts heads as head_end does: it has no head to give either
                if self._pending:
                    raise PeerGone("closed in the middle of a message head")
                return True  # h11 says ConnectionClosed
            if len(self._pending) > MAX_HEAD:
                self._pending = None
                raise self._error(FramingError(f"message head over {MAX_HEAD} bytes", 431))
            self._searched = len(self._pending)
            return False
        raw, self._pending = bytes(self._pending[:end]), None
        try:
            server = self.conn.our_role is h11.SERVER
            self.head = check_request(raw) if server else check_response(raw)
        except FramingError as exc:
            raise self._error(exc) from None
        self._checked = True
        return True

    def _error(self, exc: FramingError) -> FramingError:
        if self.conn.our_role is h11.CLIENT:
            exc.status = 502
        return exc

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            if self._checked or not self._expects_head() or self._check_head():
                try:
                    event = self.conn.next_event()
                except h11.RemoteProtocolError as exc:
                    # h11's text may quote the bytes (an upstream's could hold a secret)
                    why = str(exc).split(":")[0]
                    raise self._error(FramingError(why or "malformed message")) from None
                if event is not h11.NEED_DATA:
                    if isinstance(event, (h11.Request, h11.Response, h11.InformationalResponse)):
                        self._checked = False  # the next head gets its own check
                        if isinstance(event, h11.Request):
                            self.request_method = event.method
                        if isinstance(event, h11.Request) and self.head and self.head.chunked:
                            self._chunks = ChunkScanner()  # h11 holds the body's first bytes
                            self._feed_chunks(self.conn.trailing_data[0])
                    return event
            # Only a connection idle between messages gets a timer: a timer per read would
            # cost more than the relay itself on a large body.
            try:
                if self.conn.their_state is h11.IDLE:
                    data = await asyncio.wait_for(self.stream.read(), IDLE_TIMEOUT)
                else:
                    data = await self.stream.read()
            except (ConnectionError, OSError, TimeoutError) as exc:
                raise PeerGone(str(exc) or type(exc).__name__) from None
            self.bytes_in += len(data)
            self._eof = not data
            if self._pending is not None:
                self._pending += data[: MAX_HEAD + 4 - len(self._pending)]
            if self._chunks is not None:
                self._feed_chunks(data)
            self.conn.receive_data(data)  # copies: the view is reused by the next read

    def _feed_chunks(self, data: bytes | memoryview) -> None:
        assert self._chunks is not None
        self._chunks.feed(data)  # raises FramingError (400: only the cell's bodies are read)
        if self._chunks.done:
            self._chunks = None

    async def read_raw(self) -> memoryview:
        """Bytes straight from the stream, bypassing h11 (whose state no longer follows)."""
        try:
            data = await self.stream.read()
        except (ConnectionError, OSError) as exc:
            raise PeerGone(str(exc) or type(exc).__name__) from None
        self.bytes_in += len(data)
        return data

    async def send(self, *events: h11.Event) -> None:
        parts: list[bytes] = []
        if self.request_method == b"HEAD":  # a response to HEAD has no body (a refusal's text)
            events = tuple(e for e in events if not isinstance(e, h11.Data))
        for event in events:
            parts += self.conn.send_with_data_passthrough(event) or ()
        size = sum(len(part) for part in parts)
        self.bytes_out += size
        try:
            if size > 65536:
                for part in parts:  # a big body chunk is not copied again
                    self.stream.write(part)
            elif parts:
                self.stream.write(b"".join(parts))  # one write: one TLS record, one segment
            await self.stream.drain()
        except (ConnectionError, OSError) as exc:
            raise PeerGone(str(exc) or type(exc).__name__) from None

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def quiet(self) -> bool:
        """Idle, and nothing unasked-for has arrived: no bytes past the last message, neither
        in h11 nor waiting in the stream. An upstream's stray bytes would otherwise be read as
        the answer to the next request."""
        if self.conn.our_state is not h11.IDLE or self.conn.trailing_data[0]:
            return False
        return self.stream.quiet()

    def next_cycle(self) -> bool:
        """Reset for the next request/response on a kept-alive connection."""
        if not self.reusable():
            return False
        self.conn.start_next_cycle()
        return True

    async def close(self) -> None:
        self.stream.close()


def header(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def connection_names(headers: Headers) -> set[bytes]:
    """The header names a message's ``Connection`` headers list (they are dropped with it)."""
    named: set[bytes] = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named |= {t.strip().lower() for t in value.split(b",")}
    return named


def strip_hop_by_hop(headers: Headers, keep_upgrade: bool = False) -> Headers:
    """Drop hop-by-hop headers, including any named by ``Connection``."""
    named = connection_names(headers)
    out: Headers = []
    for key, value in headers:
        low = key.lower()
        if keep_upgrade and low in (b"upgrade", b"connection"):
            continue  # re-added by the caller
        if low in HOP_BY_HOP or low in named:
            continue
        out.append((key, value))
    return out


async def pipe(src: Stream, dst: Stream) -> int:
    """Copy bytes until EOF (after a protocol switch); returns the byte count."""
    total = 0
    try:
        while data := await src.read():
            total += len(data)
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await dst.write_eof()
    return total


def simple_response(status: int, body: str, *, close: bool = False) -> list[h11.Event]:
    data = body.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(data)).encode()),
        (b"x-nixcell", b"proxy"),
    ]
    if close:
        headers.append((b"connection", b"close"))
    return [
        h11.Response(status_code=status, headers=headers),
        h11.Data(data=data),
        h11.EndOfMessage(),
    ]
