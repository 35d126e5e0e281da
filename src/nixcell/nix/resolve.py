"""Resolve a cell's packages to a runtime closure: one nix-build, then ``nix-store -qR``.

All packages of a cell (attribute paths, store paths, flake installables) go into ONE generated
``buildEnv`` expression, built in one ``nix-build`` call with a GC root under the state dir.
The result is cached (key: package source + packages + system), so a warm run calls no nix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import random
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path

from nixcell import paths, sealed
from nixcell.errors import (
    NixError,
    NixMissingError,
    StateError,
    UsageError,
)
from nixcell.fsio import private_dir
from nixcell.nix.builderror import build_error, offline_names
from nixcell.nix.closure import STORE_PATH, Closure
from nixcell.nix.pins import PackageSource, _nix_string, source_for
from nixcell.nix.storeroot import has_database, logical_real, nix_root, physical, store_args

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # 2: closures record site_packages; 3: and tools
NIX_OPTIONS = ("--option", "substituters", "")  # nix fetches nothing (no binary cache here)


# (caches, keys, netrc file) one job's nix calls add: the cache of the host that took its
# submit (jobs/hostcache.py); a context variable, so concurrent jobs never share them
JOB_CACHES: ContextVar[tuple[tuple[str, ...], tuple[str, ...], str | None]] = ContextVar(
    "nixcell_job_caches", default=((), (), None)
)


def nix_options() -> tuple[str, ...]:
    """``NIX_OPTIONS``, or the binary caches a job server names (``[server] substituters``,
    passed as ``NIXCELL_SUBSTITUTERS``/``NIXCELL_TRUSTED_PUBLIC_KEYS``) and this job's
    submitting host's (``JOB_CACHES``): a cluster host may receive closures from one instead of
    building them. Nix checks every fetched path's signature against the trusted keys
    (require-sigs stays on): an unsigned path is refused."""
    caches = os.environ.get("NIXCELL_SUBSTITUTERS", "").split()
    keys = os.environ.get("NIXCELL_TRUSTED_PUBLIC_KEYS", "").split()
    extra, extra_keys, netrc = JOB_CACHES.get()
    caches, keys = [*caches, *extra], [*keys, *extra_keys]
    if not caches:
        return NIX_OPTIONS
    options = ("--option", "substituters", " ".join(caches))
    options += ("--option", "trusted-public-keys", " ".join(keys))
    options += ("--option", "require-sigs", "true")  # (whatever NIX_CONFIG or nix.conf says)
    # nix keeps narinfos by cache URL for 30 days (misses for an hour): a cache whose key was
    # rotated, or a new one on an old address, would be judged by stale signatures, and a path a
    # submitting host serves only since a minute ago would stay "missing"
    options += ("--option", "narinfo-cache-positive-ttl", "0")
    options += ("--option", "narinfo-cache-negative-ttl", "0")
    return options + (("--option", "netrc-file", netrc) if netrc else ())


FLAKE_FEATURES = ("--extra-experimental-features", "nix-command flakes")
_ATTR_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_'+-]*(\.[A-Za-z0-9_][A-Za-z0-9_'+-]*)*$")
_STORE_PATH = re.compile(r"^(/nix/store/[0-9a-z]{32}-[^/]+)(/.*)?$")
# nix 2.8's first use of a new binary cache by two processes at once: one loses on the
# narinfo cache's SQLite rows ("constraint failed"); trying again finds them
_RACE = re.compile(r"(constraint failed|database is locked)[^\n]*binary-cache-v6\.sqlite")
_BUILDING = re.compile(r"building '/nix/store/[0-9a-z]{32}-(.+?)\.drv'")

Progress = Callable[[str], None]

_HELPERS = """
  nixcellLookup = root: path: builtins.foldl' (acc: n:
    if acc.ok && builtins.isAttrs acc.value && builtins.hasAttr n acc.value
    then { ok = true; value = acc.value.${n}; } else { ok = false; value = null; })
    { ok = true; value = root; } path;
  nixcellPick = name: root: candidates:
    let found = builtins.filter (r: r.ok) (map (nixcellLookup root) candidates);
    in if found == [] then { nixcellMissing = name; } else (builtins.head found).value;
  nixcellMissing = picked: map (p: p.nixcellMissing)
    (builtins.filter (p: builtins.isAttrs p && p ? nixcellMissing) picked);
  nixcellSystem = builtins.currentSystem;
