"""Recovery: a daemon killed with SIGKILL mid-job, then a new one on the same state dir.

The running job becomes ``error`` "daemon restarted" with its output so far kept; nothing of
its cell is left (no process, no cgroup, no job dir); the job queued behind it runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from tests.integration.jobsrig import (
    ADMIN,
    cgroups_of,
    collect,
    processes_with,
    serve,
    settle,
)

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_kill_9_mid_job_then_restart(tmp_path, offline_set) -> None:
    marker = "987671"
    state = tmp_path / "state"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.jobsdaemon", str(state), marker],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = daemon.stdout.readline().decode()
        assert line.startswith("ready "), daemon.stderr.read().decode()[-2000:]
        _, job_id, cell_id, queued_id = line.split()
        assert processes_with(marker) and cgroups_of(cell_id)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    deadline = time.monotonic() + 60  # a wait for the kernel, not a timing assertion
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with(marker), "the dead daemon's cell outlived it (--die-with-parent)"
    jobdir = state / "jobs" / job_id
    assert jobdir.is_dir()

    async def body(svc):
        dead = svc.get(ADMIN, int(job_id))
        after = await settle(svc, int(queued_id))
        items = await collect(svc, ADMIN, int(queued_id))
        return dead, after, items, svc.logs(ADMIN, int(job_id))

    dead, after, items, lines = serve(tmp_path, body, concurrency=1)
    assert (dead.state, dead.reason) == ("error", "daemon restarted")
    assert "up" in [x.text for x in lines], "the output before the crash is kept"
    assert not jobdir.exists(), "the dead job's dir (its workspace) is left"
    assert cgroups_of(cell_id) == [], "the dead cell's cgroup is left"
    assert after.state == "succeeded"
    assert "after the restart" in [getattr(x, "text", None) for x in items]
