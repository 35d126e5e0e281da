"""``compile_spec(project, command, flags, cwd) -> CellSpec``: a project and ``nixcell run``'s
flags, merged into the one spec every front makes (``make_spec``).

Merge rules (docs/project.md): flags win, lists add. ``-p`` adds packages, ``--ro-bind/--bind/
--hide`` add, ``-e`` overrides keys, the network flags add to the config's (an open mode stays
open), ``--memory/--cpus/--pids/--timeout/--disk/--nixpkgs`` override, ``--network MODE``
overrides the mode. ``flags`` holds the click option values of ``nixcell run`` (missing, None,
empty or False = not given), with the network flags already parsed as ``flags["net"]`` (what
``cli.netflags.network_from_flags`` returns) and ``flags["network"]`` the ``--network`` mode;
``--store``/``--store-dir`` override ``store_mode`` (and ``.nixcell/store``), ``--host-network``
is ``--network host``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from nixcell.errors import UsageError
from nixcell.plan import CELL_HOME
from nixcell.project.levels import LAST, LEVELS, Draft, default_network
from nixcell.project.load import Project
from nixcell.specmessages import CLI_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.spec import CellSpec


def _host_path(project: Project, value: str) -> str:
    """A config path: ``~`` expanded, relative to the project root."""
    return os.path.normpath(os.path.join(project.root, os.path.expanduser(value)))


def _config_binds(d: Draft) -> None:
    """``ro_bind``/``rw_bind``: a missing source is skipped (nixcage does), and listed."""
    config = d.project.config
    binds = []
    for key, writable in (("ro_bind", False), ("rw_bind", True)):
        for value in getattr(config, key):
            src, sep, dst = value.partition(":")
            source = _host_path(d.project, src)
            if d.kind(source) is None:
                d.skipped.append(f"{key} {value}: {source} does not exist, skipped")
                continue
            if sep and dst:
                target = CELL_HOME + dst[1:] if dst.startswith("~") else dst
            else:
                target = d.cell_path(source)
            target = os.path.normpath(target)
            _target_can_be_made(d, key, value, target)
            binds.append((source, target, writable))
    for source, target, writable in binds:
        d.bind(source, target, writable)  # compile_spec orders all mounts, parents first


def mount_depth(target: str) -> int:
    """How deep a mount target is: binds go in this order (a stable sort), so that a parent
    mounted after its child does not cover it (``ro_bind ~/x/s`` with ``rw_bind ~/x`` would
    otherwise leave ``~/x/s`` writable)."""
    return os.path.normpath(target).count("/")


def _target_can_be_made(d: Draft, key: str, value: str, target: str) -> None:
    """A missing target inside the mounted project would be made by bwrap on the host, and one
    under a read-only home cannot be made at all: refused, naming the key."""
    if d.project_mounted and _within(target, d.project.root):
        host = target
    elif d.home_mode == "readonly" and _within(target, CELL_HOME):
        host = d.home + target[len(CELL_HOME) :]
    else:
        return
    if d.kind(host) is None:
        raise UsageError(
            f"{d.project.where('sandbox.filesystem', key)}: {value}: {target} does not exist "
            "in the cell and cannot be made there without writing the host: create it first"
        )


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def _blacklist(d: Draft) -> None:
    """Hidden when it exists and a mount shows it (otherwise the cell cannot see it anyway)."""
    for value in d.project.config.blacklist:
        hidden = d.to_hide(_host_path(d.project, value))
        if hidden is not None and hidden not in d.hide:
            d.hide.append(hidden)


def draft(project: Project, cwd: str) -> Draft:
    """The project's cell before flags: its level's pieces, its binds, its protections."""
    d = Draft(project=project, where=os.path.abspath(cwd), home=os.path.expanduser("~"))
    for piece in LEVELS[project.level]:
        piece(d)
    _config_binds(d)
    _blacklist(d)
    for piece in LAST:
        piece(d)
    return d


def network_mode(project: Project, flags: Mapping[str, object]) -> str:
    """none | proxy | open | host: ``--network``, else the config's mode, else ``allow``,
    else proxy when hosts or a policy are named, else the level's default."""
    config = project.config
    if flags.get("network"):
        if flags.get("host_network") and flags["network"] != "host":
            raise UsageError(f"--host-network and --network {flags['network']} contradict")
        return str(flags["network"])
    if flags.get("host_network"):
        return "host"
    if config.mode is not None:
        return config.mode
    if config.allow is not None:
        return "open" if config.allow else "none"
    if config.allow_hosts or config.allow_cidrs or config.policy:
        return "proxy"
    return default_network(project.level)


def _network(project: Project, flags: Mapping[str, object]) -> tuple[dict | None, bool]:
    """(the spec's network, host_network)."""
    from nixcell.project.state import audit_dir

    config = project.config
    net = dict(flags.get("net") or {})  # type: ignore[call-overload]
    mode = network_mode(project, flags)
    if mode == "host":
        if net:
            raise UsageError("network mode 'host' takes no network flags (no proxy, no policy)")
        return None, True
    config_lists = {
        "allow_hosts": config.allow_hosts,
        "deny_hosts": config.deny_hosts,
        "allow_cidrs": config.allow_cidrs,
        "policy_files": config.policy,
        "credentials": config.credentials,
    }
    if mode == "none" and not net:
        return None, False
    if mode == "none" and flags.get("network") == "none":
        raise UsageError("--network none takes no other network flags")
    out: dict[str, object] = dict(net)
    for key, values in config_lists.items():
        out[key] = list(dict.fromkeys([*(values if mode != "none" else ()), *net.get(key, ())]))
    if mode == "open":
        out["allow_hosts"] = list(dict.fromkeys(["*", *out["allow_hosts"]]))  # type: ignore[list-item]
    audit = net.get("audit") or config.audit
    if audit is None and mode == "open":
        audit = os.path.join(audit_dir(project.root), "audit.jsonl")
    out["audit"] = audit
    return out, False


