"""Parsing of human sizes and durations (``256M``, ``1.5G``, ``30s``, ``2m``).

Kept free of heavy imports: the CLI fast path uses it.
"""

from __future__ import annotations

import re

from nixcell.errors import UsageError

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_TIME_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes from ``512K``/``256M``/``1G``/``1GiB``/``1048576``; a bare number is bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _SIZE_RE.match(str(text))
        if not match:
            raise UsageError(f"invalid {what} {text!r}: use a number with K, M, G or T (e.g. 256M)")
        value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    return value


def format_size(value: int) -> str:
    """The shortest exact form: 268435456 -> '256M'."""
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_UNITS[unit]
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_duration(text: str | float, *, what: str = "duration") -> float:
    """Seconds from ``30s``/``2m``/``1h``/``500ms``; a bare number is seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _TIME_RE.match(str(text))
        if not match:
            raise UsageError(f"invalid {what} {text!r}: use a number with ms, s, m or h (e.g. 30s)")
        value = float(match.group(1)) * _TIME_UNITS[(match.group(2) or "").lower()]
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    return value


def format_duration(seconds: float) -> str:
    """'30s', '1.5s', '2m' — the form users typed, for messages."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
