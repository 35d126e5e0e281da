"""Stand-ins for three stdlib pieces, for the modules on the CLI's warm path.

``Frozen`` stands in for a frozen dataclass (see its docstring). ``suppress`` is
``contextlib.suppress``: ``contextlib`` imports ``collections`` and ``functools`` (~2 ms of a
~20 ms warm run), and this is all those modules used from it. ``LazyLogger`` is
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


class Frozen:
    """``@dataclass(frozen=True)`` for records on the warm path: ``dataclasses`` imports
    ``inspect`` (with ``ast``, ``dis``, ``tokenize``: ~4 ms of a cgroup-limited warm run).

    A subclass names its fields in ``_fields`` (in order; ``__slots__ = _fields``) and sets them
    in ``__init__`` (which takes them in that order) with ``_set``; equality, hashing, ``repr``,
    copy and pickle go by those fields, as a frozen dataclass's do."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a frozen {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a frozen {type(self).__name__}")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        """copy and pickle: rebuilt through ``__init__`` (which takes the fields in order)."""
        return type(self), self._values()

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({shown})"
