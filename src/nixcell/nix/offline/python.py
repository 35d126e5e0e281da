"""The python3 recipe: the host interpreter, its stdlib, and a working ``venv`` + ensurepip.

Python finds its prefix from its own location (``<root>/lib/python3.X/os.py``), so the binary
needs no wrapper. Three things do need care:
- Debian's ensurepip reads wheels from /usr/share/python-wheels: they are copied into the
  package and ensurepip is pointed at them;
- the store sets every mtime to 1, which makes timestamp-checked ``.pyc`` files stale forever
  (every import would recompile): they are rewritten as unchecked-hash pycs (PEP 552);
- glibc dlopens libgcc_s for ``pthread_exit`` (daemon threads at shutdown) from host paths:
  the interpreter links it up front instead.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from nixcell.errors import NixError
from nixcell.nix.offline.stage import SourceMissing, Stager

if TYPE_CHECKING:
    from nixcell.nix.offline.recipe import Context

logger = logging.getLogger(__name__)

# Directory names dropped anywhere in the stdlib (tests, GUI, build-time bits).
_SKIP_DIRS = {"test", "tests", "idle_test", "idlelib", "tkinter", "turtledemo", "__phello__"}
_SKIP_TOP = {"dist-packages", "site-packages", "EXTERNALLY-MANAGED", "sitecustomize.py"}

# venv writes `home = dirname(sys._base_executable)`; through a buildEnv that is the env's bin/,
# where python finds no stdlib. Resolve it to the interpreter's own store path.
_VENV_LINE = "        dirname, exename = os.path.split(os.path.abspath(executable))"
_VENV_NEW = (
    "        executable = os.path.realpath(executable)  # nixcell: the store path, not an env's\n"
    "        dirname, exename = os.path.split(executable)"
)
_ENSUREPIP_LINE = "_WHEEL_PKG_DIR = sysconfig.get_config_var('WHEEL_PKG_DIR')"
_ENSUREPIP_NEW = "_WHEEL_PKG_DIR = os.path.join(os.path.dirname(__file__), '_wheels')"

# Run by the *target* interpreter (the pyc magic and cache tag must be its own).
_PYC_SCRIPT = r"""
import importlib.util, os, py_compile, sys
MODE = py_compile.PycInvalidationMode.UNCHECKED_HASH
tag, fixed, compiled = sys.implementation.cache_tag, 0, 0
for dirpath, _dirs, files in os.walk(sys.argv[1]):
    if os.path.basename(dirpath) != "__pycache__":
        for name in files:
            src = os.path.join(dirpath, name)
            if name.endswith(".py") and not os.path.exists(importlib.util.cache_from_source(src)):
                py_compile.compile(src, doraise=False, optimize=0, invalidation_mode=MODE)
                compiled += 1
        continue
    for name in files:
        pyc, parts = os.path.join(dirpath, name), name.split(".")
        src = os.path.join(os.path.dirname(dirpath), parts[0] + ".py")
        bad = parts[-1] != "pyc" or len(parts) not in (3, 4) or parts[1] != tag
        if bad or not os.path.exists(src):
            os.unlink(pyc)
            continue
        with open(src, "rb") as f:
            source = f.read()
        st = os.stat(src)
        with open(pyc, "rb") as f:
            head = f.read(16)
        if (head[:4] == importlib.util.MAGIC_NUMBER and head[4:8] == bytes(4)
                and int.from_bytes(head[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
                and int.from_bytes(head[12:16], "little") == st.st_size & 0xFFFFFFFF):
            with open(pyc, "r+b") as f:
                f.seek(4)
                f.write((1).to_bytes(4, "little") + importlib.util.source_hash(source))
            fixed += 1
        else:
            opt = int(parts[2][4:]) if len(parts) == 4 else 0
            py_compile.compile(src, cfile=pyc, doraise=False, optimize=opt, invalidation_mode=MODE)
            compiled += 1
print(fixed, compiled)
"""


def find_python() -> tuple[Path, str]:
    """The host python3 binary and its X.Y version."""
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        p = Path(cand)
        if p.exists():
            real = p.resolve()
            out = subprocess.run(
                [str(real), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
            )
            if out.returncode == 0:
                return real, out.stdout.strip()
    raise SourceMissing("no host python3 in /usr/bin")


def stage_python(s: Stager, _ctx: Context) -> None:
    binary, ver = find_python()
    stdlib = s.need(f"/usr/lib/python{ver}", f"{binary.parent.parent}/lib/python{ver}")
    exe = f"python{ver}"
    s.file(binary, f"bin/{exe}")
    for alias in ("python3", "python"):
        s.symlink(f"bin/{alias}", exe)
    s.wrapper("bin/pydoc3", [f"@/bin/{exe}", "-m", "pydoc"])

    def skip(rel: str) -> bool:
        parts = rel.split("/")
        if parts[0] in _SKIP_TOP or parts[0].startswith("config-"):
            return True
        return parts[-1] in _SKIP_DIRS

    s.tree(stdlib, f"lib/{exe}", skip=skip)
    _bundle_wheels(s, s.root / f"lib/{exe}/ensurepip")
    _patch(s.root / f"lib/{exe}/venv/__init__.py", _VENV_LINE, _VENV_NEW)
    s.preload(f"bin/{exe}", ["libgcc_s.so.1"])
    compile_pycs(binary, s.root / f"lib/{exe}")


def _bundle_wheels(s: Stager, ensurepip: Path) -> None:
    init = ensurepip / "__init__.py"
    if not init.exists():
        raise SourceMissing("python's ensurepip is missing (Debian: apt install python3-venv)")
    text = init.read_text()
    if _ENSUREPIP_LINE not in text:
        return  # an upstream layout with ensurepip/_bundled: nothing to redirect
    wheels = Path("/usr/share/python-wheels")
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not any(w.name.startswith("pip-") for w in found):
        raise SourceMissing(
            "pip wheel missing in /usr/share/python-wheels (apt install python3-venv)"
        )
    s.record(wheels)
    for w in found:
        s.file(w, str((ensurepip / "_wheels" / w.name).relative_to(s.root)), mode=0o644)
    init.write_text(text.replace(_ENSUREPIP_LINE, _ENSUREPIP_NEW))


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        logger.warning("%s: expected line not found, left unpatched: %s", path.name, old.strip())
        return
    path.write_text(text.replace(old, new, 1))


def compile_pycs(python: Path, tree: Path) -> None:
    """Every module under ``tree`` gets an unchecked-hash pyc (existing ones rewritten)."""
    proc = subprocess.run(
        [str(python), "-I", "-c", _PYC_SCRIPT, str(tree)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise NixError(f"compiling the .pyc files of {tree.name} failed", detail=proc.stderr)
    logger.debug("%s pycs: %s (rewritten, compiled)", tree.name, proc.stdout.strip())
