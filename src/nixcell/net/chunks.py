"""A strict reader of chunked request bodies, beside h11's, over the same bytes.

h11 reads chunk sizes of up to 20 hex digits, takes any bytes as a chunk extension (control bytes
and a lone CR included), allows whitespace before the CRLF and bare LF in the trailer section.
The proxy re-frames every body it forwards, so none of that reaches an upstream as sent; but a
message whose body two parsers would cut differently is refused, not repaired (net/framing.py).
This scanner follows the chunk structure only (it jumps over chunk data: cost per chunk, not per
byte) and raises FramingError at the first deviation from RFC 9112 §7.1.
"""

from __future__ import annotations

import re

from nixcell.net.framing import MAX_HEAD, MAX_LINE, FramingError

MAX_SIZE_DIGITS = 16  # 64 bits: a longer size overflows parsers that use a machine integer
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*"'
_CHUNK_LINE = re.compile(
    rb"([0-9a-fA-F]{1,%d})((?:;%s(?:=(?:%s|%s))?)*)" % (MAX_SIZE_DIGITS, _TOKEN, _TOKEN, _QUOTED)
)
_TRAILER = re.compile(rb"%s:[ \t]*(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*" % _TOKEN)

_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkScanner:
    """Feed the raw bytes of one chunked body (and possibly what follows it); ``done`` once
    the final CRLF has been seen — bytes after it are the next message's and are not read."""

    def __init__(self) -> None:
        self._state = _SIZE
        self._line = bytearray()
        self._left = 0  # chunk data (or CRLF bytes) still to come
        self._trailer_bytes = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and self._state != _DONE:
            if self._state == _DATA:
                step = min(self._left, end - pos)
                pos += step
                self._left -= step
                if not self._left:
                    self._state, self._left = _DATA_END, 2
            elif self._state == _DATA_END:
                want = b"\r\n"[2 - self._left :]
                got = bytes(view[pos : pos + min(self._left, end - pos)])
                if got != want[: len(got)]:
                    raise FramingError("chunk data not followed by CRLF")
                pos += len(got)
                self._left -= len(got)
                if not self._left:
                    self._state = _SIZE
            else:
                pos = self._line_part(view, pos, end)

    def _line_part(self, view: memoryview, pos: int, end: int) -> int:
        """Collect one chunk-size or trailer line; act on it when its LF arrives."""
        window = min(end, pos + MAX_LINE + 2)  # lines are short: copies stay small
        newline = bytes(view[pos:window]).find(b"\n")
        stop = window if newline < 0 else pos + newline + 1
        self._line += view[pos:stop]
        limit = MAX_LINE if self._state == _SIZE else MAX_HEAD
        if len(self._line) > limit:
            raise FramingError("chunk-size or trailer line too long", 431)
        if newline >= 0:
            line, self._line = bytes(self._line), bytearray()
            if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                raise FramingError("bare LF or CR in a chunked body")
            self._on_line(line[:-2])
        return stop

    def _on_line(self, line: bytes) -> None:
        if self._state == _SIZE:
            match = _CHUNK_LINE.fullmatch(line)
            if match is None:
                raise FramingError(
                    f"malformed chunk-size line (1-{MAX_SIZE_DIGITS} hex digits, "
                    "token extensions, no whitespace)"
                )
            self._left = int(match.group(1), 16)
            self._state = _DATA if self._left else _TRAILERS
            return
        if not line:
            self._state = _DONE
            return
        self._trailer_bytes += len(line)
        if self._trailer_bytes > MAX_HEAD:
            raise FramingError("trailer section too long", 431)
        if line[:1] in (b" ", b"\t") or not _TRAILER.fullmatch(line):
            raise FramingError("malformed trailer field (obs-fold, bad name or bytes)")
