"""Runs last: after the whole suite, nothing of any cell is left on the host."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.conftest import TMP_AT_START, skip_reason


def test_no_cell_leftovers():
    if skip_reason():
        return
    from nixcell.sandbox.cgroups import list_cell_cgroups

    leftovers = [str(p) for p in list_cell_cgroups()]
    leftovers += [str(p) for p in Path("/sys/fs/cgroup").glob("*/nixcell/*") if p.is_dir()]
    assert leftovers == []
    assert bwrap_processes() == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "nixcell" not in mounts
    tmp = [p.name for p in Path("/tmp").iterdir() if p.name.startswith("nixcell")]
    assert sorted(set(tmp) - TMP_AT_START) == []  # (the suite's session fixtures use suite-*)
    from tests.integration.gvisorrig import runsc_processes

    from nixcell.sandbox import dockerhost

    assert runsc_processes() == []  # no gVisor sandbox (runsc, gofer, sentry) left
    for kind in ("gvisor", "gvisor-state"):  # nor its bundles and runsc state
        root = Path(dockerhost.root_dir(kind))
        assert (list(root.iterdir()) if root.is_dir() else []) == [], kind


def bwrap_processes() -> list[str]:
    """Every bwrap process on the host, zombies included.

    The seccomp tests run bare ``bwrap``, whose pid-1 is orphaned to this (subreaper) process
    and may exit just after the last test's reaper ran: exit statuses of our own children are
    collected first, briefly. A zombie of anyone else, or a live bwrap, is a leftover.
    """
    from nixcell.sandbox.reap import reap_orphans

    deadline = time.monotonic() + 3
    while True:
        reap_orphans()
        ps = subprocess.run(
            ["ps", "-eo", "pid,ppid,stat,etime,comm"], capture_output=True, text=True
        )
        found = [line for line in ps.stdout.splitlines() if line.endswith(" bwrap")]
        ours = [f for f in found if f.split()[1] == str(os.getpid())]
        if not ours or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
