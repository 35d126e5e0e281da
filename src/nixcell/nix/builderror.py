"""What a failed nix-build said, as one line a user can act on (``resolve._nix_build``).

nix's stderr is matched for the cases nixcell can name (a package the set lacks, a path a Nix
root lacks, a cache's unsigned or corrupt path, a cache refusing this host, a full state dir);
anything else is nix's own first error line. The whole stderr stays in ``detail`` (shown with
``-v``), never in the line itself.
"""

from __future__ import annotations

import json
import re
import subprocess

from nixcell import paths
from nixcell.errors import EvaluationError, NixError
from nixcell.nix.pins import PackageSource

_NOT_IN_ROOT = re.compile(
    r"path '(/nix/store/[0-9a-z]{32}-[^']+)' does not exist and cannot be created"
)
_UNSIGNED = re.compile(r"substitute for '(/nix/store/[^']+)' from '([^']+)' is not signed by any")
_MISMATCH = re.compile(r"hash mismatch importing path '(/nix/store/[^']+)'")
_UNAUTHORIZED = re.compile(r"unable to download '([^']+)': HTTP error 401")
_UNKNOWN = re.compile(r"nixcell-unknown-packages: ([^\n]+)")


def build_error(lines: list[str], source: PackageSource, root: str | None = None) -> NixError:
    from nixcell.nix.missing import unknown_packages

    text = "\n".join(lines)
    unknown = _UNKNOWN.search(text)
    if unknown:
        names = unknown.group(1).strip().split(" ")
        error = unknown_packages(names, known_names(source), source.description)
        error.detail = text
        return error
    for full in ("No space left on device", "Read-only file system", "Disk quota exceeded"):
        if full in text and str(paths.state_dir()) in text:
            return NixError(
                f"cannot keep the resolution's GC root in {paths.state_dir()}: {full.lower()} "
                "(nixcell's state dir; free space, or point XDG_STATE_HOME or NIXCELL_HOME "
                "elsewhere)",
                detail=text,
            )
    missing = _NOT_IN_ROOT.search(text)
    unsigned = _UNSIGNED.search(text)
    if missing and unsigned:
        return NixError(
            f"refused {unsigned.group(1)} from the binary cache "
            f"{re.sub(r'//[^/@]*@', '//', unsigned.group(2))}: it is not "
            "signed by any of the trusted public keys (trusted_public_keys)",
            detail=text,
        )
    mismatch = _MISMATCH.search(text)
    if missing and mismatch:
        return NixError(
            f"refused {mismatch.group(1)} from a binary cache: its contents do not match the "
            "hash its signed narinfo names (a corrupt or tampered cache)",
            detail=text,
        )
    unauthorized = _UNAUTHORIZED.search(text)
    if missing and unauthorized:
        where = re.sub(r"//[^/@]*@", "//", unauthorized.group(1)).split("/nix-cache")[0]
        return NixError(
            f"the binary cache {where} refused this host's credentials (a cluster host with "
            "another store_key?)",
            detail=text,
        )
    if root is not None and missing:
        return NixError(
            f"store path {missing.group(1)} is not in the Nix root {root} and no binary cache "
            "gave it: copy it there (nix copy --to ROOT) or name a cache ([server] substituters)",
            detail=text,
        )
    if "unable to download" in text or "Could not resolve host" in text:
        return NixError(
            f"cannot fetch the {source.description}: no network or wrong pin", detail=text
        )
    first = next((ln for ln in lines if "error:" in ln), lines[-1] if lines else "nix-build failed")
    excerpt = first.split("error:", 1)[-1].strip() or "nix-build failed"
    return EvaluationError(f"nix evaluation failed: {excerpt}", detail=text)


def offline_names() -> dict[str, str]:
    from nixcell.nix.offline import find_set

    found = find_set()
    return dict(found.packages) if found else {}


def known_names(source: PackageSource) -> list[str]:
    from nixcell.nix.resolve import nix_options, nix_tool
    from nixcell.nix.storeroot import nix_root, store_args

    if source.kind == "offline":
        return sorted(offline_names())
    try:
        out = subprocess.run(
            [
                nix_tool("nix-instantiate"),
                *store_args(nix_root()),
                *nix_options(),
                "--eval",
                "--json",
                "-E",
                f"builtins.attrNames {source.expr}",
            ],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            check=True,
        ).stdout
        return list(json.loads(out))
    except (subprocess.SubprocessError, ValueError, OSError):
        return []


