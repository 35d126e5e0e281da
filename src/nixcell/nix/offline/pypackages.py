"""``python3Packages.*`` of the offline set: Debian's python3-* packages for the host python3.

A Debian python package puts its modules in ``/usr/lib/python3/dist-packages`` (``dpkg -L`` says
which files are its own). They are copied to ``lib/python3.X/site-packages`` — the layout of a
nixpkgs python package, so the set's ``buildEnv`` and the plan's ``PYTHONPATH`` treat both
alike. Compiled extensions go through the Stager's ELF pass like any program: the libraries
they load (libyaml, BLAS, LAPACK, libgfortran, …) are copied beside them, so the package's
closure is itself plus glibc. Test suites are left out, and every module gets an unchecked-hash
``.pyc`` (the store's mtime of 1 would make timestamp pycs stale on every import).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from nixcell.nix.offline.python import compile_pycs, find_python
from nixcell.nix.offline.stage import SourceMissing, Stager

if TYPE_CHECKING:
    from nixcell.nix.offline.recipe import Context

DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
_SKIP_DIRS = {"tests", "test", "__pycache__"}


def deb_files(deb: str) -> list[Path]:
    """The files an installed Debian package owns (``dpkg -L``); SourceMissing if absent."""
    try:
        proc = subprocess.run(["dpkg-query", "-L", deb], capture_output=True, text=True)
    except OSError as exc:
        raise SourceMissing(f"dpkg-query not usable: {exc}") from None
    if proc.returncode != 0:
        raise SourceMissing(f"Debian package {deb} is not installed")
    return [Path(line) for line in proc.stdout.splitlines() if line.startswith("/")]


def modules_of(files: list[Path]) -> list[Path]:
    """The package's files under dist-packages, minus test suites and caches."""
    out = []
    for path in files:
        try:
            rel = path.relative_to(DIST_PACKAGES)
        except ValueError:
            continue
        if _SKIP_DIRS.intersection(rel.parts[:-1]) or path.is_symlink() or not path.is_file():
            continue
        out.append(path)
    return out


def python_package(deb: str) -> Callable[[Stager, Context], None]:
    """The stage function of one python3Packages.NAME made from the Debian package ``deb``."""

    def stage(s: Stager, _ctx: Context) -> None:
        binary, version = find_python()
        site = f"lib/python{version}/site-packages"
        modules = modules_of(deb_files(deb))
        if not modules:
            raise SourceMissing(f"{deb} has no modules in {DIST_PACKAGES}")
        for path in modules:
            mode = 0o755 if path.suffix == ".so" else 0o644
            s.file(path, f"{site}/{path.relative_to(DIST_PACKAGES)}", mode=mode)
        compile_pycs(binary, s.root / site)

    return stage
