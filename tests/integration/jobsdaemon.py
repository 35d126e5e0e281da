"""A job daemon to kill: ``python -m tests.integration.jobsdaemon STATE_DIR MARKER``.

Starts a JobService (concurrency 1) on STATE_DIR, submits a job that sleeps (``sleep MARKER``,
with a memory limit so it has a cgroup) and one that queues behind it, prints
``ready JOB_ID CELL_ID QUEUED_ID`` once the first one's command runs, and waits to be killed.
"""

from __future__ import annotations

import asyncio
import os
import sys

from tests.integration.jobsrig import ALICE, BOB, config, processes_with, script, settle

from nixcell.jobs.service import JobService
from nixcell.jobs.sqlite import SqliteStore


async def main(state_dir: str, marker: str) -> None:
    from pathlib import Path

    cfg = config(Path(state_dir).parent, concurrency=1)
    os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
    svc = JobService(cfg, SqliteStore(os.path.join(cfg.state_dir, "jobs.db")))
    await svc.start()
    job = await svc.submit(ALICE, script(f"echo up; sleep {marker}", memory="128M"))
    queued = await svc.submit(BOB, script("echo after the restart"))
    await settle(svc, job.id, {"running"})
    while not processes_with(marker) or "up" not in [x.text for x in svc.logs(ALICE, job.id)]:
        await asyncio.sleep(0.02)
    cell_id = svc.get(ALICE, job.id).cell_id
    print(f"ready {job.id} {cell_id} {queued.id}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
