"""Where nixcell keeps its files (XDG base directories, overridable for tests).

cache  ($XDG_CACHE_HOME/nixcell):  resolution cache and plan cache — safe to delete.
state  ($XDG_STATE_HOME/nixcell):  GC roots of cached closures; later the proxy CA key.
data   ($XDG_DATA_HOME/nixcell):   the built offline package set.
``NIXCELL_HOME`` puts all three under one directory (tests use it).

The ``*_root`` functions return strings and import nothing: the CLI's warm path uses them
(``pathlib`` costs ~2.5 ms of start-up); the ``*_dir`` ones are the same paths as ``Path``.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path


def _root(var: str, default: str, sub: str) -> str:
    home = os.environ.get("NIXCELL_HOME")
    if home:
        return os.path.join(home, sub)
    root = os.environ.get(var) or os.path.join(os.path.expanduser("~"), default)
    return os.path.join(root, "nixcell")


def _path(text: str) -> Path:
    from pathlib import Path

    return Path(text)


def cache_root() -> str:
    return _root("XDG_CACHE_HOME", ".cache", "cache")


def state_root() -> str:
    return _root("XDG_STATE_HOME", ".local/state", "state")


def offline_root() -> str:
    """The built offline package set; ``NIXCELL_OFFLINE_DIR`` overrides."""
    override = os.environ.get("NIXCELL_OFFLINE_DIR")
    if override:
        return override
    return os.path.join(_root("XDG_DATA_HOME", ".local/share", "data"), "offline")


def cache_dir() -> Path:
    return _path(cache_root())


def state_dir() -> Path:
    return _path(state_root())


def data_dir() -> Path:
    return _path(_root("XDG_DATA_HOME", ".local/share", "data"))


def mount_dir() -> Path:
    """Empty directories an ordinary user's cells mount over inside their own namespaces
    (workspace volumes, --disk scratch): beside the state, never inside anything of nixcell's
    that a writable bind is refused for."""
    home = os.environ.get("NIXCELL_HOME")
    if home:
        return _path(home) / "mnt"
    return state_dir().parent / "nixcell-mnt"


def offline_dir() -> Path:
    """The built offline package set; ``NIXCELL_OFFLINE_DIR`` overrides."""
    return _path(offline_root())
