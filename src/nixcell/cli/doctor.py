"""`nixcell doctor`: what this host has, what is missing, and how to install it."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

MIN_BWRAP = (0, 8)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    absent: str = "warn"  # the mark of an optional check that fails: "no" for a choice not here


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_platform() -> Check:
    from nixcell import platforms

    if platforms.is_macos():
        return Check("platform", False, platforms.MACOS_REFUSAL)
    return Check("platform", True, "Linux (cells run with bubblewrap)")


def check_nix() -> Check:
    path = shutil.which("nix-build")
    if path is None:
        return Check(
            "nix", False, "not found: install with `apt install nix-bin` or from nixos.org"
        )
    proc = _run([path, "--version"])
    version = proc.stdout.strip() if proc and proc.returncode == 0 else "unknown version"
    return Check("nix", True, f"{version} ({path})")


def check_bwrap() -> Check:
    path = shutil.which("bwrap")
    if path is None:
        return Check("bubblewrap", False, "not found: install with `apt install bubblewrap`")
    proc = _run([path, "--version"])
    match = re.search(r"(\d+)\.(\d+)", proc.stdout if proc else "")
    if not match or (int(match.group(1)), int(match.group(2))) < MIN_BWRAP:
        return Check("bubblewrap", False, f"{path} is too old (need >= 0.8): upgrade bubblewrap")
    return Check("bubblewrap", True, f"{proc.stdout.strip()} ({path})")  # type: ignore[union-attr]


def check_userns() -> Check:
    path = shutil.which("bwrap")
    if path is None:
        return Check("user namespaces", False, "cannot test without bubblewrap")
    proc = _run([path, "--unshare-all", "--uid", "1000", "--ro-bind", "/", "/", "true"])
    from nixcell.sandbox.reap import reap_orphans

    reap_orphans()  # bwrap's pid-1 was orphaned to us (the CLI made itself a subreaper)
    if proc is None or proc.returncode != 0:
        why = (proc.stderr.strip() if proc else "bwrap did not run") or "failed"
        return Check(
            "user namespaces",
            False,
            f"{why}: enable them (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0, or the AppArmor bwrap profile)",
        )
    return Check("user namespaces", True, "bwrap can create user, pid, net, ipc, uts namespaces")


def check_seccomp() -> Check:
    from nixcell.sandbox.seccomp import unavailable_reason

    reason = unavailable_reason()
    return Check("seccomp", reason is None, reason or "libseccomp loaded; filter compiles")


def check_cgroups() -> Check:
    from nixcell.sandbox.cgroups import describe_host

    host = describe_host()
    usable = [c for c, base in host.controllers.items() if base.usable]
    unusable = {c: base.reason for c, base in host.controllers.items() if not base.usable}
    detail = f"cgroup {host.version}: "
    detail += f"usable {', '.join(sorted(usable))}" if usable else "no usable controller"
    for ctrl, reason in sorted(unusable.items()):
        detail += f"; {ctrl}: {reason}"
    return Check(
        "cgroups (--memory/--cpus/--pids)",
        len(unusable) == 0 and bool(usable),
        detail,
        required=False,
    )


def check_identity() -> Check:
    """Root-run cells need a free subordinate range (and idmapped mounts for their binds)."""
    import os

    if os.geteuid() != 0:
        return Check("cell identity", True, "cells run as you (uid 1000 inside)")
    from nixcell.errors import NixcellError
    from nixcell.sandbox.identity import subordinate_range

    try:
        rng = subordinate_range()
    except NixcellError as exc:
        return Check("cell identity", False, str(exc))
    end = rng.base + rng.count - 1
    where = "/etc/subuid" if rng.source != "default" else "default; ./setup registers it"
    return Check("cell identity", True, f"each cell its own uid of {rng.base}-{end} ({where})")


def check_strace() -> Check:
    """``--debug`` traces cells with the host's strace, found the same way (on PATH)."""
    from nixcell.sandbox.bwrapio import which

    path = which("strace")
    if path is None:
        return Check(
            "strace (--debug)", False, "not found on PATH: install with `apt install strace`",
            required=False,
        )  # fmt: skip
    proc = _run([path, "-V"])
    version = proc.stdout.splitlines()[0].strip() if proc and proc.stdout else "unknown version"
    return Check("strace (--debug)", True, f"{version} ({path})", required=False)


def check_packages() -> Check:
    from nixcell.nix.offline import find_set
    from nixcell.nix.pins import host_has_nixpkgs

    nixpkgs = host_has_nixpkgs()
    offline = find_set()
    if nixpkgs:
        return Check("packages", True, f"nixpkgs at {nixpkgs}")
    if offline and "dash" not in offline.packages:  # built before dash joined the set
        return Check(
            "packages",
            False,
            "the offline set has no dash (every cell's /bin/sh): run `nixcell offline build`",
        )
    if offline:
        return Check(
            "packages",
            True,
            f"offline package set ({len(offline.packages)} packages); no nixpkgs channel",
        )
    return Check(
        "packages",
        False,
        "no nixpkgs and no offline set: run `nixcell offline build` (./setup does)",
    )


def check_backends() -> list[Check]:
    """Each backend: whether this host can run it, with what, or why not."""
    from nixcell.sandbox import backends

    checks = []
    for name in backends.NAMES:
        found = backends.availability(name)
        row = f"backend {name}" + (" (default)" if name == "bwrap" else "")
        checks.append(Check(row, found.ok, found.detail, required=False, absent="no"))
    return checks


def run_doctor() -> int:
    from rich.console import Console
    from rich.table import Table

    checks = []
    checks_run = (
        check_platform,
        check_nix,
        check_bwrap,
        check_userns,
        check_seccomp,
        check_identity,
        check_cgroups,
        check_strace,
        check_packages,
    )
    for fn in checks_run:
        try:
            checks.append(fn())
        except Exception as exc:  # a broken check is a failed check, not a crash
            checks.append(Check(fn.__name__.removeprefix("check_"), False, str(exc)))
    try:
        checks += check_backends()
    except Exception as exc:
        checks.append(Check("backends", False, str(exc), required=False))
    table = Table(box=None, show_header=False)
    for c in checks:
        absent = "[yellow]warn[/]" if c.absent == "warn" else f"[dim]{c.absent}[/]"
        mark = "[green]ok[/]" if c.ok else ("[red]MISSING[/]" if c.required else absent)
        table.add_row(mark, c.name, c.detail)
    Console().print(table)
    return 1 if any(c.required and not c.ok for c in checks) else 0
