"""Building the offline set: stage what changed, build it in one nix-build, root it, record it.

Bootstrap order: busybox first (static, imported with ``nix-store --add``: it references
nothing), then glibc G (a busybox-builder derivation, so that libc.so.6 can name its own loader),
then every other package, staged against G and built by a busybox-builder derivation with G as
input: that is what makes Nix record G as a reference.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from nixcell.errors import NixError, UnknownPackageError
from nixcell.nix.offline import elf, recipe, store
from nixcell.nix.offline.fetch import claude_prefix, node_prefix
from nixcell.nix.offline.recipe import RECIPES, Context
from nixcell.nix.offline.setfile import (
    Entry,
    State,
    inputs_unchanged,
    read_inputs,
    read_state,
    write_inputs,
    write_set,
)
from nixcell.nix.offline.stage import GLIBC_SONAMES, Glibc, SourceMissing, Stager

logger = logging.getLogger(__name__)
Log = Callable[[str], None]


def recipe_hash() -> str:
    """Changes whenever the recipe code does: a new nixcell rebuilds the set."""
    h = hashlib.sha256()
    here = Path(__file__).parent
    for p in sorted([*here.glob("*.py"), *here.glob("*.nix")]):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:32]


@contextmanager
def locked(dest: Path) -> Iterator[None]:
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def wanted(only: list[str] | None) -> list[str]:
    """Recipe names to build, in recipe order; aliases accepted, unknown names rejected."""
    if not only:
        return list(RECIPES)
    names = set()
    for name in only:
        canon = recipe.canonical(name)
        if canon is None:
            known = ", ".join(sorted(RECIPES))
            raise UnknownPackageError(f"no package {name!r} in the offline set (known: {known})")
        names.add(canon)
    return [n for n in RECIPES if n in names]


@dataclass(frozen=True)
class Job:
    """One staged directory waiting for its derivation."""

    name: str  # attr
    store_name: str
    key: str
    stager: Stager
    args: str = ""  # extra Nix attrs for the builder function ("a = 1; b = 2;")


class Builder:
    def __init__(self, dest: Path, log: Log) -> None:
        self.dest = dest
        self.log = log
        self.recipe = recipe_hash()
        # Entries built by another recipe stay usable until rebuilt (their key will not match).
        self.state = read_state(dest) or State()
        self.state.recipe = self.recipe
        self.state.system = recipe.nix_system()

    # -- freshness ---------------------------------------------------------------------------
    def _fresh(self, name: str, key: str) -> bool:
        entry = self.state.packages.get(name)
        if entry is None or entry.key != key or not os.path.exists(entry.path):
            return False
        recorded = read_inputs(self.dest, name)
        if recorded is None or not inputs_unchanged(recorded):
            return False
        store.add_root(entry.path, self.dest / "roots" / name)  # a no-op when the link is there
        return True

    def _key(self, *parts: str) -> str:
        return hashlib.sha256("\0".join((self.recipe, *parts)).encode()).hexdigest()[:32]

    # -- busybox and glibc: the bootstrap ------------------------------------------------------
    def _busybox(self) -> str:
        """Imported as is (static: it references nothing); it is every builder of the set."""
        key = self._key("busybox")
        if not self._fresh("busybox", key):
            host = Path(shutil.which("busybox") or "/bin/busybox").resolve()
            info = elf.read_elf(host) if host.exists() else None
            if info is None or info.dynamic:
                raise NixError("a static busybox is needed (Debian: apt install busybox-static)")
            version = recipe.deb_version("busybox-static")
            name = f"busybox-{version}" if version else "busybox"
            stager = Stager(self.dest / "staging" / name, None)
            stager.file(host, "bin/busybox", mode=0o555)
            applets = subprocess.run(
                [str(host), "--list"], capture_output=True, text=True, check=True
            ).stdout.split()
            for applet in applets:
                if applet != "busybox":
                    stager.symlink(f"bin/{applet}", "busybox")
            self.log(f"busybox: importing {name}")
            self._commit("busybox", store.add_path(stager.root), key, stager)
        return self.state.packages["busybox"].path

    def _glibc(self, busybox: str) -> Glibc:
        libdir, loader = recipe.glibc_dir()
        key = self._key("glibc", str(libdir), busybox)
        if not self._fresh("glibc", key):
            name = recipe.glibc_version()
            stager = Stager(self.dest / "staging" / "glibc", None)
            for soname in sorted(s for s in GLIBC_SONAMES if (libdir / s).exists()):
                stager.file(libdir / soname, f"lib/{soname}", mode=0o755)
            offset = self._placeholder_interp(stager.root / "lib" / "libc.so.6", name, loader)
            args = f"loader = {store.nix_string(loader)}; interpOffset = {offset or 'null'};"
            self.log(f"glibc: staging {name}")
            self._derive([Job("glibc", name, key, stager, args)], "glibc.nix", busybox=busybox)
        return Glibc(self.state.packages["glibc"].path, loader)

    @staticmethod
    def _placeholder_interp(libc: Path, name: str, loader: str) -> int | None:
        """Give libc.so.6 an interpreter slot as long as ``$out/lib/<loader>``; its file offset."""
        info = elf.read_elf(libc)
        if info is None or info.interpreter is None:
            return None
        placeholder = f"{store.STORE_DIR}/{'e' * 32}-{name}/lib/{loader}"
        subprocess.run(["patchelf", "--set-interpreter", placeholder, str(libc)], check=True)
        offset = elf.interp_offset(libc)
        if offset is None:
            raise NixError("patchelf did not leave an interpreter in libc.so.6")
        return offset

    def _commit(self, name: str, path: str, key: str, stager: Stager) -> None:
        store.add_root(path, self.dest / "roots" / name)
        write_inputs(self.dest, name, stager.inputs)
        aliases = list(RECIPES[name].aliases) if name in RECIPES else []
        self.state.packages[name] = Entry(path=path, key=key, aliases=aliases)
        shutil.rmtree(stager.root, ignore_errors=True)

    # -- everything else ---------------------------------------------------------------------
    def run(self, only: list[str] | None) -> State:
        names = wanted(only)
        (self.dest / "staging").mkdir(parents=True, exist_ok=True)
        busybox = self._busybox()
        glibc = self._glibc(busybox)
        ctx = Context(
            busybox=busybox,
            node_prefix=node_prefix(self.dest),
            claude_prefix=claude_prefix(self.dest),
        )
        staged: list[Job] = []
        skipped: list[str] = []
        for name in names:
            r = RECIPES[name]
            key = self._key(name, glibc.path, busybox)
            if self._fresh(name, key):
                self.log(f"{name}: up to date")
                continue
            try:
                store_name = recipe.store_name(r, ctx)
                self.log(f"{name}: staging {store_name}")
                stager = Stager(self.dest / "staging" / name, glibc)
                r.stage(stager, ctx)
                stager.finish()
            except SourceMissing as e:
                hint = r.hint.replace("DIR", str(ctx.node_prefix))
                self.log(f"{name}: skipped ({e}; provide it with: {hint})")
                skipped.append(name)
                shutil.rmtree(self.dest / "staging" / name, ignore_errors=True)
                continue
            staged.append(Job(name, store_name, key, stager))
        if staged:
            self._derive(staged, "package.nix", busybox=busybox, glibc=glibc.path)
        self._prune_roots()
        if only and skipped:
            write_set(self.dest, self.state)
            raise NixError(f"cannot build {', '.join(skipped)} on this host (see the log)")
        return write_set(self.dest, self.state)

    def _prune_roots(self) -> None:
        """Drop GC roots of packages the set no longer has (e.g. after a recipe change)."""
        roots = self.dest / "roots"
        for link in roots.iterdir() if roots.is_dir() else ():
            if link.name not in self.state.packages and link.is_symlink():
                link.unlink()
                (self.dest / "inputs" / f"{link.name}.json").unlink(missing_ok=True)

    def _derive(self, jobs: list[Job], nix_file: str, **inputs: str) -> None:
        """Build staged dirs with the busybox-builder function in ``nix_file``; one nix-build."""
        q = store.nix_string
        function = (Path(__file__).parent / nix_file).read_text()
        items = [
            f"(mk {{ name = {q(job.store_name)}; "
            f"src = builtins.path {{ path = {q(str(job.stager.root))}; "
            f"name = {q(job.store_name + '-src')}; }}; {job.args} "
            f"inherit {' '.join(inputs)} system; }})"
            for job in jobs
        ]
        expr = "\n".join(
            [
                "let",
                f"  mk = ({function});",
                *(f"  {k} = builtins.storePath {q(v)};" for k, v in inputs.items()),
                f"  system = {q(self.state.system)};",
                "in [",
                *items,
                "]",
            ]
        )
        if len(jobs) > 1:
            self.log(f"building {len(jobs)} packages with nix-build")
        outputs = store.build(expr)
        if len(outputs) != len(jobs):
            raise NixError(
                "nix-build returned an unexpected number of outputs", detail="\n".join(outputs)
            )
        leftovers: list[str] = []
        for job, out in zip(jobs, outputs, strict=True):
            self._commit(job.name, out, job.key, job.stager)
            self.log(f"{job.name}: {out}")
            drv = store.deriver(out)
            if drv:
                leftovers += [drv, *(p for p in store.input_sources(drv) if p.endswith("-src"))]
        store.delete_unrooted(leftovers)
