"""Closure: what a resolution produced — the env to put on PATH and every store path it needs."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nixcell.errors import NixError

STORE_DIR = "/nix/store"
# A store path is exactly <store>/<32 chars of Nix's base32>-<name>; names use Nix's character
# set and never start with a dot. No "..", no "/" past the name: nothing else can be spelled.
_NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
STORE_PATH = re.compile(rf"^{STORE_DIR}/[{_NIX_BASE32}]{{32}}-[A-Za-z0-9+_?=-][A-Za-z0-9+._?=-]*$")
_PROGRAM = re.compile(r"^[^/\0]+$")
_SITE = re.compile(rf"^{STORE_DIR}/[^/]+/lib/python3\.[0-9]+/site-packages$")
_LINK = re.compile(r"^(/nix/store/[^/]+)/bin/([^/\0]+)$")


@dataclass(frozen=True)
class Closure:
    """The runtime closure of one cell's packages.

    ``env`` is a store path whose ``bin/`` holds the programs; ``paths`` is exactly
    ``nix-store -qR env`` plus the closures of ``tools`` — the cell sees these store paths and
    nothing else of ``/nix/store``.
    """

    env: str
    paths: tuple[str, ...]
    packages: tuple[str, ...] = ()
    source: str = ""  # human description: "offline package set", "nixpkgs channel nixos-24.11", …
    programs: tuple[str, ...] = ()  # names in env/bin, recorded at resolution time
    # env/lib/python3.X/site-packages directories, recorded at resolution time (PYTHONPATH)
    site_packages: tuple[str, ...] = ()
    # program -> <store path>/bin/<program> of a tool the env's packages lack (spec.py
    # closure_tools: busybox's env for /usr/bin/env); its closure is in ``paths``, not in env/bin
    tools: dict[str, str] = field(default_factory=dict)

    def has_program(self, name: str) -> bool:
        return name in self.programs

    def to_json(self) -> dict[str, object]:
        return {
            "env": self.env,
            "paths": list(self.paths),
            "packages": list(self.packages),
            "source": self.source,
            "programs": list(self.programs),
            "site_packages": list(self.site_packages),
            "tools": dict(self.tools),
        }

    def check(self) -> None:
        """Refuse a closure that could mount anything but store paths (NixError).

        Pure and cheap (run on every load); ``nix.resolve`` adds the checks that touch the
        store (real paths, registered valid) when an entry is written.
        """
        for path in self.paths:
            if not isinstance(path, str) or not STORE_PATH.fullmatch(path):
                raise NixError(f"closure path {path!r} is not a store path under {STORE_DIR}")
        if self.env not in self.paths:
            raise NixError(f"closure env {self.env!r} is not one of its store paths")
        for name in self.programs:
            if not _PROGRAM.fullmatch(name) or name in (".", ".."):
                raise NixError(f"closure program name {name!r} is not a file name")
        for site in self.site_packages:
            if not _SITE.fullmatch(site) or not site.startswith(self.env + "/"):
                raise NixError(f"closure site-packages {site!r} is not in its env")
        for name, target in self.tools.items():
            m = _LINK.fullmatch(target) if isinstance(target, str) else None
            if m is None or m.group(2) != name or m.group(1) not in self.paths:
                raise NixError(f"closure tool {name!r} -> {target!r} is not a closure program")

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Closure:
        return cls(
            env=str(data["env"]),
            paths=tuple(str(p) for p in data["paths"]),  # type: ignore[union-attr]
            packages=tuple(str(p) for p in data.get("packages", ())),  # type: ignore[union-attr]
            source=str(data.get("source", "")),
            programs=tuple(str(p) for p in data.get("programs", ())),  # type: ignore[union-attr]
            site_packages=tuple(str(p) for p in data.get("site_packages", ())),  # type: ignore[union-attr]
            tools={str(k): str(v) for k, v in dict(data.get("tools") or {}).items()},  # type: ignore[call-overload]
        )
