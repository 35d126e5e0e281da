"""Runs last: after the whole suite, nothing of any cell is left on the host."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import skip_reason


def test_no_cell_leftovers():
    if skip_reason():
        return
    from nixcell.sandbox.cgroups import list_cell_cgroups

    leftovers = [str(p) for p in list_cell_cgroups()]
    leftovers += [str(p) for p in Path("/sys/fs/cgroup").glob("*/nixcell/*") if p.is_dir()]
    assert leftovers == []
    ps = subprocess.run(["ps", "-eo", "pid,ppid,stat,etime,comm"], capture_output=True, text=True)
    bwraps = [line for line in ps.stdout.splitlines() if line.endswith(" bwrap")]
    assert bwraps == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "nixcell" not in mounts
    tmp = [p.name for p in Path("/tmp").iterdir() if p.name.startswith("nixcell")]
    assert tmp == []
