"""What to tell a user whose packages the package set lacks, in one line they can act on.

The offline set is small (programs copied from this host), so a name from nixpkgs at large
(``ripgrep``) is the common miss: every missing name is listed at once, close names from the set
are suggested, and the way to real nixpkgs is given. A remote flake (``nixpkgs#jq``) cannot be
fetched with the offline set; that is said before nix tries the network.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Sequence

from nixcell.errors import UnknownPackageError, UsageError

REAL_NIXPKGS = "--nixpkgs nixos-24.11 (or NIX_PATH=nixpkgs=PATH) for real nixpkgs"
_LOCAL_FLAKE = ("path:", "/", "./", "../", "~")


def unknown_packages(names: Sequence[str], known: Iterable[str], where: str) -> UnknownPackageError:
    """One error naming every missing package, with close names from ``known`` for each."""
    known = sorted(set(known))
    attrs = [n for n in names if "#" not in n]
    parts = []
    if attrs:
        noun = "package" if len(attrs) == 1 else "packages"
        found = f"unknown {noun} {', '.join(repr(n) for n in attrs)} in the {where}"
        if where.startswith("offline"):
            found += f", which holds only programs copied from this host: use {REAL_NIXPKGS}"
        parts.append(found)
    for flake in (n for n in names if "#" in n):
        ref, _, attr = flake.partition("#")
        parts.append(f"flake {ref} has no package '{attr or 'default'}'")
    message = "; ".join(parts)
    hints = []
    for name in attrs:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            hints.append(", ".join(close) + (f" (for {name})" if len(attrs) > 1 else ""))
    if hints:
        message += f"; did you mean {'; '.join(hints)}?"
    error = UnknownPackageError(message)
    error.names, error.where = tuple(names), where
    return error


def check_offline(packages: Sequence[str], known: dict[str, str], refs: Sequence[str]) -> None:
    """Refuse, before any nix call, what the offline set cannot give: names it lacks and
    flakes that would be fetched. ``refs``: each package's flake ref made absolute ('' if none).
    """
    remote = [p for p, ref in zip(packages, refs, strict=True) if ref and not _local(ref)]
    if remote:
        attrs = [p.partition("#")[2].split(".")[-1] for p in remote]
        offered = [a for a in attrs if a in known]
        hint = f": use -p {' -p '.join(offered)} from the offline set" if offered else ""
        raise UsageError(
            f"cannot fetch flake {', '.join(remote)}: nixcell uses its offline package set here "
            f"(no nixpkgs on this host) and fetches nothing{hint}; or pass {REAL_NIXPKGS}"
        )
    missing = [
        p
        for p, ref in zip(packages, refs, strict=True)
        if not ref and not p.startswith("/nix/store/") and not _in_set(p, known)
    ]
    if missing and not any(refs):  # with local flakes, nix names them all in one go
        raise unknown_packages(missing, known, "offline package set")


def _in_set(attr: str, known: dict[str, str]) -> bool:
    head = attr.split(".")[0]
    return attr in known or head in known or any(k.startswith(head + ".") for k in known)


def _local(ref: str) -> bool:
    return ref.startswith(_LOCAL_FLAKE)


def provider_of(program: str, known: dict[str, str]) -> str | None:
    """The package of the set whose ``bin/`` holds ``program`` (a hint for a run without -p)."""
    if "/" in program:
        return None
    # busybox last: it holds most small programs, the package named for them reads better
    for name, path in sorted(known.items(), key=lambda item: (item[0] == "busybox", item[0])):
        if os.path.lexists(os.path.join(path, "bin", program)):
            return name
    return None
