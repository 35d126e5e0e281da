"""The layout of a store copy (``storecopy.py``) and its manifest's stamp: stdlib only, since
the CLI's warm path checks a cached plan's copy with it (``plancheck.py``)."""

from __future__ import annotations

import os
import stat

MANIFEST = "manifest.json"
PATHS = "paths"  # the entries, bound read-only at /nix/store


def manifest_stamp(store_dir: str) -> str | None:
    """The manifest's identity (inode, size, mtime): every refresh renames a new one in."""
    try:
        st = os.stat(os.path.join(store_dir, MANIFEST), follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def missing_entry(store_dir: str, paths: tuple[str, ...] | list[str]) -> str | None:
    """The first of the store ``paths`` the copy lacks (None: it has them all)."""
    root = os.path.join(store_dir, PATHS)
    for path in paths:
        if not os.path.lexists(os.path.join(root, os.path.basename(path))):
            return path
    return None
