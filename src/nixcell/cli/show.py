"""Printing a plan for --dry-run (rich for humans, JSON for programs)."""

from __future__ import annotations

import shlex
import sys

from nixcell.plan import Plan
from nixcell.units import format_duration, format_size


def show_plan(plan: Plan, *, as_json: bool) -> None:
    if as_json:
        import json

        from nixcell.backendrun import describe

        data = plan.to_json()
        data["backend_spec"] = describe(plan)  # the backend's own argv/spec
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]command[/] {shlex.join(plan.command)}  [dim](cwd {plan.cwd})[/]")
    console.print(f"[bold]packages[/] from {plan.source}: {len(plan.closure)} store paths")
    store = {
        "closure": "the closure only",
        "readonly": "the whole host store, read-only",
        "shared": "the whole host store, read-only, and the Nix daemon (builds run on the host)",
        "copy": f"a copy of the closure in {plan.store_dir} (refreshed each run)",
        "isolated": f"a frozen copy of the closure in {plan.store_dir}",
    }
    console.print(f"[bold]store[/] {store.get(plan.store, plan.store)}")
    if plan.backend != "bwrap":
        console.print(f"[bold]backend[/] {plan.backend}")
    if plan.host_network:
        console.print("[bold]network[/] the host's own (no proxy, no policy)")
    table = Table("mount", "cell path", "source", box=None)
    for op in plan.mounts:
        table.add_row(op.kind, op.dest, op.src or ("(generated)" if op.data else ""))
    console.print(table)
    lim = plan.limits
    limits = [
        f"memory {format_size(lim.memory)}" if lim.memory else None,
        f"cpus {lim.cpus:g}" if lim.cpus else None,
        f"pids {lim.pids}" if lim.pids else None,
        f"timeout {format_duration(lim.timeout)}" if lim.timeout else None,
        f"disk {format_size(lim.disk)}" if lim.disk else None,
    ]
    console.print("[bold]limits[/] " + (", ".join(x for x in limits if x) or "none"))
    terminal = {"auto": "its own pty when stdin and stdout are terminals", "always": "its own pty"}
    console.print("[bold]terminal[/] " + terminal.get(plan.tty, "none (host terminals relayed)"))
    console.print(
        "[bold]namespaces[/] "
        + ", ".join(plan.namespaces)
        + "  [bold]seccomp[/] default"
        + "".join(f" +{p}" for p in plan.seccomp_profiles)
    )
    console.print("[bold]env[/] " + " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items()))
    console.print("[bold]bwrap[/] " + shlex.join(plan.bwrap_args()), soft_wrap=True)
