"""``nixcell status``: what a project's config says, which file said it, and what the host has.

Pure data (a dict, the same for ``--json`` and the text the CLI prints): the config file used
(``nixcell.toml`` or nixcage's ``nixcage.toml``), the level, packages, store and network modes,
the binds with the optional sources that are missing (skipped, as nixcage does), the loader's
warnings, loud alerts for the modes that give up isolation (``host`` network: the host's
network namespace; ``shared`` store: the Nix daemon's socket inside the cell), and the host
programs the project needs. Only stats and PATH look-ups: status runs no program and no nix;
it makes the project's state dirs as a run would (``ensure_state``), and a problem there (a
state dir a cell swapped for a link) is reported, not raised.
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


# The host program each backend other than bwrap starts (on PATH: status runs no program; the
# backend's own probe is `nixcell doctor`'s)
BACKEND_PROGRAMS = {
    "gvisor": "runsc",
    "docker": "docker",
    "microvm": "qemu-system-x86_64",
    "systemd": "systemd-run",
}


def dependencies(config: Any | None = None) -> list[dict[str, Any]]:
    """Host programs: bwrap and nix (needed), strace (``--debug``), direnv (the ``.envrc``),
    the offline package set (needed when the packages come from it), and the program of the
    project's backend when it is not bwrap (needed)."""
    rows = []
    backend = getattr(config, "backend", "bwrap")
    tool = BACKEND_PROGRAMS.get(backend)
    if tool is not None:
        path = shutil.which(tool)
        why = f"runs this project's cells (`nixcell doctor` says whether {backend} works here)"
        rows.append(
            {"name": f"backend {backend}", "ok": path is not None, "required": True,
             "detail": f"{path}: {why}" if path else f"{tool} not found: {why}"}
        )  # fmt: skip
    for name, program, needed, why in (
        ("bubblewrap", "bwrap", tool is None, "runs every cell"),
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
            absent = [
                p
                for p in config.packages
                if "#" not in p and not p.startswith("/") and p not in found.packages
            ]
            if absent:
                ok, detail = False, f"lacks {', '.join(absent)} ({found.nix_file.parent})"
    rows.append(
        {"name": "offline package set", "ok": ok, "required": offline_needed, "detail": detail}
    )
    return rows


def credential_sources(config: Any) -> list[dict[str, Any]]:
    """For each credential the config names: where its real value comes from and, for an
    ``env:`` source, whether the variable is set (never its value)."""
    from nixcell.errors import NixcellError
    from nixcell.net.policyfile import load_policy

    tables: dict[str, dict[str, Any]] = {}
    for path in config.policy:
        try:
            for table in load_policy(path).credentials:
                tables.setdefault(str(table.get("name")), table)
        except NixcellError:
            continue  # the run reports a broken policy file with its line
    rows = []
    for name in config.credentials:
        source = str(tables.get(name, {}).get("source", ""))
        kind, _, ref = source.partition(":")
        row: dict[str, Any] = {"name": name, "source": source or None}
        if kind == "env":
            row["set"] = bool(os.environ.get(ref))
        rows.append(row)
    return rows


def summary(project: Any) -> dict[str, Any]:
    """Everything ``status`` shows about a loaded project."""
    from nixcell.errors import NixcellError
    from nixcell.project.compile import draft, network_mode
    from nixcell.project.state import ensure_state

    config = project.config
    found = project.found
    mode = network_mode(project, {})
    problems: list[str] = []
    try:  # the state dirs as the next run makes them, so the cell below is that run's
        ensure_state(project)
        cell = draft(project, found.root)
    except NixcellError as exc:
        problems.append(exc.message)
        cell = None
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
            "credential_sources": credential_sources(config),
        },
        "filesystem": {
            "ro_bind": list(config.ro_bind),
            "rw_bind": list(config.rw_bind),
            "blacklist": list(config.blacklist),
            "skipped": cell.skipped if cell else [],
        },
        "cell": {
            "project_mounted": cell.project_mounted if cell else None,
            "home": cell.home_mode if cell else None,
            "hidden": list(cell.hide) if cell else [],
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
        "problems": problems,
        "dependencies": dependencies(config),
    }
