"""A cache-key digest that does not load OpenSSL (``hashlib`` costs ~13 ms at start-up here)."""

from __future__ import annotations

try:  # CPython's built-in BLAKE2: no OpenSSL import on the warm path
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - other interpreters
    from hashlib import blake2b


def digest(text: str) -> str:
    return blake2b(text.encode(), digest_size=32).hexdigest()
