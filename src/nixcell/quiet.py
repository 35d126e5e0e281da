"""``suppress``: ``contextlib.suppress`` for the modules on the CLI's warm path.

``contextlib`` imports ``collections`` and ``functools``: ~2 ms of a ~20 ms warm run. This is
the whole of what those modules used from it.
"""

from __future__ import annotations


class suppress:
    """Ignore the given exceptions inside the ``with`` block."""

    __slots__ = ("_exceptions",)

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self._exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: object, tb: object) -> bool:
        return exc_type is not None and issubclass(exc_type, self._exceptions)
