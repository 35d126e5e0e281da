"""``NIX_SANDBOX_ENVS``: flake references built into mkSandbox artifacts at start.

Each reference is built with ``nix build``, as nix-sandbox-mcp built it
(``packages.<system>.ATTR``, ``legacyPackages``, then ``ATTR``; without ``#``, the default
package), its output kept alive by a GC root under nixcell's state directory, and then read like
an artifact of ``NIX_SANDBOX_DIR``. References build concurrently. Offline, only local flakes
(``path:``, ``git+file:``, a directory) whose inputs are local can build; any failure stops the
server with one line naming the reference.

Evaluation is pure, as nix-sandbox-mcp's ``nix build REF`` was: a flake (often someone else's,
``github:org/envs``) cannot read the server's environment (``builtins.getEnv``, where nixcell's
credential sources live) nor host files (``builtins.readFile /home/...``) into the artifact,
whose closure every cell of that environment then sees. ``NIXCELL_IMPURE_FLAKES=1`` opts into
``--impure`` (a flake using an offline set's ``builtins.storePath``); even then nix gets only
the variables of ``IMPURE_ENV`` (and ``NIX_*``/``XDG_*``), never the server's others.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from nixcell.mcp.config import ConfigError

VARIABLE = "NIX_SANDBOX_ENVS"
_REF = re.compile(r"^[^\s,]+$")
BUILD_TIMEOUT = 1800.0
IMPURE_VARIABLE = "NIXCELL_IMPURE_FLAKES"
IMPURE_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "LANG", "LC_ALL", "TZ")


def parse_refs(value: str) -> list[str]:
    """The comma-separated references (blanks around them and empty items ignored)."""
    refs = []
    for item in value.split(","):
        ref = item.strip()
        if not ref:
            continue
        if not _REF.match(ref):
            raise ConfigError(f"{VARIABLE}: {ref!r} is not a flake reference (no spaces)")
        if ref not in refs:
            refs.append(ref)
    return refs


def build_all(refs: list[str], cwd: str, impure: bool = False) -> list[str]:
    """The store path each reference builds to, in order (the first failure is raised)."""
    from nixcell import paths
    from nixcell.fsio import private_dir

    if not refs:
        return []
    roots = Path(private_dir(paths.state_dir() / "gcroots"))  # made once, before the threads
    with ThreadPoolExecutor(max_workers=min(4, len(refs))) as pool:
        return list(pool.map(lambda ref: build(ref, cwd, roots, impure), refs))


def build(ref: str, cwd: str, roots: Path, impure: bool = False) -> str:
    """``nix build REF`` as nix-sandbox-mcp's wrapper ran it (nix resolves the reference, the
    attribute and a relative path, and writes a missing flake.lock, evaluation pure), plus
    nixcell's substituter setting; ``impure``: ``--impure`` with a scrubbed environment."""
    from nixcell.nix.resolve import FLAKE_FEATURES, NIX_OPTIONS, nix_tool
    from nixcell.nix.storeroot import refuse_root

    refuse_root("MCP flake artifacts")  # (they are read from the machine's store)
    digest = hashlib.sha256(f"{cwd}\0{ref}".encode()).hexdigest()[:24]
    gcroot = roots / f"artifact-{digest}"  # keeps the artifact alive (a GC root)
    argv = [nix_tool("nix"), *FLAKE_FEATURES, *NIX_OPTIONS, "build", *(["--impure"] * impure)]
    argv += ["--out-link", str(gcroot), "--", ref]
    env = impure_env(os.environ) if impure else None
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            errors="replace",
            cwd=cwd,
            timeout=BUILD_TIMEOUT,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{VARIABLE}: building {ref} took over {BUILD_TIMEOUT:g} s") from None
    if proc.returncode != 0 or not os.path.islink(gcroot):
        reason = _reason(proc.stderr)
        raise ConfigError(f"{VARIABLE}: building {ref} failed: {reason}", detail=proc.stderr)
    return os.readlink(gcroot)


def impure_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What an impure evaluation may read with ``builtins.getEnv``: nix's own settings and the
    basics, none of the server's other variables (credential sources among them)."""
    return {
        k: v
        for k, v in environ.items()
        if k in IMPURE_ENV or (k.startswith(("NIX_", "XDG_")) and k != "NIX_CONFIG")
    }


def _reason(stderr: str) -> str:
    if any(s in stderr for s in ("unable to download", "Could not resolve host", "getaddrinfo")):
        return (
            "it needs the network, which this host does not give nix (only local path: and "
            "git+file: flakes with local inputs build offline)"
        )
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    first = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else "nix-build failed")
    return first.split("error:", 1)[-1].strip() or "nix-build failed"