def spec_names(project: Project) -> dict[str, str]:
    """How spec errors name each field: the config key (and its line), or the flag."""
    w = project.where
    both = {
        "packages": f"{w('nix', 'packages')} (or -p)",
        "nixpkgs": f"{w('nix', 'nixpkgs')} (or --nixpkgs)",
        "env": f"{w('cage', 'env')} (or -e)",
        "pass_env": f"{w('cage', 'passthrough_env')} (or --pass-env)",
        "command": f"{w('cage', 'command')} (or COMMAND)",
        "mounts": f"{w('sandbox.filesystem', 'ro_bind')}/rw_bind (or --ro-bind/--bind)",
        "hide": f"{w('sandbox.filesystem', 'blacklist')} (or --hide)",
    }
    for key in ("memory", "cpus", "pids", "timeout", "disk"):
        both[f"limits.{key}"] = f"{w('sandbox.resources', key)} (or --{key})"
    return {**CLI_NAMES, **both}


def _packages(project: Project, flags: Mapping[str, object]) -> list[str]:
    config = project.config
    packages = list(config.packages)
    if config.flake is not None:
        packages = [p if "#" in p or p.startswith("/") else f"{config.flake}#{p}" for p in packages]
    return [*packages, *(flags.get("packages") or ())]  # type: ignore[misc]


def _flag_binds(flags: Mapping[str, object]) -> list[dict[str, object]]:
    mounts = []
    for key, writable in (("ro_bind", False), ("bind", True)):
        for value in flags.get(key) or ():  # type: ignore[attr-defined]
            src, sep, dst = str(value).partition(":")
            if not src:
                flag = "--ro-bind" if key == "ro_bind" else "--bind"
                raise UsageError(f"{flag} needs SRC[:DST], got {value!r}")
            src = os.path.abspath(os.path.expanduser(src))
            mounts.append(
                {"source": src, "target": dst if sep and dst else src, "writable": writable}
            )
    return mounts


def _flag_env(flags: Mapping[str, object]) -> dict[str, str]:
    env = {}
    for item in flags.get("env") or ():  # type: ignore[attr-defined]
        key, sep, value = str(item).partition("=")
        if not sep:
            raise UsageError(f"-e needs K=V, got {item!r}")
        env[key] = value
    return env


def compile_spec(
    project: Project, command: list[str] | tuple[str, ...], flags: Mapping[str, object], cwd: str
) -> CellSpec:
    """The CellSpec of ``command`` (empty: ``[cage] command``) run in ``project`` from ``cwd``
    with ``flags``. Call ``ensure_state(project)`` first (it makes the dirs bound here)."""
    from nixcell.spec import make_spec

    config = project.config
    command = list(command) or list(config.command)
    if not command:
        raise UsageError(
            f"no command: give one after `--`, or set [cage] command in {project.found.path}"
        )
    d = draft(project, cwd)
    network, host_network = _network(project, flags)
    limits = {
        k: flags.get(k) if flags.get(k) is not None else getattr(config, k)
        for k in ("memory", "cpus", "pids", "timeout", "disk")
    }
    env = {**d.env, **config.env, **_flag_env(flags)}
    hides = [os.path.abspath(os.path.expanduser(str(h))) for h in flags.get("hide") or ()]  # type: ignore[attr-defined]
    store = str(flags.get("store") or config.store_mode)
    store_dir = None
    if flags.get("store_dir"):
        store_dir = os.path.abspath(os.path.expanduser(str(flags["store_dir"])))
    elif store in ("copy", "isolated"):
        store_dir = os.path.join(project.root, ".nixcell", "store")
    workdir = flags.get("workdir")
    if flags.get("interactive") and flags.get("no_tty"):
        raise UsageError("-i/--interactive and -T/--no-tty exclude each other")
    tty = "always" if flags.get("interactive") else "never" if flags.get("no_tty") else "auto"
    return make_spec(
        names=spec_names(project),
        command=command,
        packages=_packages(project, flags),
        nixpkgs=flags.get("nixpkgs") or config.nixpkgs,
        env=env,
        pass_env=list(dict.fromkeys([*config.passthrough_env, *(flags.get("pass_env") or ())])),  # type: ignore[misc]
        workdir=os.path.abspath(os.path.expanduser(str(workdir))) if workdir else None,
        cwd=flags.get("cwd") or d.cwd,
        # parents first, the protections after any parent a flag binds (`--bind ..` would
        # otherwise cover the project's read-only config, .nixcell/, .git/hooks)
        mounts=sorted([*d.mounts, *_flag_binds(flags)], key=lambda m: mount_depth(m["target"])),
        hide=[*d.hide, *hides],
        limits=limits,
        hardening_profiles=list(flags.get("profiles") or ()),  # type: ignore[call-overload]
        network=network,
        tty=tty,
        sh=not flags.get("no_sh"),
        store=store,
        store_dir=store_dir,
        host_network=host_network,
        backend=flags.get("backend") or config.backend,  # --backend wins over [sandbox] backend
    )
