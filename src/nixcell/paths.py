"""Where nixcell keeps its files (XDG base directories, overridable for tests).

cache  ($XDG_CACHE_HOME/nixcell):  resolution cache and plan cache — safe to delete.
state  ($XDG_STATE_HOME/nixcell):  GC roots of cached closures; later the proxy CA key.
data   ($XDG_DATA_HOME/nixcell):   the built offline package set.
``NIXCELL_HOME`` puts all three under one directory (tests use it).
"""

from __future__ import annotations

import os
from pathlib import Path


def _base(var: str, default: str, sub: str) -> Path:
    home = os.environ.get("NIXCELL_HOME")
    if home:
        return Path(home) / sub
    root = os.environ.get(var) or str(Path.home() / default)
    return Path(root) / "nixcell"


def cache_dir() -> Path:
    return _base("XDG_CACHE_HOME", ".cache", "cache")


def state_dir() -> Path:
    return _base("XDG_STATE_HOME", ".local/state", "state")


def data_dir() -> Path:
    return _base("XDG_DATA_HOME", ".local/share", "data")


def mount_dir() -> Path:
    """Empty directories an ordinary user's cells mount over inside their own namespaces
    (workspace volumes, --disk scratch): beside the state, never inside anything of nixcell's
    that a writable bind is refused for."""
    home = os.environ.get("NIXCELL_HOME")
    if home:
        return Path(home) / "mnt"
    return state_dir().parent / "nixcell-mnt"


def offline_dir() -> Path:
    """The built offline package set; ``NIXCELL_OFFLINE_DIR`` overrides."""
    override = os.environ.get("NIXCELL_OFFLINE_DIR")
    return Path(override) if override else data_dir() / "offline"
