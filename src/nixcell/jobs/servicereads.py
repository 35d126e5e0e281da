"""The job service's reading side: jobs, listings, logs, streams, audit, artifacts, metrics.

A mixin of ``JobService`` (service.py holds the life cycle, scheduling and changes): every
method here checks the caller may see the job first (another user's job is a 404, not a 403:
its existence is not confirmed either).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import IO, Any

from nixcell.jobs import jobaudit
from nixcell.jobs.contract import Conflict, JobError, NotFound, Terminal
from nixcell.jobs.executor import job_dir
from nixcell.jobs.jobview import among_states, among_streams, shown
from nixcell.jobs.model import Caller, Event, Job, LogLine
from nixcell.jobs.requestcheck import shown as shown_value
from nixcell.jobs.streams import IteratorIO, follow_job, job_events

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.jobs.cluster import Cluster
    from nixcell.jobs.config import ServerConfig
    from nixcell.jobs.hub import Hub
    from nixcell.jobs.scheduler import FairQueue
    from nixcell.jobs.store import JobStore
    from nixcell.jobs.workspace import Workspaces

MAX_LIST = 1000


class JobReads:
    config: ServerConfig
    store: JobStore
    hub: Hub
    queue: FairQueue
    workspaces: Workspaces
    cluster: Cluster | None
    decisions: dict[str, int]
    _runs: dict[int, Any]

    def _collect(self) -> dict[str, int]:
        raise NotImplementedError

    def get(self, caller: Caller, job_id: int) -> Job:
        job = self.store.get(job_id) if _count(job_id) and job_id > 0 else None
        if job is None or not caller.may_see(job.owner):
            raise NotFound(f"no job {shown_value(job_id) if not _count(job_id) else job_id}")
        return job

    def list(
        self,
        caller: Caller,
        *,
        states: Iterable[str] | None = None,
        limit: int = 100,
        all_users: bool = True,
        all_hosts: bool = True,
    ) -> list[Job]:
        """A cluster host lists its own jobs and the queue it may take from unless
        ``all_hosts``; a single host has only its own."""
        wanted = among_states(states)
        if not _count(limit) or not 1 <= limit <= MAX_LIST:
            raise JobError(f"limit must be between 1 and {MAX_LIST}")
        owner = None if caller.admin and all_users else caller.key
        if self.cluster is None or all_hosts:
            return self.store.list(owner=owner, states=wanted, limit=limit)
        return self.store.list(owner=owner, states=wanted, limit=limit, host=self.config.host_name)

    def shown(self, caller: Caller, job: Job) -> dict[str, Any]:
        return shown(job, self.config.state_dir)

    def logs(
        self,
        caller: Caller,
        job_id: int,
        *,
        after: int = 0,
        tail: int | None = None,
        streams: Iterable[str] | None = None,
    ) -> list[LogLine]:
        self.get(caller, job_id)
        wanted = among_streams(streams)
        if not _count(after) or (tail is not None and not _count(tail)):
            raise JobError("after and tail must be whole numbers, not negative")
        return self.store.logs(job_id, after=after, streams=wanted, tail=tail)

    def follow(
        self, caller: Caller, job_id: int, *, after: int = 0, streams: Iterable[str] | None = None
    ) -> AsyncIterator[LogLine | Event]:
        self.get(caller, job_id)  # now, not at the first item: the HTTP layer answers 404
        if not _count(after):
            raise JobError("after must be a whole number, not negative")
        return follow_job(self.store, self.hub, job_id, after=after, streams=among_streams(streams))

    def events(self, caller: Caller, job_id: int | None = None) -> AsyncIterator[Event]:
        if job_id is not None:
            self.get(caller, job_id)
        return job_events(self.store, self.hub.subscribe(caller.may_see), job_id)

    def audit(self, caller: Caller, job_id: int) -> list[dict[str, Any]]:
        job = self.get(caller, job_id)
        path = os.path.join(job_dir(self.config, job.id), jobaudit.AUDIT)
        try:
            return [jobaudit.shown(r) for r in jobaudit.records(path)]
        except OSError:
            return []

    def artifacts(self, caller: Caller, job_id: int) -> IO[bytes]:
        job = self.get(caller, job_id)
        if not job.terminal:
            raise Conflict(f"job {job_id} has not finished")
        if self.cluster is not None and job.host not in (None, self.config.host_name):
            from nixcell.jobs.clusterfiles import shared_artifacts

            return IteratorIO(shared_artifacts(self.store, job.id, job.host))
        return IteratorIO(self.workspaces.artifacts(job_dir(self.config, job.id)))

    async def terminal(self, caller: Caller, job_id: int) -> Terminal:
        from nixcell.jobs import terminal

        job = self.get(caller, job_id)
        if not job.request.get("interactive"):
            raise Conflict(f"job {job_id} is not interactive")
        if job.state != "running":
            raise Conflict(f"job {job_id} is {job.state}, not running")
        return terminal.attach(job_id)

    async def gc(self, caller: Caller) -> dict[str, int]:
        if not caller.admin:
            raise JobError("only an admin may collect garbage", status=403)
        return await asyncio.to_thread(self._collect)

    def metrics(self) -> str:
        from nixcell.jobs.metrics import render

        counts = self.store.counts()
        return render(
            counts,
            len(self.queue) if self.cluster is None else counts.get("queued", 0),
            self.store.durations(),
            dict(self.decisions),
            len(self._runs),
        )


def _count(value: object) -> bool:
    """A whole number a database column holds (no bool, nothing negative, below 2**63)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63
