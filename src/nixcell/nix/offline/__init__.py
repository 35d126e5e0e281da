"""The offline package set: the host's own programs as real, self-contained Nix store paths.

No nixpkgs can be fetched offline, so ``build`` turns host binaries into store paths whose
closure is themselves plus one glibc path (see recipe.py for what goes into each package), and
writes ``set.nix``, which the resolver imports like a tiny nixpkgs (attrs + ``buildEnv``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nixcell import paths
from nixcell.nix.offline.build import Builder, locked
from nixcell.nix.offline.fetch import claude_prefix, fetch_claude_code, fetch_node, node_prefix
from nixcell.nix.offline.recipe import RECIPES
from nixcell.nix.offline.setfile import read_state
from nixcell.nix.offline.store import check_tools

__all__ = [
    "RECIPES",
    "OfflineSet",
    "build",
    "claude_prefix",
    "fetch_claude_code",
    "fetch_node",
    "find_set",
    "node_prefix",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OfflineSet:
    nix_file: Path  # set.nix: `import` gives the attrset (packages + buildEnv)
    ident: str  # stable hash of set.nix contents (for cache keys)
    packages: dict[str, str]  # attr name -> store path (aliases included)


def find_set(dest: Path | None = None) -> OfflineSet | None:
    """The built set, or None if it is not built (or a store path of it has vanished)."""
    dest = dest or paths.offline_dir()
    state = read_state(dest)
    nix_file = dest / "set.nix"
    if state is None or not state.packages or not nix_file.exists():
        return None
    packages = state.attrs()
    from nixcell.nix.storeroot import ENV

    # (a Nix root of the host's own receives the set's paths as it needs them, from a cache;
    # a bad root is refused where it is used, not here)
    if not os.environ.get(ENV) and not all(os.path.exists(p) for p in set(packages.values())):
        return None
    return OfflineSet(nix_file=nix_file, ident=state.ident, packages=packages)


def build(
    dest: Path | None = None,
    *,
    only: list[str] | None = None,
    log: Callable[[str], None] = logger.info,
) -> OfflineSet:
    """Build (or bring up to date) the set; a quick no-op when nothing it reads has changed.

    ``only`` limits the work to those packages (glibc and busybox are always there); packages
    whose host files are missing are skipped with a log line, or raise when named in ``only``.
    """
    dest = dest or paths.offline_dir()
    check_tools()
    with locked(dest):
        state = Builder(dest, log).run(only)
    return OfflineSet(nix_file=dest / "set.nix", ident=state.ident, packages=state.attrs())
