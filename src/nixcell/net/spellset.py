"""Spellings of a growing set of secrets: one compiled group per batch, never rebuilt.

Compiling the spellings of one secret costs tens of milliseconds (net/spellings.py); rebuilding
every secret's pattern each time a credential host issued a token grew with every token and
froze the proxy's event loop for all cells. Here each batch of secrets (the configured ones, then
each token response's tokens) gets its own ``Spellings``, compiled once (off the event loop when
issued, see ``CellCredentials.settle``); scrubbing runs the groups one after another. Every swap
keeps lengths, so the groups compose: a streamed body passes through one rewriter per group.
"""

from __future__ import annotations

from collections.abc import Sequence

from nixcell.net.rewrite import Rewriter
from nixcell.net.spellings import LOOKBACK, Spellings


class Chain:
    """Streaming rewriters in series, with the ``feed``/``flush`` of one."""

    def __init__(self, stages: Sequence[Rewriter]) -> None:
        self._stages = list(stages)

    def feed(self, chunk: bytes) -> bytes:
        for stage in self._stages:
            chunk = stage.feed(chunk)
        return chunk

    def flush(self) -> bytes:
        out = b""
        for stage in self._stages:
            out = stage.feed(out) + stage.flush()
        return out


class SpellingSet:
    """The groups of spellings of one cell's secrets, used as one."""

    def __init__(self, groups: Sequence[Spellings]) -> None:
        self.groups = [g for g in groups if g]

    @property
    def width(self) -> int:
        """The longest match of any group: what a streaming scan must look past."""
        return max((g.width for g in self.groups), default=0)

    def __bool__(self) -> bool:
        return bool(self.groups)

    def rewriter(self) -> Chain | Rewriter:
        """A streaming scrubber: every spelling of every secret, also across chunks."""
        stages = [Rewriter.matching(g.pattern, g.edit, g.width, back=LOOKBACK) for g in self.groups]
        if len(stages) == 1:
            return stages[0]
        return Chain(stages) if stages else Rewriter({}, bounded=False)

    def scrub(self, data: bytes) -> bytes:
        for group in self.groups:
            data = group.scrub(data)
        return data

    def found(self, data: bytes) -> bool:
        return any(group.found(data) for group in self.groups)

    def redact(self, text: str, mark: str = "[REDACTED]") -> str:
        for group in self.groups:
            text = group.redact(text, mark)
        return text
