"""Where packages come from: the ``--nixpkgs`` pin, turned into a Nix expression.

Pins users write (nix-jail's forms and ours): a channel name (``nixos-24.11``, ``nixos-unstable``),
a 40-hex nixpkgs commit, either with ``#sha256:HASH``; a local path; ``offline``; or nothing, which
means ``<nixpkgs>`` when this host has one and the offline package set otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nixcell.errors import NixError, UsageError
from nixcell.nix.hostpkgs import host_has_nixpkgs

_CHANNEL = re.compile(r"^(nixos|nixpkgs)-(\d\d\.\d\d(-small|-darwin)?|unstable(-small)?)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA256 = re.compile(r"^sha256[:-][A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class PackageSource:
    """A package set: the Nix expression that evaluates to it, and how to name it to users."""

    kind: str  # offline | channel | commit | path | nix-path
    expr: str  # Nix expression for the attrset of packages
    ident: str  # stable identity for cache keys
    description: str
    is_default_offline: bool = False


def _nix_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _fetch(url: str, sha256: str | None) -> str:
    if sha256:
        return f"(fetchTarball {{ url = {_nix_string(url)}; sha256 = {_nix_string(sha256)}; }})"
    return f"(fetchTarball {_nix_string(url)})"


def source_for(pin: str | None) -> PackageSource:
    """Decide the package set for a pin; raises UsageError for pins we cannot read."""
    if pin is None or pin == "":
        found = host_has_nixpkgs()
        if found is not None:
            return PackageSource(
                "nix-path",
                f"(import {_nix_string(found)} {{}})",
                f"nix-path:{found}",
                f"nixpkgs at {found}",
            )
        return _offline(default=True)
    if pin == "offline":
        return _offline(default=False)
    base, _, hash_part = pin.partition("#")
    sha256 = None
    if hash_part:
        if not _SHA256.match(hash_part):
            raise UsageError(f"invalid --nixpkgs {pin!r}: expected NAME#sha256:HASH")
        sha256 = hash_part.split(":", 1)[-1] if ":" in hash_part else hash_part[7:]
    if _CHANNEL.match(base):
        url = f"https://nixos.org/channels/{base}/nixexprs.tar.xz"
        return PackageSource(
            "channel",
            f"(import {_fetch(url, sha256)} {{}})",
            f"channel:{pin}",
            f"nixpkgs channel {base}",
        )
    if _COMMIT.match(base):
        url = f"https://github.com/NixOS/nixpkgs/archive/{base}.tar.gz"
        return PackageSource(
            "commit",
            f"(import {_fetch(url, sha256)} {{}})",
            f"commit:{pin}",
            f"nixpkgs commit {base[:12]}",
        )
    if base.startswith(("/", "./", "../", "~")) and not hash_part:
        try:
            path = Path(base).expanduser().resolve()
        except RuntimeError:  # ~user of a user that does not exist
            raise UsageError(f"--nixpkgs {base}: no such user's home directory") from None
        if not path.exists():
            raise UsageError(f"--nixpkgs {base}: no such file or directory")
        return PackageSource(
            "path", f"(import {_nix_string(str(path))} {{}})", f"path:{path}", f"nixpkgs at {path}"
        )
    raise UsageError(
        f"invalid --nixpkgs {pin!r}: use a channel (nixos-24.11, nixos-unstable), a 40-hex commit, "
        "a local path, or 'offline'"
    )


def _offline(*, default: bool) -> PackageSource:
    from nixcell.nix.offline import find_set

    found = find_set()
    if found is None:
        raise NixError(
            "no nixpkgs on this host and the offline package set is not built: run "
            "`nixcell offline build` (./setup does), or pass --nixpkgs nixos-24.11"
        )
    return PackageSource(
        "offline",
        f"(import {_nix_string(str(found.nix_file))})",
        f"offline:{found.ident}",
        "offline package set",
        is_default_offline=default,
    )
