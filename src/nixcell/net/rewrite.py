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


Edit = Callable[[bytearray, "re.Match[bytes]"], None]


def swap_matches(
    buf: bytearray,
    pattern: re.Pattern[bytes],
    edit: Edit,
    first: re.Match[bytes] | None,
    limit: int,
    overlap: int,
) -> int:
    """Let ``edit`` swap, in place, ``first`` and every later match of ``pattern`` in ``buf``
    that starts before ``limit``; returns where the next search starts (``limit``, or the
    shared last byte of a match past it). Each search runs on the bytes already swapped, so a
    next match may share ``overlap`` bytes with the one before (each swap changes only the
    bits of its own secret) and a swapped dummy is never matched again."""
    stop, match = limit, first
    while match is not None and match.start() < limit:
        start, end = match.span()
        edit(buf, match)
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

        def edit(buf: bytearray, m: re.Match[bytes]) -> None:
            buf[m.start() : m.end()] = table[bytes(m.group())]

        self._setup(pattern, edit, hold, overlap=0, back=1)

    @classmethod
    def matching(
        cls, pattern: re.Pattern[bytes] | None, edit: Edit, width: int, back: int = 1
    ) -> Rewriter:
        """A rewriter for any same-length in-place ``edit`` of ``pattern``'s matches, none
        longer than ``width``, that may also change up to ``back`` bytes before a match
        (net/spellings.py: every spelling of a secret). A match may start on the last byte of
        the one before (base64 digits shared by two secrets back to back)."""
        self = cls.__new__(cls)
        self._setup(pattern, edit, width - 1, overlap=1, back=back)
        return self

    def _setup(
        self, pattern: re.Pattern[bytes] | None, edit: Edit, hold: int, overlap: int, back: int
    ) -> None:
        self._pattern = pattern
        self._overlap = overlap
        self._edit = edit
        self._hold = max(hold, 0)
        self._back = back  # searched bytes kept unsent: the left boundary, a digit to swap
        self._pending = b""  # bytes not passed on yet
        self._scan = 0  # where in them the next search starts
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
        if cut <= self._scan:
            self._pending = data
            return b""
        return self._emit(self._rewrite(data, cut))

    def flush(self) -> bytes:
        """Emit what was held back; the end of the stream counts as a token boundary."""
        if self._flushed:
            return b""
        self._flushed = True
        head, data = b"", self._pending
        if self._pattern is not None and len(data) > self._scan:
            head = self._rewrite(data, len(data))
            data = self._pending
        self._pending = b""
        out = self._emit(head + data)
        assert self._emitted == self._seen, "same-length invariant broken"
        return out

    def _rewrite(self, data: bytes, cut: int) -> bytes:
        """Rewrite matches that start before ``cut``; pass on what no later match can touch."""
        assert self._pattern is not None
        first = self._pattern.search(data, self._scan)
        if first is None or first.start() >= cut:  # the common case: nothing, no copy
            scan = cut
        else:
            buf = bytearray(data)
            scan = swap_matches(buf, self._pattern, self._edit, first, cut, self._overlap)
            data = bytes(buf)
        keep = max(0, scan - self._back)
        self._pending, self._scan = data[keep:], scan - keep
        return data[:keep]

    def _emit(self, out: bytes) -> bytes:
        self._emitted += len(out)
        return out
