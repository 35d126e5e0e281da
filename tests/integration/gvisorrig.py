"""What of a gVisor cell is left on the host (``left_of``): shared by the gvisor tests and the
backend-neutral ones (a gVisor cell's processes live in the sentry, never in the host's /proc)."""

from __future__ import annotations

import os
from pathlib import Path

from nixcell.sandbox import dockerhost


def runsc_processes(marker: str = "") -> list[int]:
    """Host processes of runsc (run, gofer, sentry) whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"runsc" in cmdline.split(b"\0")[0] and marker.encode() in cmdline:
            found.append(int(entry))
    return found


def left_of(cell_id: str) -> list[str]:
    """Processes, runsc state, bundle directories and cgroups of this cell still there."""
    from nixcell.sandbox.cgroups import list_cell_cgroups

    found = [f"pid {p}" for p in runsc_processes(cell_id)]
    state_root = dockerhost.root_dir("gvisor-state")
    for owner in os.listdir(state_root) if os.path.isdir(state_root) else []:
        found += [n for n in os.listdir(os.path.join(state_root, owner)) if cell_id in n]
    root = dockerhost.root_dir("gvisor")
    found += [d for d in (os.listdir(root) if os.path.isdir(root) else []) if d.endswith(cell_id)]
    found += [str(p) for p in list_cell_cgroups() if cell_id in p.name]
    return found
