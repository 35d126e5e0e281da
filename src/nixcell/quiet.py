"""Stand-ins for two stdlib pieces, for the modules on the CLI's warm path.

``suppress`` is ``contextlib.suppress``: ``contextlib`` imports ``collections`` and ``functools``
(~2 ms of a ~20 ms warm run), and this is all those modules used from it. ``LazyLogger`` is
``logging.getLogger(name)`` imported on first use: ``logging`` (and ``threading``, ``traceback``,
``string`` with it) costs a few ms, and the cgroup code logs only on rare paths.
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


class LazyLogger:
    """``logging.getLogger(name)``, importing ``logging`` when a message is first logged."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> object:
        import logging

        return getattr(logging.getLogger(self._name), attr)