"""


def system() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) + "-linux"


def _nix_list(items: Sequence[str]) -> str:
    return "[ " + " ".join(_nix_string(i) for i in items) + " ]"


def package_expr(pkg: str, cwd: str | None = None) -> tuple[str, bool, str]:
    """(Nix expression, needs flakes?, cache-key part) for one ``-p`` argument."""
    store = _STORE_PATH.fullmatch(pkg)
    if store:
        return f"(builtins.storePath {_nix_string(store.group(1))})", False, store.group(1)
    if "#" in pkg:
        ref, _, attr = pkg.partition("#")
        ref = _absolute_flake_ref(ref, cwd)
        if attr:
            segs = attr.split(".")
            cands = [["packages", "${sys}", *segs], ["legacyPackages", "${sys}", *segs], segs]
        else:
            cands = [["packages", "${sys}", "default"], ["defaultPackage", "${sys}"]]
        nix_cands = " ".join(
            "[ " + " ".join("nixcellSystem" if s == "${sys}" else _nix_string(s) for s in c) + " ]"
            for c in cands
        )
        flake = f"(builtins.getFlake {_nix_string(ref)})"
        expr = f"(nixcellPick {_nix_string(pkg)} {flake} [ {nix_cands} ])"
        return expr, True, f"{ref}#{attr}|{_flake_stamp(ref)}"
    if not _ATTR_PATH.match(pkg):
        raise UsageError(
            f"invalid package {pkg!r}: expected an attribute path like python3Packages.requests"
        )
    return f"(nixcellPick {_nix_string(pkg)} pkgs [ {_nix_list(pkg.split('.'))} ])", False, pkg


def _absolute_flake_ref(ref: str, cwd: str | None) -> str:
    base = Path(cwd or os.getcwd())
    if ref.startswith("path:") and not ref.startswith("path:/"):
        return "path:" + str((base / ref.removeprefix("path:")).resolve())
    if ref in (".", "..") or ref.startswith(("./", "../")):
        return "path:" + str((base / ref).resolve())
    if ref.startswith("/"):
        return "path:" + ref
    return ref


def _flake_stamp(ref: str) -> str:
    """Local flakes change under us: their files' mtimes are part of the cache key."""
    if not ref.startswith("path:"):
        return ""
    root = Path(ref.removeprefix("path:").split("?", 1)[0])
    stamps = []
    for name in ("flake.nix", "flake.lock"):
        try:
            stamps.append(str((root / name).stat().st_mtime_ns))
        except OSError:
            stamps.append("-")
    return ",".join(stamps)


def build_expression(source: PackageSource, exprs: Sequence[str], tools: Sequence[str] = ()) -> str:
    """One buildEnv of all packages (every name the set lacks is reported at once); with
    ``tools`` (package attrs), a list: the env, then one ``nixcell-tools`` env of those packages
    (a derivation even where the set's packages are plain store paths, so nix-build builds the
    list)."""
    body = "\n    ".join(exprs)
    env = 'pkgs.buildEnv {\n  name = "nixcell-env";\n  ignoreCollisions = true;\n'
    env += "  paths = picked;\n}"
    if tools:
        picks = " ".join(package_expr(t)[0] for t in tools)
        env = f'[ ({env}) (pkgs.buildEnv {{ name = "nixcell-tools"; paths = [ {picks} ]; }}) ]'
    return (
        f"let\n  pkgs = {source.expr};\n{_HELPERS}  picked = [\n    {body}\n  ];\n"
        "  missing = nixcellMissing picked;\n"
        'in if missing != [] then throw "nixcell-unknown-packages: '
        '${builtins.concatStringsSep " " missing}"\n'
        f"else {env}\n"
    )


