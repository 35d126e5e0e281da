"""Whether this host has a ``<nixpkgs>``, found with stats only (no nix call, no ``pathlib``).

Apart from ``pins.py`` because the CLI's warm path (``cli/fast.py``) keys its plan cache on it
and must not import ``pins``' dataclasses and regular expressions to do so.
"""

from __future__ import annotations

import os


def host_has_nixpkgs() -> str | None:
    """The ``<nixpkgs>`` this host would use, or None."""
    for entry in os.environ.get("NIX_PATH", "").split(":"):
        if entry.startswith("nixpkgs="):
            return entry.removeprefix("nixpkgs=")
        if entry and "=" not in entry:
            from pathlib import Path  # spelled as before: the result names a package source

            if os.path.exists(Path(entry, "nixpkgs")):
                return str(Path(entry, "nixpkgs"))
    candidates = [
        os.path.join(os.environ.get("HOME") or "/nonexistent", ".nix-defexpr/channels/nixpkgs"),
        f"/nix/var/nix/profiles/per-user/{_user()}/channels/nixpkgs",
        "/nix/var/nix/profiles/per-user/root/channels/nixpkgs",
    ]
    for path in candidates:
        if os.path.exists(path):  # False for an unreadable directory (another user's home)
            return path
    return None


def _user() -> str:
    return os.environ.get("USER") or str(os.getuid())
