"""The job store across processes: kill -9 mid-creation loses no answered id; openers agree."""

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


OPENER = """
import sys
from nixcell.jobs.sqlite import SqliteStore

store = SqliteStore(sys.argv[1])
job = store.create("u", "u", {"env": {"K": "secret-" + sys.argv[2]}, "secret_env": ["K"]})
print(job.id, flush=True)
"""


def test_processes_opening_one_new_store_at_once_agree(tmp_path: Path) -> None:
    """Eight processes racing to create the file, its schema and its key: one of each wins,
    and every job's sealed secret opens with the key that is left."""
    path = str(tmp_path / "jobs.db")
    procs = [
        subprocess.Popen([sys.executable, "-c", OPENER, path, str(n)], stdout=subprocess.PIPE)
        for n in range(8)
    ]
    outs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8
    assert sorted(int(o) for o in outs) == list(range(1, 9))
    store = SqliteStore(path)
    secrets = {job.request["env"]["K"] for job in store.list()}
    store.close()
    assert secrets == {f"secret-{n}" for n in range(8)}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