def cache_key(source: PackageSource, key_parts: Sequence[str], root: str | None = None) -> str:
    material = json.dumps([CACHE_VERSION, source.ident, list(key_parts), system()])
    if root is not None:  # (the machine's own store keeps the keys it always had)
        material += json.dumps(["root", root])
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def resolve(
    packages: Sequence[str],
    pin: str | None = None,
    *,
    cwd: str | None = None,
    progress: Progress | None = None,
    tools: Mapping[str, str] | None = None,
) -> Closure:
    """The closure for these packages; warm: one file read and one stat, no nix.

    ``tools``: program -> package for programs the cell needs even when the packages lack them
    (``spec.closure_tools``); built in the same nix-build, and a tool's closure joins the cell's
    only when env/bin has no program of that name."""
    source = source_for(pin)
    root = nix_root()
    tools = dict(tools or {})
    parts = [package_expr(p, cwd) for p in packages]
    tool_parts = [f"tool:{name}={pkg}" for name, pkg in sorted(tools.items())]
    key = cache_key(source, [k for _, _, k in parts] + tool_parts, root)
    cache_file = sealed.cache_file("resolve", f"{key}.json")
    cached = _read_cache(cache_file, root) if cache_file is not None else None
    if cached is not None:
        return cached
    if source.kind == "offline":  # exact answers with no nix call (and no network try)
        from nixcell.nix.missing import check_offline

        refs = [k.split("#", 1)[0] if flake else "" for _, flake, k in parts]
        check_offline(packages, offline_names(), refs)
    tool_pkgs = sorted(set(tools.values()))
    expr = build_expression(source, [e for e, _, _ in parts], tool_pkgs)
    flakes = any(f for _, f, _ in parts)
    gcroot = Path(private_dir(paths.state_dir() / "gcroots")) / key
    outs = _nix_build(expr, gcroot, flakes=flakes, source=source, progress=progress, root=root)
    if len(outs) != 1 + bool(tool_pkgs):
        raise NixError(f"nix-build gave {len(outs)} outputs", detail="\n".join(outs))
    env_path = outs[0]
    if source.is_default_offline and progress is not None and _first_notice("offline-default"):
        progress(
            "no nixpkgs found on this host: using nixcell's offline package set (host binaries); "
            "use --nixpkgs nixos-24.11 or NIX_PATH=nixpkgs=PATH for real nixpkgs"
        )
    closure_paths = _query_closure(env_path, root)
    programs = _listing(root, f"{env_path}/bin")
    sites = tuple(
        f"{env_path}/lib/{name}/site-packages"
        for name in _listing(root, f"{env_path}/lib")
        if name.startswith("python3.") and _is_dir(root, f"{env_path}/lib/{name}/site-packages")
    )
    links: dict[str, str] = {}
    for name in sorted(tools):
        if name not in programs:
            try:
                links[name] = _tool_program(outs[1], name, root)
            except OSError as exc:  # (a link loop in the store)
                raise NixError(f"the {source.description}'s {tools[name]}: {exc}") from None
            if not os.path.lexists(physical(root, links[name])):
                raise NixError(f"the {source.description}'s {tools[name]} has no bin/{name}")
    if links:  # the tools' packages, not the tools env (the links point past it)
        closure_paths = tuple(
            sorted({*closure_paths, *(p for p in _query_closure(outs[1], root) if p != outs[1])})
        )
    closure = Closure(
        env_path, closure_paths, tuple(packages), source.description, programs, sites, links
    )
    verify_in_store(closure, root)
    if cache_file is not None:
        sealed.store("resolve", cache_file, json.dumps(closure.to_json()).encode())
    return closure


def _listing(root: str | None, path: str) -> tuple[str, ...]:
    """The names in a store directory, its links followed as in the cell (a buildEnv links a
    directory only one package has)."""
    try:
        return tuple(sorted(os.listdir(physical(root, logical_real(root, path)))))
    except OSError:
        return ()


def _is_dir(root: str | None, path: str) -> bool:
    try:
        return os.path.isdir(physical(root, logical_real(root, path)))
    except OSError:
        return False


def _tool_program(tools_env: str, name: str, root: str | None = None) -> str:
    """``<package>/bin/<name>`` behind the tools env's ``bin/<name>``: buildEnv links it with an
    absolute link (the offline set's) or links the whole ``bin`` (nixpkgs' when one package has
    it); a relative link (busybox's applets) stays, it points within the package. The cell's
    link keeps the name: busybox picks its applet from it. Closure.check holds the result to a
    closure path."""
    here = os.path.join(logical_real(root, os.path.join(tools_env, "bin")), name)
    for _ in range(8):
        try:
            target = os.readlink(physical(root, here))
        except OSError:
            break  # a file (or nothing: the caller says so)
        if not target.startswith("/"):
            break
        here = os.path.join(logical_real(root, os.path.dirname(target)), os.path.basename(target))
    return here


def _first_notice(name: str) -> bool:
    """True the first time in this state dir (a marker file remembers it): a notice that says
    where packages come from is news once; when it matters (a package the set lacks) the
    error says it again. Unwritable state: True (shown again rather than never)."""
    try:
        marker = Path(private_dir(paths.state_dir() / "notices")) / name
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        return False
    except (OSError, StateError):
        return True
    return True


