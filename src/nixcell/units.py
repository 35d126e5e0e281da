"""Parsing of human sizes and durations (``256M``, ``1.5G``, ``30s``, ``2m``).

Kept free of heavy imports: the CLI fast path uses it.
"""

from __future__ import annotations

import math
import re

from nixcell.errors import UsageError

_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# At most 18 digits before the point and 9 after: no float rounding, no giant int parsing.
_SIZE_RE = re.compile(r"^\s*(\d{1,18})(?:\.(\d{1,9}))?\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_TIME_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TIME_RE = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)

# Bounds every front shares (the spec validates with them). Sizes above 1 EiB wrap or are
# clamped somewhere between cgroupfs (page counters), tmpfs (size= in pages) and bwrap's parser;
# nothing a cell needs is that big. Durations above a year overflow no clock here (threading's
# TIMEOUT_MAX is ~292 years) but are not a limit anyone means: refused, like 0 and NaN.
MAX_SIZE = 1 << 60
MIN_DURATION = 0.001
MAX_DURATION = 365 * 24 * 3600.0


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Bytes from ``512K``/``256M``/``1G``/``1GiB``/``1048576``; a bare number is bytes.

    Exact (integer arithmetic, no float rounding); refused unless 0 < bytes <= ``MAX_SIZE``.
    """
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}: use a number with K, M, G or T (e.g. 256M)")
    if isinstance(text, int):
        value = text
    else:
        if isinstance(text, float) and text.is_integer() and abs(text) < 1e18:
            text = str(int(text))
        match = _SIZE_RE.match(str(text))
        if not match:
            raise UsageError(f"invalid {what} {text!r}: use a number with K, M, G or T (e.g. 256M)")
        whole, frac, unit = match.group(1), match.group(2) or "", match.group(3).upper()
        factor = _SIZE_UNITS[unit]
        value = int(whole) * factor + (int(frac or "0") * factor) // 10 ** len(frac)
    if value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be greater than zero")
    if value > MAX_SIZE:
        raise UsageError(f"invalid {what} {text!r}: at most {format_size(MAX_SIZE)} (1 EiB)")
    return value


def format_size(value: int) -> str:
    """The shortest exact form: 268435456 -> '256M'."""
    for unit in ("T", "G", "M", "K"):
        factor = _SIZE_UNITS[unit]
        if value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_duration(text: str | float, *, what: str = "duration") -> float:
    """Seconds from ``30s``/``2m``/``1h``/``500ms``; a bare number is seconds.

    Refused unless finite and between ``MIN_DURATION`` (1ms) and ``MAX_DURATION`` (365 days).
    """
    if isinstance(text, bool):
        raise UsageError(f"invalid {what} {text!r}: use a number with ms, s, m or h (e.g. 30s)")
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _TIME_RE.match(str(text))
        if not match:
            raise UsageError(f"invalid {what} {text!r}: use a number with ms, s, m or h (e.g. 30s)")
        value = float(match.group(1)) * _TIME_UNITS[(match.group(2) or "").lower()]
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"invalid {what} {text!r}: must be a number greater than zero")
    if value < MIN_DURATION:
        raise UsageError(f"invalid {what} {text!r}: at least 1ms")
    if value > MAX_DURATION:
        raise UsageError(f"invalid {what} {text!r}: at most 365 days")
    return value


def format_duration(seconds: float) -> str:
    """'30s', '1.5s', '2m' — the form users typed, for messages."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:g}s"
