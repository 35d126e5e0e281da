"""Helpers of the issue-13 review probes: a seeded Nix root, and store paths planted in it the
way any path reaches a root (``nix-store --add``: registered valid, as a cache's would be)."""

from __future__ import annotations

import os
import subprocess
import tempfile

from tests.integration.nixcache import offline_paths

BASE = ("bash", "coreutils", "busybox", "dash")


def by_name(name: str) -> str:
    return next(p for p in offline_paths() if p.split("-", 1)[1].startswith(name + "-"))


def closure_of(paths: list[str]) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", *paths], capture_output=True, text=True, check=True)
    return sorted(set(out.stdout.split()))


def base_closure() -> list[str]:
    return closure_of([by_name(n) for n in BASE])


def add_link(root: str, name: str, target: str) -> str:
    """A store path of the root that IS a symbolic link to ``target`` (nix registers it)."""
    with tempfile.TemporaryDirectory(dir="/tmp") as where:
        link = os.path.join(where, name)
        os.symlink(target, link)
        out = subprocess.run(
            ["nix-store", "--store", root, "--option", "substituters", "", "--add", link],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return out.stdout.strip()
