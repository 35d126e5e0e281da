"""kill -9 of a real ``nixcell serve`` while jobs run, others are queued and a client submits
in a tight loop; then a new daemon on the same state dir (tests/integration/jobsd.py).

The jobs that were running end ``error`` "daemon restarted" and nothing of their cells is left:
no process of theirs (bwrap included: its argv holds the job's marker), no cell cgroup, no job
dir (their workspace). Every job whose id a client was answered with exists after the restart
(none lost to the crash: a submit is durable before it is answered), and every queued one runs
to its own exit code.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture
from tests.integration.jobsrig import cgroups_of, processes_with

pytestmark = pytest.mark.integration

WAIT = 300.0  # a bound on each wait, not a timing assertion
RUNNING = 2
MARKERS = ("917341", "917342")  # `sleep MARKER`: found in /proc by their command lines


def coded(k: int) -> dict:
    return {
        "packages": ["bash"],
        "command": ["bash", "-c", "exit $((K % 5))"],
        "env": {"K": str(k)},
    }


def until(check, what: str):
    deadline = time.monotonic() + WAIT
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def cell_ids(state_dir: str) -> dict[int, str]:
    """Job id -> cell id of the running jobs, read from the dead daemon's database."""
    uri = f"file:{os.path.join(state_dir, 'jobs.db')}?mode=ro"
    with sqlite3.connect(uri, uri=True) as db:
        rows = db.execute("SELECT id, cell_id FROM jobs WHERE state = 'running'").fetchall()
    return {job_id: cell for job_id, cell in rows}


class Submitter(threading.Thread):
    """Submits in a tight loop until stopped; keeps every id it was answered with."""

    def __init__(self, server: str) -> None:
        super().__init__(daemon=True)
        from nixcell.jobs.client import Client, ClientError

        self.client, self.refused = Client(server, timeout=30), ClientError
        self.answered: dict[int, int] = {}  # job id -> k
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        k = 1000
        while not self.stopping.is_set():
            k += 1
            try:
                job = self.client.call("POST", "/api/v1/jobs", coded(k))["job"]
            except self.refused:  # the daemon is dead or dying: no id was answered
                self.failures += 1
                time.sleep(0.01)
                continue
            self.answered[job["id"]] = k


def test_kill_9_while_running_queued_and_submitting(jobsd):  # noqa: F811
    d = jobsd(config=f"[server]\nconcurrency = {RUNNING}\n")
    sleeps = []
    for marker in MARKERS:  # with a memory limit, so each cell has a cgroup
        request = {"packages": ["bash", "coreutils"], "command": ["sleep", marker]}
        sleeps.append(d.call("POST", "/api/v1/jobs", {**request, "memory": "128M"})["job"]["id"])
    queued = {d.call("POST", "/api/v1/jobs", coded(k))["job"]["id"]: k for k in range(1, 9)}
    for job_id in sleeps:
        assert d.wait_state(job_id, {"running"})["state"] == "running"
    until(lambda: all(processes_with(m) for m in MARKERS), "the sleeps never ran")
    submitter = Submitter(d.server)
    submitter.start()
    until(lambda: len(submitter.answered) >= 20, "no submit answered")
    d.stop(signal.SIGKILL)  # mid-loop: the submitter is still sending
    answered_at_kill = len(submitter.answered)
    time.sleep(0.2)  # let the loop meet the dead socket (more refusals, no answers)
    submitter.stopping.set()
    submitter.join(WAIT)
    assert submitter.failures > 0 and len(submitter.answered) >= answered_at_kill

    cells = cell_ids(d.state_dir)
    assert sorted(cells) == sorted(sleeps) and all(cells.values()), cells
    assert all(cgroups_of(cell) for cell in cells.values()), "no cgroup to check"
    jobdirs = [os.path.join(d.state_dir, "jobs", str(j)) for j in sleeps]
    assert all(os.path.isdir(p) for p in jobdirs)
    until(lambda: not any(processes_with(m) for m in MARKERS) or None, "cells outlived it")

    d.start()  # the same state dir, config and socket
    for job_id in sleeps:
        job = d.call("GET", f"/api/v1/jobs/{job_id}")["job"]
        assert (job["state"], job["reason"]) == ("error", "daemon restarted"), job
    assert [cgroups_of(cell) for cell in cells.values()] == [[]] * RUNNING
    assert not any(os.path.lexists(p) for p in jobdirs), "a dead job's dir is left"
    assert not any(processes_with(m) for m in MARKERS)

    everyone = {**queued, **submitter.answered}
    for job_id, k in sorted(everyone.items()):
        job = d.wait_state(job_id, {"succeeded", "failed", "error", "cancelled"}, wait=WAIT)
        assert job["exit_code"] == k % 5, (k, job)
        assert job["state"] == ("succeeded" if k % 5 == 0 else "failed"), (k, job)
    listed = d.call("GET", "/api/v1/jobs?limit=1000")["jobs"]
    assert set(everyone) <= {job["id"] for job in listed}
    assert "Traceback" not in d.log()
