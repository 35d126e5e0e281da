"""Content-Encoding of responses to credentialed cells: decoded so scrubbing sees the bytes.

Requests of a cell holding credentials ask for ``Accept-Encoding: identity``, but a server may
compress anyway, and a real token (echoed, republished, or an OAuth ``access_token``) inside a
gzip body would pass a byte-level scrubber untouched. Every ``Content-Encoding`` header counts,
in order (``identity`` then ``gzip`` in two headers is gzip), as comma lists in any case; gzip,
x-gzip and deflate (what zlib reads) are decoded, stacked ones in reverse order of application,
and the cell gets the decoded body. Any other coding (br, zstd, compress, unknown names,
parameters) is refused by the caller: fail closed, never forwarded unseen. Output is produced in
bounded pieces at every stage, so a small compressed body cannot make the proxy hold gigabytes.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator

from nixcell.net.h11io import Headers

PIECE = 1 << 20  # most decoded bytes produced per step
MAX_CODINGS = 4  # stacked codings decoded; more is refused (each stage multiplies the work)
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

    def finish(self) -> Iterator[bytes]:
        """The end of the body: what the decoder still holds (``BadEncodedBody`` if cut)."""
        rest = self.flush()
        if rest:
            yield rest

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
        return decode_all(self, data, limit)


class Stacked:
    """Several codings, ``Content-Encoding: deflate, gzip`` style: undone last first, each
    stage's pieces fed to the next, so every stage's output stays bounded."""

    def __init__(self, codings: list[str]) -> None:
        self.coding = ", ".join(codings)
        self._stages = [Decoder(c) for c in reversed(codings)]

    def _through(self, stage: int, data: bytes) -> Iterator[bytes]:
        if stage == len(self._stages):
            if data:
                yield data
            return
        for piece in self._stages[stage].feed(data):
            yield from self._through(stage + 1, piece)

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[bytes]:
        yield from self._through(0, bytes(data))

    def finish(self) -> Iterator[bytes]:
        for stage, decoder in enumerate(self._stages):
            for rest in decoder.finish():
                yield from self._through(stage + 1, rest)

    def decode_all(self, data: bytes, limit: int) -> bytes:
        return decode_all(self, data, limit)


AnyDecoder = Decoder | Stacked


def decode_all(decoder: AnyDecoder, data: bytes, limit: int) -> bytes:
    """The whole decoded body; ``BadEncodedBody`` past ``limit`` bytes."""
    out = bytearray()
    for piece in itertools.chain(decoder.feed(data), decoder.finish()):
        out += piece
        if len(out) > limit:
            raise BadEncodedBody(f"decoded body over {limit} bytes")
    return bytes(out)


def codings(headers: Headers) -> list[str]:
    """Every Content-Encoding header's codings, in the order they were applied; ``identity``
    and empty list elements dropped."""
    values = [v.decode("latin-1") for k, v in headers if k.lower() == b"content-encoding"]
    found = [c.strip(" \t").lower() for v in values for c in v.split(",")]
    return [c for c in found if c and c != "identity"]


def decoder_for(headers: Headers) -> AnyDecoder | None:
    """None for an identity body; ``UndecodableEncoding`` for one the proxy cannot read."""
    found = codings(headers)
    if not found:
        return None
    unknown = [c for c in found if c not in _WBITS]
    if unknown or len(found) > MAX_CODINGS:
        raise UndecodableEncoding((", ".join(unknown or found))[:60])
    return Decoder(found[0]) if len(found) == 1 else Stacked(found)


def without_encoding(headers: Headers) -> Headers:
    """Headers for the decoded body: no Content-Encoding, no length (the framing is redone)."""
    drop = (b"content-encoding", b"content-length")
    return [(k, v) for k, v in headers if k.lower() not in drop]
