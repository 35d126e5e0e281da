"""``nixcell status``: what a project's config says, which file said it, and what the host has.

Pure data (a dict, the same for ``--json`` and the text the CLI prints): the config file used
(``nixcell.toml`` or nixcage's ``nixcage.toml``), the level, packages, store and network modes,
the binds with the optional sources that are missing (skipped, as nixcage does), the loader's
warnings, loud alerts for the modes that give up isolation (``host`` network: the host's
network namespace; ``shared`` store: the Nix daemon's socket inside the cell), and the host
programs the project needs. Only stats and PATH look-ups: status runs no program and no nix.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

ALERTS = {
    ("network", "host"): "network mode host: the cell shares the host's network namespace "
    "(no proxy, no policy, every host and port, the host's loopback services too)",
    ("store", "shared"): "store mode shared: the whole /nix/store is visible and the Nix daemon's "
    "socket is inside the cell (it can build and add store paths)",
}


def network_mode(config: Any) -> str:
    """The network mode the config means (PROJECT-FORMAT.md: mode wins over nixcage's allow;
    hosts or a policy without a mode mean proxy; else none at strict, open otherwise)."""
    if config.mode:
        return str(config.mode)
    if config.allow is not None:
        return "open" if config.allow else "none"
    if config.allow_hosts or config.policy or config.allow_cidrs:
        return "proxy"
    return "none" if config.level == "strict" else "open"


def _source(entry: str) -> str:
    src = entry.split(":", 1)[0] if ":" in entry and not entry.startswith("/:") else entry
    return os.path.expanduser(src)


def missing_sources(config: Any) -> list[str]:
    """Bind sources (ro_bind, rw_bind) that do not exist: the cell is made without them."""
    out = []
    for entry in (*config.ro_bind, *config.rw_bind):
        if not os.path.lexists(_source(entry)):
            out.append(entry)
    return out


def dependencies(config: Any | None = None) -> list[dict[str, Any]]:
    """Host programs: bwrap and nix (needed), strace (``--debug``), direnv (the ``.envrc``),
    the offline package set (needed when the packages come from it)."""
    rows = []
    for name, program, needed, why in (
        ("bubblewrap", "bwrap", True, "runs every cell"),
        ("nix", "nix-build", True, "resolves the packages"),
        ("nix-store", "nix-store", True, "lists closures"),
        ("strace", "strace", False, "needed by --debug"),
        ("direnv", "direnv", False, "loads .envrc (NIXCELL_* variables, cell, cellrun)"),
    ):
        path = shutil.which(program)
        rows.append(
            {"name": name, "ok": path is not None, "required": needed, "detail": path or why}
        )
    from nixcell.nix.offline import find_set

    found = find_set()
    offline_needed = config is None or config.nixpkgs in (None, "offline")
    if found is None:
        ok, detail = False, "not built: ./setup or `nixcell offline build`"
    else:
        ok, detail = True, f"{len(found.packages)} packages ({found.nix_file.parent})"
        if config is not None and offline_needed:
            absent = [p for p in config.packages if "#" not in p and not p.startswith("/")
                      and p not in found.packages]
            if absent:
                ok, detail = False, f"lacks {', '.join(absent)} ({found.nix_file.parent})"
    rows.append(
        {"name": "offline package set", "ok": ok, "required": offline_needed, "detail": detail}
    )
    return rows


def summary(project: Any) -> dict[str, Any]:
    """Everything ``status`` shows about a loaded project."""
    config = project.config
    found = project.found
    mode = network_mode(config)
    alerts = []
    if mode == "host":
        alerts.append(ALERTS[("network", "host")])
    if config.store_mode == "shared":
        alerts.append(ALERTS[("store", "shared")])
    return {
        "root": found.root,
        "config": found.path,
        "format": os.path.basename(found.path),
        "level": config.level,
        "backend": config.backend,
        "packages": list(config.packages),
        "nixpkgs": config.nixpkgs or "offline",
        "flake": config.flake,
        "store_mode": config.store_mode,
        "network": {
            "mode": mode,
            "allow_hosts": list(config.allow_hosts),
            "deny_hosts": list(config.deny_hosts),
            "allow_cidrs": list(config.allow_cidrs),
            "policy": list(config.policy),
            "credentials": list(config.credentials),
        },
        "filesystem": {
            "ro_bind": list(config.ro_bind),
            "rw_bind": list(config.rw_bind),
            "blacklist": list(config.blacklist),
            "missing": missing_sources(config),
        },
        "resources": {
            "cpus": config.cpus,
            "memory": config.memory,
            "pids": config.pids,
            "timeout": config.timeout,
            "disk": config.disk,
        },
        "command": list(config.command),
        "passthrough_env": list(config.passthrough_env),
        "env": sorted(config.env),  # names only: values may be secrets
        "warnings": list(project.warnings),
        "alerts": alerts,
        "dependencies": dependencies(config),
    }