def _read_cache(cache_file: Path, root: str | None = None) -> Closure | None:
    """The cached closure if this nixcell sealed it and it still makes sense; else None (logged).

    The entry was verified against the store when written (``verify_in_store``); here the seal,
    the store-path shapes and the env's presence are checked (no nix call on a warm run).
    """
    payload = sealed.load("resolve", cache_file)
    if payload is None:
        return None
    try:
        closure = Closure.from_json(json.loads(payload))
        closure.check()
    except (ValueError, KeyError, TypeError, AttributeError, NixError) as exc:
        log.warning("ignoring the resolve cache entry %s: %s", cache_file, exc)
        return None
    if not os.path.exists(physical(root, closure.env)):  # collected or wiped: resolve again
        return None
    if root is not None and not has_database(root):
        return None  # the root's store was wiped under its files: nix knows none of them
    return closure


def verify_in_store(closure: Closure, root: str | None = None) -> None:
    """Every closure path is a real (not symlinked-away) store path that Nix registered valid
    (in the Nix root's store when there is one: a path fetched there was checked against the
    trusted keys by nix as it arrived).

    Run when a resolution is written to the cache, so a warm run can trust the sealed entry.
    """
    closure.check()
    for path in closure.paths:
        if root is not None and os.path.islink(physical(root, path)):
            raise NixError(  # a backend would bind what the link names on the host: refuse
                f"store path {path} is a symbolic link: with a Nix root of its own, nixcell "
                "does not run closures holding link store paths"
            )
        try:
            real = logical_real(root, path)
        except OSError as exc:
            raise NixError(f"store path {path}: {exc}") from None
        if real != path and not STORE_PATH.fullmatch("/".join(real.split("/", 4)[:4])):
            raise NixError(f"store path {path} points outside the store ({real})")
    proc = subprocess.run(
        [nix_tool("nix-store"), *store_args(root), "--check-validity", *closure.paths],
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0:
        raise NixError("the resolved closure has paths nix does not know", detail=proc.stderr)


def nix_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise NixMissingError(
            f"nix is not installed ({name} not found): install it with `apt install nix-bin` "
            "(Debian/Ubuntu) or from https://nixos.org/download"
        )
    return found


def _nix_build(
    expr: str,
    gcroot: Path,
    *,
    flakes: bool,
    source: PackageSource,
    progress: Progress | None,
    root: str | None = None,
) -> list[str]:
    gcroot.parent.mkdir(parents=True, exist_ok=True)
    if root is not None:  # one nix-build at a time in a root (nix 2.8 processes building and
        # substituting into one fresh chroot store at once were seen to wait on each other for
        # minutes); warm runs call no nix, so only cold resolutions queue here
        from nixcell.nix.storeroot import ensure_store, locked

        ensure_store(root)
        with locked(root, "build"):
            return _build_in(expr, gcroot, flakes, source, progress, root)
    return _build_in(expr, gcroot, flakes, source, progress, root)


def _build_in(
    expr: str,
    gcroot: Path,
    flakes: bool,
    source: PackageSource,
    progress: Progress | None,
    root: str | None,
) -> list[str]:
    argv = [nix_tool("nix-build"), *store_args(root), *nix_options(), "--out-link", str(gcroot)]
    if flakes:
        argv += FLAKE_FEATURES
    argv += ["-E", expr]
    log.debug("nix-build expression:\n%s", expr)
    for attempt in range(5):
        lines, out, code = _run_build(argv, progress)
        if code == 0 and out:
            return out
        if attempt == 4 or not _RACE.search("\n".join(lines)):
            break
        log.info("nix-build met a concurrent nix's first use of a cache: trying again")
        time.sleep(random.uniform(0.05, 0.3) * (attempt + 1))  # (apart: not in step again)
    raise build_error(lines, source, root)


def _run_build(argv: list[str], progress: Progress | None) -> tuple[list[str], list[str], int]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace"
    )
    lines: list[str] = []
    assert proc.stderr is not None and proc.stdout is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        building = _BUILDING.search(line)
        if building and progress is not None:
            progress(f"building {building.group(1)}")
    out = [ln for ln in proc.stdout.read().split() if STORE_PATH.fullmatch(ln)]
    return lines, out, proc.wait()


def _query_closure(env_path: str, root: str | None = None) -> tuple[str, ...]:
    proc = subprocess.run(
        [nix_tool("nix-store"), *store_args(root), "-qR", env_path],
        capture_output=True,
        text=True,
        errors="replace",
    )
    if proc.returncode != 0:
        raise NixError(f"cannot query the closure of {env_path}", detail=proc.stderr)
    return tuple(sorted(proc.stdout.split()))
