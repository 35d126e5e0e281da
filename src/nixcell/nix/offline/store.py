"""The nix calls the offline set needs: add, build, root, delete, closure.

Every call passes ``--option substituters ''`` (no binary cache is reachable offline; without it
each call waits on DNS).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from nixcell.errors import NixError, NixMissingError

logger = logging.getLogger(__name__)

NO_SUBSTITUTERS = ("--option", "substituters", "")
STORE_DIR = "/nix/store"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise NixMissingError(f"{name} not found: install nix (Debian: apt install nix-bin)")
    return found


def _run(argv: Sequence[str], what: str) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise NixError(f"{what} failed (exit {proc.returncode})", detail=tail)
    return proc.stdout


def check_tools() -> None:
    for name in ("nix-build", "nix-store", "patchelf"):
        if shutil.which(name) is None:
            if name == "patchelf":
                raise NixError("patchelf not found (Debian: apt install patchelf)")
            _tool(name)


def add_path(path: Path) -> str:
    """Import a directory that references no other store path (its name becomes the path's)."""
    out = _run(
        [_tool("nix-store"), *NO_SUBSTITUTERS, "--add", str(path)], f"nix-store --add {path}"
    )
    return out.strip()


def build(expr: str, *, jobs: int | None = None) -> list[str]:
    """Build a Nix expression evaluating to a list of derivations; return their outputs in order."""
    jobs = jobs or max(1, min(8, os.cpu_count() or 1))
    out = _run(
        [
            _tool("nix-build"),
            *NO_SUBSTITUTERS,
            "--max-jobs",
            str(jobs),
            "--no-out-link",
            "-E",
            expr,
        ],
        "nix-build of the offline set",
    )
    return [line for line in out.splitlines() if line.startswith("/")]


def add_root(store_path: str, link: Path) -> None:
    """Register ``link`` as an indirect GC root so nix-collect-garbage keeps ``store_path``."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and os.readlink(link) == store_path:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    _run(
        [
            _tool("nix-store"),
            *NO_SUBSTITUTERS,
            "--realise",
            store_path,
            "--add-root",
            str(link),
            "--indirect",
        ],
        f"rooting {store_path}",
    )


def delete_unrooted(paths: Sequence[str]) -> None:
    """Best-effort delete of build leftovers (imported sources, .drv files).

    ``keep-derivations`` would keep a rooted output's .drv, and the .drv its source import:
    the staging copy would then live in the store twice for nothing.
    """
    present = [p for p in paths if os.path.lexists(p)]
    if not present:
        return
    proc = subprocess.run(
        [
            _tool("nix-store"),
            *NO_SUBSTITUTERS,
            "--option",
            "keep-derivations",
            "false",
            "--delete",
            *present,
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        logger.debug("could not delete build leftovers: %s", proc.stderr.strip())


def deriver(store_path: str) -> str | None:
    out = _run([_tool("nix-store"), *NO_SUBSTITUTERS, "-qd", store_path], "nix-store -qd")
    drv = out.strip()
    return drv if drv.startswith("/") else None


def input_sources(drv: str) -> list[str]:
    """Store paths a .drv refers to (its imported sources and input derivations)."""
    out = _run([_tool("nix-store"), *NO_SUBSTITUTERS, "-q", "--references", drv], "nix-store -q")
    return out.split()


def closure(store_path: str) -> list[str]:
    out = _run([_tool("nix-store"), *NO_SUBSTITUTERS, "-qR", store_path], "nix-store -qR")
    return out.split()


def nix_string(s: str) -> str:
    """Quote ``s`` as a Nix string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'
