"""Content-Encoding of credential hosts' responses: decoded so scrubbing sees the real bytes.

Requests to a credential's hosts ask for ``Accept-Encoding: identity``, but a server may compress
anyway, and a real token (echoed, or an OAuth ``access_token``) inside a gzip body would pass a
byte-level scrubber untouched. Such a response is decoded here (gzip, deflate: what zlib reads)
and sent to the cell decoded; one this module cannot read (br, zstd, stacked codings) is refused
by the caller — fail closed, never forwarded unseen. Output is produced in bounded pieces, so a
small compressed body cannot make the proxy hold gigabytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from nixcell.net.h11io import Headers, header

PIECE = 1 << 20  # most decoded bytes produced per step
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class UndecodableEncoding(Exception):
    """A Content-Encoding the proxy cannot inspect; the message names it."""


class BadEncodedBody(Exception):
    """The body does not decode as its Content-Encoding says."""


class Decoder:
    """Streaming decoder for one body."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._z = zlib.decompressobj(_WBITS[coding])
        self._started = False
        self._head = b""  # deflate: the first bytes, until the wrapper question is settled

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        """Decoded bytes of ``data``, in pieces of at most PIECE."""
        if not data:
            return
        if not self._started and self.coding == "deflate":
            # "deflate" should be zlib-wrapped; some servers send raw deflate. A zlib header is
            # two bytes, method 8, whose big-endian value is a multiple of 31.
            self._head += bytes(data)
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            if (data[0] & 0x0F) != 8 or int.from_bytes(data[:2], "big") % 31:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        self._started = True
        try:
            piece = self._z.decompress(data, PIECE)
            while True:
                if piece:
                    yield piece
                if self._z.eof and self._z.unused_data:
                    piece = self._next_member(self._z.unused_data)
                elif self._z.unconsumed_tail:
                    piece = self._z.decompress(self._z.unconsumed_tail, PIECE)
                else:
                    return
        except zlib.error as exc:
            raise BadEncodedBody(f"{self.coding} body does not decode: {exc}") from None

    def _next_member(self, rest: bytes) -> bytes:
        """gzip bodies may be several members back to back (all of them are the body); any
        other coding ends with its stream, and bytes after it would pass on unseen: an error."""
        if self.coding == "deflate":
            raise BadEncodedBody("data after the end of the deflate stream")
        self._z = zlib.decompressobj(_WBITS[self.coding])
        return self._z.decompress(rest, PIECE)

    def flush(self) -> bytes:
        if self._head:
            raise BadEncodedBody(f"{self.coding} body is truncated")
        try:
            rest = self._z.flush()
        except zlib.error as exc:
            raise BadEncodedBody(f"{self.coding} body does not decode: {exc}") from None
        if self._started and not self._z.eof:
            raise BadEncodedBody(f"{self.coding} body is truncated")
        return rest

    def decode_all(self, data: bytes, limit: int) -> bytes:
        """The whole decoded body; ``BadEncodedBody`` past ``limit`` bytes."""
        out = bytearray()
        for piece in self.feed(data):
            out += piece
            if len(out) > limit:
                raise BadEncodedBody(f"decoded body over {limit} bytes")
        out += self.flush()
        if len(out) > limit:
            raise BadEncodedBody(f"decoded body over {limit} bytes")
        return bytes(out)


def decoder_for(headers: Headers) -> Decoder | None:
    """None for an identity body; ``UndecodableEncoding`` for one the proxy cannot read."""
    value = header(headers, b"content-encoding")
    if value is None:
        return None
    text = value.decode("latin-1")
    codings = [c.strip().lower() for c in text.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WBITS:
        raise UndecodableEncoding(text.strip()[:60])
    return Decoder(codings[0])


def without_encoding(headers: Headers) -> Headers:
    """Headers for the decoded body: no Content-Encoding, no length (the framing is redone)."""
    drop = (b"content-encoding", b"content-length")
    return [(k, v) for k, v in headers if k.lower() not in drop]
