"""Staging: copy host files into a directory that will become one self-contained store path.

A recipe adds files (binaries, trees, launchers); ``finish`` then copies every non-glibc library
those ELF files need (per ``ldd``) into ``lib/`` and points every dynamic object at glibc G:
executables get G's loader as interpreter, everything dynamic gets a RUNPATH of
``$ORIGIN/<rel>/lib:G/lib``. Every host file read is recorded with its ``lstat`` so a later build
can tell, with one stat each, whether anything changed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nixcell.errors import NixError
from nixcell.nix.offline import elf
from nixcell.nix.offline.wrapper import compile_wrapper

logger = logging.getLogger(__name__)

# Sonames that glibc (store path G) provides; everything else is copied beside the program.
GLIBC_SONAMES = frozenset(
    {
        "ld-linux-x86-64.so.2",
        "ld-linux-aarch64.so.1",
        "libc.so.6",
        "libm.so.6",
        "libmvec.so.1",
        "libpthread.so.0",
        "libdl.so.2",
        "librt.so.1",
        "libresolv.so.2",
        "libutil.so.1",
        "libanl.so.1",
        "libnsl.so.1",
        "libBrokenLocale.so.1",
        "libthread_db.so.1",
        "libc_malloc_debug.so.0",
        "libmemusage.so",
        "libpcprofile.so",
        "libnss_compat.so.2",
        "libnss_dns.so.2",
        "libnss_files.so.2",
        "libnss_hesiod.so.2",
    }
)

_LDD_LINE = re.compile(r"^\s+(\S+)(?: => (not found|\S+))?")


class SourceMissing(NixError):
    """A host file a recipe needs is absent: that package cannot be built here."""


@dataclass(frozen=True)
class Glibc:
    path: str  # store path G
    loader: str  # basename of the dynamic loader, e.g. ld-linux-x86-64.so.2

    @property
    def interpreter(self) -> str:
        return f"{self.path}/lib/{self.loader}"


class Stager:
    """Builds one staging directory; ``inputs`` lists every host path read (for fingerprints)."""

    def __init__(self, root: Path, glibc: Glibc | None) -> None:
        self.root = root
        self.glibc = glibc
        self.inputs: dict[str, tuple[int, int, int]] = {}
        self._optional: set[Path] = set()
        self._fixed_layout: set[Path] = set()
        self._preload: dict[Path, list[str]] = {}
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)

    # -- recording ---------------------------------------------------------------------------
    def record(self, path: Path | str) -> None:
        st = os.lstat(path)
        self.inputs[str(path)] = (st.st_size, st.st_mtime_ns, st.st_ino)

    def need(self, *candidates: str) -> Path:
        """The first existing host path among ``candidates`` (recorded), else SourceMissing."""
        for c in candidates:
            if os.path.exists(c):
                return Path(c)
        raise SourceMissing(f"missing on this host: {' or '.join(candidates)}")

    # -- adding files ------------------------------------------------------------------------
    def _dest(self, rel: str) -> Path:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest

    def file(self, src: Path | str, rel: str, *, mode: int | None = None) -> Path:
        """Copy a host file (following symlinks) to ``rel``."""
        src = Path(src)
        real = src.resolve()
        self.record(src)
        if real != src:
            self.record(real)
        dest = self._dest(rel)
        shutil.copy2(real, dest)
        os.chmod(dest, mode if mode is not None else (os.stat(real).st_mode & 0o755) | 0o200)
        return dest

    def fixed_layout(self, src: Path | str, rel: str) -> Path:
        """Copy an executable whose file layout must stay as built: only its interpreter is set.

        A Bun single-file program (claude) carries its payload in an ELF section; patchelf's
        ``--set-rpath`` moves sections and the program then segfaults, while ``--set-interpreter``
        alone keeps it working. With no RUNPATH it may need glibc only, which its launcher puts
        on ``LD_LIBRARY_PATH`` (checked in ``finish``).
        """
        dest = self.file(src, rel)
        self._fixed_layout.add(dest)
        return dest

    def symlink(self, rel: str, target: str) -> None:
        dest = self._dest(rel)
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(target)

    def text(self, rel: str, content: str, *, mode: int = 0o644) -> None:
        dest = self._dest(rel)
        dest.write_text(content)
        dest.chmod(mode)

    def tree(
        self,
        src: Path | str,
        rel: str,
        *,
        skip: Callable[[str], bool] = lambda _rel: False,
    ) -> None:
        """Copy a host directory; ELF files in it are optional (dropped if their libs are missing).

        ``skip`` gets paths relative to ``src`` ("a/b.py"). Symlinks inside the tree stay
        symlinks; ones leaving it are replaced by their target file or dropped.
        """
        src = Path(src)
        base = self._dest(rel)
        for dirpath, dirnames, filenames in os.walk(src):
            here = Path(dirpath)
            rel_dir = here.relative_to(src)
            self.record(here)
            (base / rel_dir).mkdir(parents=True, exist_ok=True)
            dirnames[:] = sorted(d for d in dirnames if not skip(str(rel_dir / d)))
            for d in list(dirnames):
                if (here / d).is_symlink():  # os.walk does not descend into dir symlinks
                    self._link_or_copy(here / d, base / rel_dir / d, src)
            for name in sorted(filenames):
                if skip(str(rel_dir / name)):
                    continue
                self._link_or_copy(here / name, base / rel_dir / name, src)

    def _link_or_copy(self, path: Path, dest: Path, top: Path) -> None:
        if path.is_symlink():
            target = os.readlink(path)
            resolved = (path.parent / target).resolve()
            if not os.path.isabs(target) and resolved.is_relative_to(top.resolve()):
                self.record(path)
                dest.symlink_to(target)
                return
            if not resolved.is_file():
                logger.debug("dropping symlink %s -> %s", path, target)
                return
            self.record(path)
            self.record(resolved)
            path = resolved
        elif not path.is_file():
            return
        else:
            self.record(path)
        shutil.copy2(path, dest)
        os.chmod(dest, (os.stat(path).st_mode & 0o755) | 0o200)
        if elf.is_elf(dest):
            self._optional.add(dest)

    def wrapper(self, rel: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """A launcher at ``rel`` (must be ``bin/<name>``); see wrapper.py for the ``@`` syntax."""
        if not rel.startswith("bin/") or "/" in rel[4:]:
            raise ValueError(f"launchers live in bin/: {rel}")
        compile_wrapper(self._dest(rel), argv, env)

    def preload(self, rel: str, sonames: Iterable[str]) -> None:
        """Add DT_NEEDED entries (e.g. libgcc_s, which glibc would otherwise dlopen from /lib)."""
        self._preload.setdefault(self.root / rel, []).extend(sonames)

    # -- the ELF pass ------------------------------------------------------------------------
    def finish(self) -> None:
        """Copy needed libraries into lib/ and repoint every dynamic object at G."""
        if self.glibc is None:
            return
        self._set_interpreters(self._fixed_layout, self.glibc)
        objects = self._elf_objects()
        for obj in self._fixed_layout:
            objects.pop(obj, None)
        for obj, sonames in self._preload.items():
            for soname in sonames:
                subprocess.run(["patchelf", "--add-needed", soname, str(obj)], check=True)
        libs = self._resolve(objects)
        libdir = self.root / "lib"
        for soname, host in sorted(libs.items()):
            dest = libdir / soname
            if dest.exists():
                continue
            self.file(host, f"lib/{soname}", mode=0o755)
            objects[dest] = elf.read_elf(dest)
        for path, info in sorted(objects.items()):
            if info is None or not info.dynamic:
                continue
            rel = os.path.relpath(libdir, path.parent)
            origin = "$ORIGIN" if rel == "." else f"$ORIGIN/{rel}"
            argv = ["patchelf", "--set-rpath", f"{origin}:{self.glibc.path}/lib"]
            if info.interpreter is not None:
                argv += ["--set-interpreter", self.glibc.interpreter]
            proc = subprocess.run([*argv, str(path)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise NixError(f"patchelf failed on {path.name}", detail=proc.stderr)

    @staticmethod
    def _set_interpreters(paths: Iterable[Path], glibc: Glibc) -> None:
        for path in sorted(paths):
            info = elf.read_elf(path)
            if info is None or info.interpreter is None:
                raise NixError(f"{path.name} is not a dynamic executable")
            foreign = sorted(set(info.needed) - GLIBC_SONAMES)
            if foreign:
                raise SourceMissing(f"{path.name} needs libraries beyond glibc: {foreign}")
            argv = ["patchelf", "--set-interpreter", glibc.interpreter, str(path)]
            proc = subprocess.run(argv, capture_output=True, text=True)
            if proc.returncode != 0:
                raise NixError(f"patchelf failed on {path.name}", detail=proc.stderr)

    def _elf_objects(self) -> dict[Path, elf.ElfInfo | None]:
        found: dict[Path, elf.ElfInfo | None] = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                p = Path(dirpath, name)
                if not p.is_symlink() and elf.is_elf(p):
                    found[p] = elf.read_elf(p)
        return found

    def _resolve(self, objects: dict[Path, elf.ElfInfo | None]) -> dict[str, str]:
        """soname -> host path of every non-glibc library the objects load, transitively."""
        dynamic = sorted(p for p, i in objects.items() if i is not None and i.dynamic)
        libs: dict[str, str] = {}
        for path, deps in _ldd(dynamic).items():
            missing = [name for name, host in deps if host is None]
            if missing:
                if path in self._optional:
                    logger.warning("dropping %s: needs missing %s", path.name, ", ".join(missing))
                    path.unlink()
                    del objects[path]
                    continue
                raise SourceMissing(f"{path.name} needs libraries missing here: {missing}")
            for name, host in deps:
                soname = os.path.basename(name)
                if soname not in GLIBC_SONAMES and host is not None:
                    libs.setdefault(soname, host)
        return libs


def _ldd(paths: list[Path]) -> dict[Path, list[tuple[str, str | None]]]:
    """Run ldd in batches; maps each file to its (name, host path or None if not found) deps."""
    result: dict[Path, list[tuple[str, str | None]]] = {}
    for i in range(0, len(paths), 200):
        batch = paths[i : i + 200]
        proc = subprocess.run(["ldd", *map(str, batch)], capture_output=True, text=True)
        current: Path | None = batch[0] if len(batch) == 1 else None
        for line in proc.stdout.splitlines():
            if not line.startswith(("\t", " ")):
                current = Path(line.rstrip(":"))
                continue
            m = _LDD_LINE.match(line)
            if current is None or m is None or "=>" not in line:
                continue  # vdso, the loader line, "statically linked"
            name, host = m.group(1), m.group(2)
            result.setdefault(current, []).append((name, None if host == "not found" else host))
    for p in paths:
        result.setdefault(p, [])
    return result


def host_files(names: Iterable[str], dirs: Sequence[str] = ("/usr/bin", "/bin")) -> list[Path]:
    """Existing host programs among ``names`` (first matching dir wins)."""
    out = []
    for name in names:
        for d in dirs:
            p = Path(d, name)
            if p.exists():
                out.append(p)
                break
    return out
