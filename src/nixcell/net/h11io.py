"""h11 connections driven by asyncio streams: the proxy's two sides (cell and upstream).

h11 holds the HTTP/1.1 state machine (framing, keep-alive, pipelining, upgrades) and never does
I/O; this module feeds it bytes and writes out what it produces, h11's intended use.
"""

from __future__ import annotations

import asyncio
import contextlib

import h11

READ_SIZE = 256 * 1024
STREAM_LIMIT = 1 << 20  # StreamReader buffer: reading pauses beyond twice this
WRITE_BUFFER = 4 << 20  # transport write buffer before drain() waits
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

    def __init__(
        self,
        role: type[h11.SERVER] | type[h11.CLIENT],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=64 * 1024)
        self.reader = reader
        self.writer = writer
        # drain() stalls whenever the transport buffer passes its high-water mark (64 KiB by
        # default): smaller than one read, so every relayed chunk would wait for the peer.
        with contextlib.suppress(AttributeError, NotImplementedError):
            writer.transport.set_write_buffer_limits(high=WRITE_BUFFER)
        self.bytes_in = 0
        self.bytes_out = 0

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            # Only a connection idle between messages gets a timer: a timer per read would
            # cost more than the relay itself on a large body.
            idle = self.conn.their_state is h11.IDLE
            try:
                if idle:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), IDLE_TIMEOUT)
                else:
                    data = await self.reader.read(READ_SIZE)
            except (ConnectionError, OSError, TimeoutError) as exc:
                raise PeerGone(str(exc) or type(exc).__name__) from None
            self.bytes_in += len(data)
            self.conn.receive_data(data)

    async def send(self, *events: h11.Event) -> None:
        parts: list[bytes] = []
        for event in events:
            parts += self.conn.send_with_data_passthrough(event) or ()
        size = sum(len(part) for part in parts)
        self.bytes_out += size
        if size > 65536:
            self.writer.writelines(parts)  # a big body chunk is not copied again
        elif parts:
            self.writer.write(b"".join(parts))  # one write: one TLS record, one segment
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            raise PeerGone(str(exc) or type(exc).__name__) from None

    def reusable(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE

    def next_cycle(self) -> bool:
        """Reset for the next request/response on a kept-alive connection."""
        if not self.reusable():
            return False
        self.conn.start_next_cycle()
        return True

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)


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


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy bytes until EOF (after a protocol switch); returns the byte count."""
    total = 0
    try:
        while data := await reader.read(READ_SIZE):
            total += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
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
