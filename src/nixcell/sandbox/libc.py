"""libc functions called through ``_ctypes``, the C half of ``ctypes``.

Importing the ``ctypes`` package costs a warm run ~1.5-2 ms (it builds dozens of types); the few
libc calls on the warm path (``prctl`` for the subreaper; ``unshare``, ``mount`` and ``syscall``
for a root-run cell's idmapped stage) need three of them, the very ones ``ctypes`` builds its
own on. Integers are passed as C ``long``s, bytes as ``char *``, None as NULL: right for every
call made here on x86_64 and aarch64, whose first six arguments travel in 64-bit registers.
"""

from __future__ import annotations

import _ctypes
import os


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _Int(_ctypes._SimpleCData):
    _type_ = "i"


_FLAGS = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO  # errno kept for get_errno


class _IntFunction(_ctypes.CFuncPtr):
    _flags_ = _FLAGS
    _restype_ = _Int


class _LongFunction(_ctypes.CFuncPtr):
    _flags_ = _FLAGS
    _restype_ = _Long


class _Libc:
    _handle = _ctypes.dlopen(None, os.RTLD_NOW)  # the process's own libc (and all loaded)


_made: dict[tuple[str, bool], _ctypes.CFuncPtr] = {}


def call(name: str, *args: int | bytes | None, returns_long: bool = False) -> int:
    """libc's ``name(*args)``; OSError with its errno when it returns -1. ``returns_long``: the
    function returns a C long (``syscall``), not an int."""
    fn = _made.get((name, returns_long))
    if fn is None:
        kind = _LongFunction if returns_long else _IntFunction
        fn = _made[(name, returns_long)] = kind((name, _Libc()))
    result = fn(*(_Long(a) if isinstance(a, int) else a for a in args))
    if result == -1:
        err = _ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)
