"""Helpers for the job service tests: an in-process JobService on a real SqliteStore, real cells.

``serve(tmp_path, body, **config)`` runs ``await body(svc)`` on a fresh loop with a started
service and always stops it (cancel) and closes the store. No pytest-asyncio: each test owns
its loop. ``settle`` waits for a state by polling the store — a wait, never an assertion on
time (the pytest timeout bounds it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from nixcell.jobs.config import ServerConfig
from nixcell.jobs.model import TERMINAL, Caller, Job, JobRequest
from nixcell.jobs.service import JobService
from nixcell.jobs.sqlite import SqliteStore

T = TypeVar("T")

ALICE = Caller("uid:1000", "alice")
BOB = Caller("uid:1001", "bob")
CAROL = Caller("uid:1002", "carol")
ADMIN = Caller("uid:0", "root", admin=True)
PACKAGES = ["bash", "coreutils"]


def config(tmp_path: Path, **fields: Any) -> ServerConfig:
    return ServerConfig(state_dir=str(tmp_path / "state"), **fields)


def serve(tmp_path: Path, body: Callable[[JobService], Awaitable[T]], **fields: Any) -> T:
    async def main() -> T:
        cfg = config(tmp_path, **fields)
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        store = SqliteStore(os.path.join(cfg.state_dir, "jobs.db"), log_limit=cfg.log_limit)
        svc = JobService(cfg, store)
        await svc.start()
        try:
            return await body(svc)
        finally:
            await svc.stop("cancel")
            store.close()

    return asyncio.run(main())


def script(text: str, **fields: Any) -> JobRequest:
    return JobRequest(packages=fields.pop("packages", PACKAGES), script=text, **fields)


async def settle(
    svc: JobService, job_id: int, states: Iterable[str] = TERMINAL, caller: Caller = ADMIN
) -> Job:
    """The job once its state is one of ``states``."""
    wanted = set(states)
    while True:
        job = svc.get(caller, job_id)
        if job.state in wanted:
            return job
        await asyncio.sleep(0.02)


async def collect(svc: JobService, caller: Caller, job_id: int, **kw: Any) -> list[Any]:
    return [item async for item in svc.follow(caller, job_id, **kw)]


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (zombies have none)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


def cgroups_of(cell_id: str | None) -> list[Path]:
    from nixcell.sandbox.cgroups import list_cell_cgroups

    return [p for p in list_cell_cgroups() if cell_id and cell_id in p.name]
