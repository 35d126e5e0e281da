"""Same-length byte replacement, whole buffers or streamed: the mechanics of credential swapping.

Every needle and its replacement have the same length, so a rewritten message keeps its size:
``Content-Length`` and chunk sizes computed by the sender stay valid and the proxy can stream
bodies without buffering them. Token-bounded matching (used for dummy -> real) only swaps a needle
that stands alone: the bytes on either side are not ``[A-Za-z0-9_-]``, so a longer token that
merely contains the dummy is left alone. Unbounded matching (used for real -> dummy scrubbing)
replaces every occurrence, because any copy of a secret must go.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

TOKEN_CHARS = rb"A-Za-z0-9_\-"
_BEFORE = rb"(?<![" + TOKEN_CHARS + rb"])"
_AFTER = rb"(?![" + TOKEN_CHARS + rb"])"


def _check_pairs(pairs: Mapping[bytes, bytes]) -> None:
    for needle, replacement in pairs.items():
        if not needle:
            raise ValueError("empty needle")
        if len(needle) != len(replacement):  # the invariant everything else relies on
            raise ValueError("a replacement must have the same length as its needle")


def compile_needles(
    needles: list[bytes] | tuple[bytes, ...], *, bounded: bool
) -> re.Pattern[bytes]:
    """One alternation, longest needle first so a needle never pre-empts a longer one."""
    body = b"|".join(re.escape(n) for n in sorted(set(needles), key=lambda n: (-len(n), n)))
    return re.compile(_BEFORE + b"(?:" + body + b")" + _AFTER if bounded else body)


def replace_all(data: bytes, pairs: Mapping[bytes, bytes], *, bounded: bool) -> bytes:
    """Replace needles in a complete buffer (a header value, a buffered body)."""
    if not pairs or not data:
        return data
    _check_pairs(pairs)
    out = compile_needles(list(pairs), bounded=bounded).sub(lambda m: pairs[m.group()], data)
    assert len(out) == len(data)
    return out


def swap_matches(
    buf: bytearray,
    pattern: re.Pattern[bytes],
    swap: Callable[[re.Match[bytes]], bytes],
    first: re.Match[bytes] | None,
    limit: int,
    overlap: int,
) -> int:
    """Swap, in place, ``first`` and every later match of ``pattern`` in ``buf`` that starts
    before ``limit``; returns where the bytes still open to a match begin (``limit``, or the
    shared last byte of a match past it). Each search runs on the bytes already swapped, so a
    next match may share ``overlap`` bytes with the one before (each swap changes only the
    bits of its own secret) and a swapped dummy is never matched again."""
    stop, match = limit, first
    while match is not None and match.start() < limit:
        start, end = match.span()
        buf[start:end] = swap(match)
        stop = max(stop, end - overlap)
        match = pattern.search(buf, max(end - overlap, start + 1))
    return stop


class Rewriter:
    """Streaming same-length replacement: ``feed`` chunks in order, then ``flush`` once.

    Matches may straddle chunk boundaries, so the tail of each chunk that could still be the start
    of a needle (at most the longest needle's length) is held back until the next chunk or flush.
    Output length always equals input length, so Content-Length stays valid.
    """

    def __init__(self, pairs: Mapping[bytes, bytes], *, bounded: bool) -> None:
        _check_pairs(pairs)
        table = dict(pairs)
        pattern = compile_needles(list(pairs), bounded=bounded) if pairs else None
        longest = max((len(n) for n in pairs), default=0)
        # Bounded: a match must be followed by one known byte before it can be decided.
        hold = longest if bounded else longest - 1
        self._setup(pattern, lambda m: table[bytes(m.group())], hold, overlap=0)

    @classmethod
    def matching(
        cls, pattern: re.Pattern[bytes] | None, swap: Callable[[re.Match[bytes]], bytes], width: int
    ) -> Rewriter:
        """A rewriter for any same-length ``swap`` of ``pattern``'s matches, none longer than
        ``width`` (net/spellings.py: every spelling of a secret). A match may start on the last
        byte of the one before (base64 digits shared by two secrets back to back)."""
        self = cls.__new__(cls)
        self._setup(pattern, swap, width - 1, overlap=1)
        return self

    def _setup(
        self,
        pattern: re.Pattern[bytes] | None,
        swap: Callable[[re.Match[bytes]], bytes],
        hold: int,
        overlap: int,
    ) -> None:
        self._pattern = pattern
        self._overlap = overlap
        self._swap = swap
        self._hold = max(hold, 0)
        self._pending = b""
        self._prev = b""  # the last input byte already passed on: the left boundary
        self._seen = 0
        self._emitted = 0
        self._flushed = False

    @property
    def empty(self) -> bool:
        """True when there is nothing to replace: the caller may skip the rewriter entirely."""
        return self._pattern is None

    def feed(self, chunk: bytes) -> bytes:
        if self._flushed:
            raise RuntimeError("feed after flush")
        self._seen += len(chunk)
        if self._pattern is None:
            return self._emit(chunk)
        data = self._pending + chunk
        cut = len(data) - self._hold
        if cut <= 0:
            self._pending = data
            return b""
        return self._emit(self._rewrite(data, cut))

    def flush(self) -> bytes:
        """Emit what was held back; the end of the stream counts as a token boundary."""
        if self._flushed:
            return b""
        self._flushed = True
        data, self._pending = self._pending, b""
        out = self._emit(self._rewrite(data, len(data)) if self._pattern and data else data)
        assert self._emitted == self._seen, "same-length invariant broken"
        return out

    def _rewrite(self, data: bytes, cut: int) -> bytes:
        """Rewrite matches that start before ``cut``; keep the rest of ``data`` pending."""
        assert self._pattern is not None
        ctx = self._prev + data  # one byte of history so the left boundary is seen
        off = len(self._prev)
        first = self._pattern.search(ctx, off)
        if first is None or first.start() >= off + cut:  # the common case: nothing, no copy
            out, self._pending = data[:cut], data[cut:]
        else:
            buf = bytearray(ctx)
            stop = swap_matches(buf, self._pattern, self._swap, first, off + cut, self._overlap)
            out, self._pending = bytes(buf[off:stop]), bytes(buf[stop:])
        if out:
            self._prev = out[-1:]
        return out

    def _emit(self, out: bytes) -> bytes:
        self._emitted += len(out)
        return out
