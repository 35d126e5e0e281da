"""What a full-screen program (interactive claude) shows on a pexpect terminal, as text."""

from __future__ import annotations

import re
import time

import pexpect


def screen_text(raw: str) -> str:
    """Terminal output without escape sequences and blanks (claude moves the cursor for them)."""
    raw = re.sub(r"\x1b\[[0-9;?<>=]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\\\)|\x1b.", "", raw)
    return re.sub(r"\s+", "", raw)


class Screen:
    """Everything ``child`` printed so far (``seen``), read until a text shows."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child, self.seen = child, ""

    @property
    def text(self) -> str:
        return screen_text(self.seen)

    def until(self, text: str, limit: float = 90) -> bool:
        deadline = time.monotonic() + limit  # a bound on waiting, not a timing assertion
        while text not in self.text and time.monotonic() < deadline:
            try:
                self.seen += self.child.read_nonblocking(65536, timeout=1)
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                break
        return text in self.text
