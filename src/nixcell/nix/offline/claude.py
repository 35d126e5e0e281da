"""claude-code: Anthropic's native build from npm, a Bun single-file executable.

The npm package ``@anthropic-ai/claude-code`` only picks a per-platform optional dependency
(``@anthropic-ai/claude-code-linux-x64``…) holding one ELF file, ``claude``, that needs nothing
beyond glibc. Rewriting its dynamic section breaks Bun's embedded payload, so the binary keeps
its layout with only the interpreter pointed at glibc G (``Stager.fixed_layout``), and the
launcher ``bin/claude`` sets ``LD_LIBRARY_PATH=G/lib`` so that the loader finds G's libraries.
Programs claude starts inherit that variable: the set's own programs use the same G, so it
changes nothing for them (a user's own LD_LIBRARY_PATH is replaced, not extended).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from nixcell.nix.offline.stage import SourceMissing, Stager

MAJOR = "2"
_PLATFORMS = {"x86_64": "linux-x64", "aarch64": "linux-arm64"}
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+-]*")  # semver's characters: safe in a store name


def npm_package() -> str | None:
    """The platform package's name for this machine, or None where there is no glibc build."""
    platform = _PLATFORMS.get(os.uname().machine)
    return f"@anthropic-ai/claude-code-{platform}" if platform else None


def package_dir(prefix: Path) -> Path | None:
    name = npm_package()
    return prefix / "node_modules" / name if name else None


def binary(prefix: Path) -> Path | None:
    pkg = package_dir(prefix)
    return pkg / "claude" if pkg else None


def version(prefix: Path) -> str | None:
    pkg = package_dir(prefix)
    try:
        found = json.loads((pkg / "package.json").read_text()).get("version") if pkg else None
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and _VERSION.fullmatch(found) else None


def stage(s: Stager, prefix: Path) -> None:
    exe = binary(prefix)
    if exe is None:
        raise SourceMissing(f"no glibc build of claude-code for {os.uname().machine}")
    if not exe.is_file():
        raise SourceMissing(f"missing {exe}")
    if s.glibc is None:
        raise SourceMissing("claude-code is staged against glibc")
    s.fixed_layout(exe, "libexec/claude-code/claude")
    license_file = exe.parent / "LICENSE.md"
    if license_file.is_file():
        s.file(license_file, "share/doc/claude-code/LICENSE.md", mode=0o644)
    s.wrapper(
        "bin/claude",
        ["@/libexec/claude-code/claude"],
        {"LD_LIBRARY_PATH": f"{s.glibc.path}/lib"},
    )
