"""Closure: what a resolution produced — the env to put on PATH and every store path it needs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Closure:
    """The runtime closure of one cell's packages.

    ``env`` is a store path whose ``bin/`` holds the programs; ``paths`` is exactly
    ``nix-store -qR env`` — the cell sees these store paths and nothing else of ``/nix/store``.
    """

    env: str
    paths: tuple[str, ...]
    packages: tuple[str, ...] = ()
    source: str = ""  # human description: "offline package set", "nixpkgs channel nixos-24.11", …
    programs: tuple[str, ...] = ()  # names in env/bin, recorded at resolution time

    def has_program(self, name: str) -> bool:
        return name in self.programs

    def to_json(self) -> dict[str, object]:
        return {
            "env": self.env,
            "paths": list(self.paths),
            "packages": list(self.packages),
            "source": self.source,
            "programs": list(self.programs),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Closure:
        return cls(
            env=str(data["env"]),
            paths=tuple(str(p) for p in data["paths"]),  # type: ignore[union-attr]
            packages=tuple(str(p) for p in data.get("packages", ())),  # type: ignore[union-attr]
            source=str(data.get("source", "")),
            programs=tuple(str(p) for p in data.get("programs", ())),  # type: ignore[union-attr]
        )
