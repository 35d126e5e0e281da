"""Every spelling of a secret a message may carry, matched as one pattern, swapped in place.

The spellings themselves (raw, escaped, percent-encoded, hex, quoted-printable, UTF-16, base64 at
every alignment, mixed per character) are families of units built in net/spellforms.py, each
swapped unit by unit into the dummy spelled the same way, same length.

The search is one alternation per possible first byte (the regex engine then skips every other
byte in C), and the few bytes a swap may change before a match (a base64 digit shared with what
precedes the secret) are found by looking back, not searched for.

``Spellings`` is the one function of spellings: response scrubbing, OAuth token mapping, the
redactor of logs and audit lines, and the check of what enters a cell all use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from nixcell.net.rewrite import swap_matches
from nixcell.net.spellforms import BUILDERS, Family, families

LOOKBACK = 5  # bytes before a match that ``Spellings.edit`` may change: a digit, a line break
_BACK_BREAK = re.compile(rb"(?:[ \t\r\n]{1,2}|(?:\\r)?\\n)?\Z")


class Spellings:
    """All spellings of a set of (real, dummy) pairs: one compiled search, swaps in place.

    ``pattern`` finds any spelling of any real value; ``edit`` turns a match into the dummy
    spelled the same way (same length), including up to ``LOOKBACK`` bytes before it; ``width``
    is the longest match, what a streaming scrubber must hold back.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        # The families are not kept (thousands of objects a secret, which every full pass of
        # the garbage collector would walk, stalling the proxy's loop): ``edit`` rebuilds the
        # one it needs (``BUILDERS[k]`` of its pair) when it swaps a match.
        self._pairs: list[tuple[str, str]] = []
        built: list[Family] = []
        self._exact: list[tuple[int, int, re.Pattern[bytes]]] = []
        for real, dummy in pairs:
            if len(real) != len(dummy) or len(real.encode()) != len(dummy.encode()):
                raise ValueError("a dummy must have the length of its real value")
            found = families(real, dummy)
            self._exact += [(len(self._pairs), k, re.compile(f.pattern(True))) for k, f in
                            enumerate(found)]  # fmt: skip
            self._pairs.append((real, dummy))
            built += found
        self.width = max((f.width for f in built), default=0)
        self.pattern: re.Pattern[bytes] | None = None
        if built:
            heads: dict[int, list[bytes]] = {}
            for family in built:
                for byte, rests in family.heads().items():
                    heads.setdefault(byte, []).extend(rests)
            self.pattern = re.compile(
                b"|".join(
                    re.escape(bytes([byte])) + b"(?:" + b"|".join(rests) + b")"
                    for byte, rests in sorted(heads.items())
                )
            )

    def __bool__(self) -> bool:
        return self.pattern is not None

    def edit(self, buf: bytearray, match: re.Match[bytes]) -> None:
        """Swap ``match`` in ``buf`` for the dummy's spelling, in place, same length; a base64
        match also gets the digit before it (past one line break) if that digit holds bits of
        the secret."""
        start, end = match.span()
        text = bytes(buf[start:end])
        for pair, k, exact in self._exact:
            m = exact.fullmatch(text)
            if m is None:
                continue
            family = BUILDERS[k](*self._pairs[pair])
            for i, unit in enumerate(family.units, 1):
                if unit.swap is not None:
                    a, b = m.span(i)
                    buf[start + a : start + b] = unit.swap(text[a:b])
            if family.lead is not None and family.lead.swap is not None:
                window = bytes(buf[max(0, start - LOOKBACK) : start])
                gap = _BACK_BREAK.search(window)
                at = start - (len(window) - gap.start()) - 1 if gap else -1
                if at >= 0 and buf[at] in family.lead.forms[0][0]:
                    buf[at : at + 1] = family.lead.swap(bytes(buf[at : at + 1]))
            assert len(buf) >= end
            return
        raise AssertionError("a match of the whole pattern fits one of its families")

    def scrub(self, data: bytes) -> bytes:
        """``data`` with every spelling of every real value swapped for its dummy's."""
        if self.pattern is None or not data:
            return data
        first = self.pattern.search(data)
        if first is None:
            return data
        buf = bytearray(data)
        swap_matches(buf, self.pattern, self.edit, first, len(buf), 1)
        return bytes(buf)

    def found(self, data: bytes) -> bool:
        return self.pattern is not None and self.pattern.search(data) is not None

    def redact(self, text: str, mark: str = "[REDACTED]") -> str:
        """``text`` with every spelling of a real value replaced by ``mark`` (logs, audit)."""
        if self.pattern is None or not text:
            return text
        data = text.encode("utf-8", "surrogateescape")
        return self.pattern.sub(mark.encode(), data).decode("utf-8", "surrogateescape")
