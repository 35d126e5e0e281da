"""h11 connections over the proxy's streams: its two sides (cell and upstream).

h11 holds the HTTP/1.1 state machine (framing, keep-alive, pipelining, upgrades) and never does
I/O; this module feeds it bytes and writes out what it produces, h11's intended use.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

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
        self.conn = h11.Connection(role, max_incomplete_event_size=64 * 1024)
        self.stream = stream
        self.bytes_in = 0
        self.bytes_out = 0

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
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
            self.conn.receive_data(data)  # copies: the view is reused by the next read

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


def strip_hop_by_hop(headers: Headers, keep_upgrade: bool = False) -> Headers:
    """Drop hop-by-hop headers, including any named by ``Connection``."""
    named = set()
    for key, value in headers:
        if key.lower() == b"connection":
            named |= {t.strip().lower() for t in value.split(b",")}
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
