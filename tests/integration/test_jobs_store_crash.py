"""kill -9 of a process that is creating jobs: every id it was answered with is still there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from nixcell.jobs.sqlite import SqliteStore

CREATOR = textwrap.dedent(
    """
    import sys
    from nixcell.jobs.sqlite import SqliteStore

    store = SqliteStore(sys.argv[1])
    n = 0
    while True:
        n += 1
        job = store.create("uid:7", "carol", {"n": n, "env": {"K": "v" * 200}})
        store.append_logs(job.id, [("stdout", f"{job.id}:{i}") for i in range(50)])
        store.transition(job.id, "running", expect=["queued"])
        print(job.id, flush=True)
    """
)


def test_every_id_printed_before_kill_9_survives(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    proc = subprocess.Popen(
        [sys.executable, "-c", CREATOR, path],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    printed: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # enough that the kill lands among writes, not before them
            printed.append(int(line))
            if len(printed) == 300:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    printed.extend(int(line) for line in proc.stdout.read().split())  # printed before it died
    proc.stdout.close()
    store = SqliteStore(path)  # recovery of the WAL happens here
    try:
        assert printed == list(range(1, len(printed) + 1))
        for job_id in printed:
            job = store.get(job_id)
            assert job is not None, f"job {job_id} was answered and then lost"
            assert job.state == "running" and job.request["n"] == job_id
            lines = store.logs(job_id)
            assert [ln.text for ln in lines] == [f"{job_id}:{i}" for i in range(50)]
        # whatever came after the last printed id is whole or absent, never half there
        for job in store.list(limit=1000):
            assert [e.state for e in store.events(job.id)][:1] == ["queued"]
        assert store.create("u", "u", {}).id > printed[-1]
    finally:
        store.close()
