"""Compressed payloads in a credentialed cell's responses, looked into for the real values.

Scrubbing reads the bytes the cell gets; a ``.tar.gz``, a ``.gz`` file or a ``.zip`` carries its
text compressed, so a real value stored on one host (an echoed ``Authorization`` header, say)
and served back as an archive by another passed every spelling check. The body is still relayed
as sent — the cell asked for that archive — but a decompressed copy is scanned as it passes:
gzip/zlib, bzip2, xz and zip (deflate and stored entries), archives in archives up to
``MAX_DEPTH``. Each piece of the body is held back until the decoded stream has been scanned
``width`` bytes past what that piece can decode to, so the cell never gets the bytes that would
decode to any part of a secret: on a find the response is cut (``SecretInPayload``). What cannot
be looked into (a zip entry of another method, a decoder error, limits) is cut too: fail closed.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable

from nixcell.net.h11io import PeerGone

MAX_DEPTH = 3
MAX_DECODED = 4 << 30  # decoded bytes scanned per response (a decompression bomb is cut)
MAX_HELD = 16 << 20  # raw bytes held back while their decoded output is pending


class SecretInPayload(PeerGone):
    """The response is cut: a real value, or something nixcell could not look into."""


def _sniff(head: bytes, nested: bool) -> Callable[[], object] | str | None:
    """The decoder for a stream starting with ``head``; inside a decoded stream only the
    unmistakable magics count (a zlib header is two bytes any binary may start with)."""
    if head.startswith(b"\x1f\x8b\x08"):
        return lambda: zlib.decompressobj(31)  # gzip
    if not nested and head[:1] == b"\x78" and head[1:2] in (b"\x01", b"\x5e", b"\x9c", b"\xda"):
        return lambda: zlib.decompressobj(15)  # zlib
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return bz2.BZ2Decompressor
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMADecompressor
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    return None


class _Stream:
    """One decoded stream: its decoder (members one after another) and what reads its output."""

    def __init__(self, make: Callable[[], object], sink: Callable[[bytes], None]) -> None:
        self.make = make
        self.decoder: object = make()
        self.sink = sink

    def feed(self, data: bytes) -> None:
        while data:
            d = self.decoder
            try:
                out = d.decompress(data)  # type: ignore[attr-defined]
            except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
                raise SecretInPayload(f"a compressed payload nixcell cannot read ({exc})") from None
            self.sink(out)
            if not getattr(d, "eof", False):
                return
            data = d.unused_data  # type: ignore[attr-defined]
            if data:
                self.decoder = self.make()  # the next member (gzip files may hold several)

    def ended(self) -> bool:
        """At the end of a member: nothing it decoded is waiting for more input."""
        return bool(getattr(self.decoder, "eof", False))


class _Zip:
    """A zip archive read as it streams: each local entry's data decoded in turn, each entry a
    stream of its own (an archive inside is sniffed at the entry's start), names scanned too."""

    def __init__(self, owner: Inspector, depth: int) -> None:
        self.owner, self.depth = owner, depth
        self.names = _Reader(owner, depth, sniff=False)
        self.names.source = self
        self.sink: _Reader = self.names
        self.buf = b""
        self.entry: object | None = None  # a raw-deflate decoder, or the bytes left if stored
        self.done = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self.buf and not self.done:
            if self.entry is None and not self._header():
                return
            self.descriptor = getattr(self, "descriptor", False)
            if isinstance(self.entry, int):  # stored: raw bytes of a known size
                take = self.buf[: self.entry]
                self.sink(take)
                self.buf, self.entry = self.buf[len(take) :], self.entry - len(take)
                if self.entry:
                    return
                self.entry, self.sink.finished = None, True
                continue
            d = self.entry
            try:
                self.sink(d.decompress(self.buf))  # type: ignore[attr-defined]
            except zlib.error as exc:
                raise SecretInPayload(f"a zip entry nixcell cannot read ({exc})") from None
            if not d.eof:  # type: ignore[attr-defined]
                self.buf = b""
                return
            self.buf, self.entry = d.unused_data, None  # type: ignore[attr-defined]
            self.sink.finished = True
            self._skip_descriptor()

    def _header(self) -> bool:
        if self.buf[:4] in (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06"):
            self.names(self.buf)  # the central directory: names again, raw
            self.done = True
            return False
        if len(self.buf) < 30:
            return False
        if self.buf[:4] != b"PK\x03\x04":
            raise SecretInPayload("a zip archive nixcell cannot read (no local header)")
        flags, method = struct.unpack_from("<HH", self.buf, 6)
        size = struct.unpack_from("<I", self.buf, 18)[0]
        name_len, extra_len = struct.unpack_from("<HH", self.buf, 26)
        if len(self.buf) < 30 + name_len + extra_len:
            return False
        self.names(self.buf[30 : 30 + name_len])  # the entry's name
        self.buf = self.buf[30 + name_len + extra_len :]
        self.sink = _Reader(self.owner, self.depth)  # the entry's data: a stream of its own
        self.sink.source = self
        if method == 8:
            self.entry = zlib.decompressobj(-15)
        elif method == 0 and not flags & 0x08:
            self.entry = size
        else:
            raise SecretInPayload(f"a zip entry of method {method} nixcell cannot look into")
        self.descriptor = bool(flags & 0x08)
        return True

    def ended(self) -> bool:
        return self.done

    def _skip_descriptor(self) -> None:
        if getattr(self, "descriptor", False):
            sig = 4 if self.buf[:4] == b"PK\x07\x08" else 0
            self.buf = self.buf[sig + 12 :]  # crc, sizes (zip64 descriptors are 8 bytes more)


class _Reader:
    """Reads one decoded stream: scans it (its own window), opens an archive found in it."""

    def __init__(self, owner: Inspector, depth: int, *, sniff: bool = True) -> None:
        self.owner = owner
        self.depth = depth
        self.scanned = 0
        self.tail = b""
        self.head = b""
        self.sniffed = depth >= MAX_DEPTH or not sniff
        self.finished = False  # a zip entry that is complete
        self.inner: object | None = None
        self.source: object | None = None  # the decoder whose output this reads
        owner.readers.append(self)

    def __call__(self, out: bytes) -> None:
        if not out:
            return
        self.scanned += len(out)
        self.owner.scan(self, out)
        if not self.sniffed:
            self.head += out
            if len(self.head) < 10:
                return
            self.sniffed = True
            self.inner = self.owner.open(self.head, self.depth + 1)
            out, self.head = self.head, b""
        if self.inner is not None:
            self.inner.feed(out)  # type: ignore[attr-defined]


class Inspector:
    """Feed the body's raw pieces; get back the pieces that may be sent now."""

    def __init__(self, found: Callable[[bytes], bool], width: int) -> None:
        self.found = found
        self.width = max(width, 1)
        self.head = b""
        self.top: object | None = None  # the outermost decoder, once the body was sniffed
        self.plain = False  # not compressed: nothing to look into
        self.total = 0  # decoded bytes scanned so far (all streams)
        self.readers: list[_Reader] = []
        self.held: list[tuple[bytes, list[int]]] = []  # (raw piece, each stream's progress)

    def open(self, head: bytes, depth: int) -> object | None:
        kind = _sniff(head, nested=depth > 1)
        if kind is None:
            return None
        if kind == "zip":
            return _Zip(self, depth)
        sink = _Reader(self, depth)
        sink.source = _Stream(kind, sink)  # type: ignore[arg-type]
        return sink.source

    def scan(self, reader: _Reader, out: bytes) -> None:
        self.total += len(out)
        if self.total > MAX_DECODED:
            raise SecretInPayload("a compressed payload over the size nixcell looks into")
        window = reader.tail + out
        if self.found(window):
            raise SecretInPayload("a real credential value inside a compressed payload")
        reader.tail = window[-self.width :]

    def _ready(self, progress: list[int]) -> bool:
        """Every stream was scanned ``width`` bytes past what the piece could decode to (or
        has ended: nothing of it waits for more input)."""
        return all(
            r.scanned - at >= self.width or r.finished or r.source.ended()  # type: ignore[union-attr]
            for r, at in zip(self.readers, progress, strict=False)  # (later readers: newer)
        )

    def feed(self, data: bytes) -> list[bytes]:
        if self.plain or not data:
            return [data] if data else []
        if self.top is None:
            self.head += data
            if len(self.head) < 10:
                return []
            data, self.head = self.head, b""
            self.top = self.open(data, 1)
            if self.top is None:
                self.plain = True
                return [data]
        self.top.feed(data)  # type: ignore[attr-defined]
        self.held.append((data, [r.scanned for r in self.readers]))
        ready = []
        while self.held and self._ready(self.held[0][1]):
            ready.append(self.held.pop(0)[0])
        if sum(len(piece) for piece, _ in self.held) > MAX_HELD:
            raise SecretInPayload("a compressed payload that decodes too slowly to look into")
        return ready

    def finish(self) -> list[bytes]:
        """The body ended: everything left (what was fed was scanned to its end)."""
        rest = [self.head] if self.head else []  # under 10 bytes: no archive to look into
        rest += [piece for piece, _ in self.held]
        self.held, self.head = [], b""
        return rest
