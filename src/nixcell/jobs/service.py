"""``JobService``: the job service's engine behind the HTTP layer (``contract.Service``).

One asyncio loop owns it. Submits are stored durably before they are queued; a scheduler task
starts queued jobs (``scheduler.FairQueue``: FIFO per owner, fair between owners) while fewer
than ``concurrency`` run, each as a ``JobRun`` task (``executor.py``). Claiming a job and
cancelling a queued one are compare-and-set transitions made on the loop's thread, so the two
cannot interleave. Every state change is published on the hub (``hub.py``): log followers and
the web list wake on it. ``start`` recovers what a dead daemon left (``recovery.py``); ``stop``
ends or finishes every cell and leaves the queue for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

from nixcell.errors import NixcellError, UsageError
from nixcell.jobs import recovery
from nixcell.jobs.contract import Conflict, JobError, Unavailable
from nixcell.jobs.executor import Context, JobRun, job_dir, one_line, remove_job_dir
from nixcell.jobs.hub import Hub
from nixcell.jobs.model import ACTIVE, Caller, Event, Job, JobRequest
from nixcell.jobs.requestcheck import shown as shown_value
from nixcell.jobs.scheduler import FairQueue
from nixcell.jobs.servicereads import JobReads
from nixcell.jobs.store import JobStore
from nixcell.jobs.streams import terminal_event
from nixcell.jobs.workspace import Workspaces

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.jobs.cluster import Cluster
    from nixcell.jobs.config import ServerConfig
    from nixcell.jobs.hostcache import HostCache

log = logging.getLogger(__name__)

STOPPING = "cancelled: the server stopped"


class JobService(JobReads):
    def __init__(self, config: ServerConfig, store: JobStore) -> None:
        self.config = config
        self.store = store
        self.hub = Hub()
        self.queue = FairQueue()
        self.shared = store if hasattr(store, "claim") else None  # a store many hosts share
        self.workspaces = Workspaces(config, self.shared)
        self.profiles: dict[str, Any] = {}
        self.credential_policy: str | None = None
        self.accepting = False
        self.decisions = {"allow": 0, "deny": 0}  # proxy decisions since start (metrics)
        self._runs: dict[int, JobRun] = {}
        self._claims: dict[int, tuple[str, asyncio.Future[None]]] = {}  # being claimed
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.cluster: Cluster | None = None
        self.host_cache: HostCache | None = None
        if self.shared is not None:
            from nixcell.jobs.cluster import Cluster
            from nixcell.jobs.dbfile import load_key
            from nixcell.jobs.hostcache import HostCache

            self.cluster = Cluster(self, store)
            assert config.store_key is not None  # (load_config refuses a cluster without)
            self.host_cache = HostCache(config, load_key(config.store_key))
        elif config.cache_url:
            raise UsageError(
                "[server] cache_url needs a postgresql store: the cluster's store_key signs it"
            )

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recovery, then the queue as stored, then the scheduler and retention tasks."""
        from nixcell.fsio import private_dir

        private_dir(os.path.join(self.config.state_dir, "jobs"))
        self._load(self.config)
        mine = None if self.cluster is None else self.config.host_name
        marked = await asyncio.to_thread(
            recovery.recover, self.store, self.workspaces, self.config, host=mine
        )
        for job in marked:
            await self.publish(job)
        if self.cluster is None:
            for job in await asyncio.to_thread(self.store.queued):
                self.queue.push(job.id, job.owner)
        else:
            await self.cluster.start()
        self.accepting = True
        self._tasks = [
            asyncio.ensure_future(self._schedule()),
            asyncio.ensure_future(self._retain()),
        ]
        self._wake.set()

    async def stop(self, mode: str | None = None) -> None:
        """Stop accepting; cancel running jobs, or let them finish for at most
        ``shutdown_grace`` s (``mode`` "finish"); queued jobs stay queued for the next start."""
        mode = mode or self.config.shutdown
        if mode not in ("cancel", "finish"):
            raise JobError(f"unknown shutdown mode {mode!r}: cancel or finish")
        self.accepting = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await asyncio.gather(*(claim for _, claim in self._claims.values()))
        runs = [run.task for run in self._runs.values() if run.task is not None]
        if mode == "finish" and runs:
            await asyncio.wait(runs, timeout=self.config.shutdown_grace)
        for run in list(self._runs.values()):
            run.cancel(STOPPING)
        await asyncio.gather(*runs, return_exceptions=True)
        if self.cluster is not None:
            await self.cluster.stop()
        self.hub.close()

    def reload(self, config: ServerConfig) -> None:
        """SIGHUP: new limits, profiles and credentials for jobs not yet started. A bad
        profile dir raises and leaves the running configuration as it was."""
        if config.state_dir != self.config.state_dir:
            raise JobError("state_dir cannot change on reload: restart the server")
        if config.cache_url and self.host_cache is None:
            raise JobError("cache_url needs a postgresql store: the cluster's store_key signs it")
        self._load(config)
        self.config = config
        self.workspaces = Workspaces(config, self.shared)
        if self.host_cache is not None:  # (served from now on, or no more)
            self.host_cache.serve_at(config.cache_url)
        self._wake.set()

    def _load(self, config: ServerConfig) -> None:
        from nixcell.fsio import private_dir
        from nixcell.jobs.config import credential_policy
        from nixcell.jobs.profiles import load_profiles

        profiles = load_profiles(config.profile_dir) if config.profile_dir else {}
        private = private_dir(os.path.join(config.state_dir, "private"))
        self.credential_policy = credential_policy(config, private)
        self.profiles = profiles

    # -- scheduling ------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self.cluster is None:
                    self._start_some()
                else:
                    await self.cluster.claim_some(self._run)
            except Exception as exc:  # the store failed: try again at the next wake
                if self.cluster is None:
                    log.exception("the scheduler could not start a job")
                else:  # the database is away: the heartbeat wakes it again
                    log.warning("could not claim a job: %s", one_line(str(exc)))

    # what the cluster part uses
    def wake(self) -> None:
        self._wake.set()

    def busy(self) -> int:
        """Jobs this host runs or is claiming."""
        return len(self._runs) + len(self._claims)

    def claimed(self) -> list[int]:
        """Jobs this host runs or is claiming (their ids)."""
        return [*self._runs, *self._claims]

    def run_of(self, job_id: int) -> JobRun | None:
        return self._runs.get(job_id)

    async def move(
        self, job_id: int, state: str, *, expect: Iterable[str], **kw: Any
    ) -> Job | None:
        return await self._move(job_id, state, expect=expect, **kw)

    async def publish(self, job: Job) -> None:
        """``_publish`` off the loop's thread when the store is a database over the network."""
        if self.cluster is None:
            self._publish(job)
            return
        events = await asyncio.to_thread(self.store.events, job.id)
        self.publish_events(job, events[-1:])

    def _start_some(self) -> None:
        """Reserve slots for the jobs the rule picks; each is claimed in a worker thread (a
        durable transition must not stall the loop) and then run."""
        while self.accepting and len(self._runs) + len(self._claims) < self.config.concurrency:
            running = Counter(run.job.owner for run in self._runs.values())
            running.update(owner for owner, _ in self._claims.values())
            job_id = self.queue.pick(running, self.config.per_user)
            if job_id is None:
                return
            owner = self.queue.owner(job_id) or ""
            self.queue.remove(job_id)
            self._claims[job_id] = (owner, asyncio.ensure_future(self._claim(job_id, owner)))

    async def _claim(self, job_id: int, owner: str) -> None:
        try:
            job = await self._move(job_id, "preparing", expect=("queued",))
        except Exception:  # the store failed: the job stays queued, for the next wake
            log.exception("job %d: could not be claimed", job_id)
            self._claims.pop(job_id, None)
            self.queue.push(job_id, owner)
            return
        self._claims.pop(job_id, None)
        self._wake.set()
        if job is None:  # cancelled meanwhile
            return
        if not self.accepting:  # stop began meanwhile: it stays queued for the next start
            back = await self._move(job_id, "queued", expect=("preparing",))
            if back is not None:
                return
        self._run(job)

    def _run(self, job: Job) -> None:
        run = JobRun(job, self._context())
        self._runs[job.id] = run
        run.start().add_done_callback(lambda task, i=job.id: self._ended(i, task))

    def _context(self) -> Context:
        return Context(
            config=self.config,
            store=self.store,
            hub=self.hub,
            workspaces=self.workspaces,
            profiles=self.profiles,
            credential_policy=self.credential_policy,
            move=self._move if self.cluster is None else self.cluster.move,
            decisions=self.decisions,
            shared=self.shared,
            host_cache=self.host_cache,
        )

    def _ended(self, job_id: int, task: asyncio.Task[Job | None]) -> None:
        self._runs.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %d: its run failed", job_id, exc_info=task.exception())
        self._wake.set()

    async def _move(
        self, job_id: int, state: str, *, expect: Iterable[str], **kw: Any
    ) -> Job | None:
        if self.cluster is None:
            job = await asyncio.to_thread(
                self.store.transition, job_id, state, expect=tuple(expect), **kw
            )
        else:  # a compare-and-set: trying it again after a dropped connection is safe
            from nixcell.jobs.pgconn import retrying

            job = await asyncio.to_thread(
                retrying, self.store.transition, job_id, state, expect=tuple(expect), **kw
            )
        if job is not None:
            await self.publish(job)
            if state == "running" and self.cluster is not None:
                from nixcell.jobs.routing import closure_key

                self.cluster.realised(closure_key(job.request))
        return job

    def _publish(self, job: Job) -> None:
        events = self.store.events(job.id)
        if events:
            self.publish_events(job, events[-1:])

    def publish_events(self, job: Job, events: Iterable[Event]) -> None:
        """To followers and event streams; in a cluster each event once (the host that made
        it publishes it at once, the others when its notification comes)."""
        for event in events:
            if self.cluster is not None and not self.cluster.published(job, event.seq):
                continue
            if job.terminal and event.kind == "state" and event.state == job.state:
                event = terminal_event(event, job)
            self.hub.publish(event, job.owner)

    async def _retain(self) -> None:
        every = max(60.0, min(3600.0, self.config.retention / 10))
        while True:
            await asyncio.sleep(every)
            try:
                await asyncio.to_thread(self._collect)
            except Exception:
                log.exception("retention failed")

    def _collect(self) -> dict[str, int]:
        import time

        cutoff = time.time() - self.config.retention
        jobs = dirs = 0
        for job in self.store.expired(cutoff):  # terminal: no cell uses its dir any more
            if remove_job_dir(job_dir(self.config, job.id), self.workspaces):
                dirs += 1
            self.store.delete(job.id)
            jobs += 1
        found = self.workspaces.gc(older_than=cutoff)
        return {"jobs": jobs, "workspaces": dirs, **found}

    # -- the contract ----------------------------------------------------------------------

    async def upload(self, caller: Caller, body: AsyncIterator[bytes]) -> str:
        self._accept()
        return await self.workspaces.store_upload(caller, body)

    async def submit(self, caller: Caller, request: JobRequest) -> Job:
        from nixcell.jobs.compile import check_request

        self._accept()
        queued = await self._queued()
        if queued >= self.config.queue_limit:
            raise Unavailable(f"the queue is full ({queued} jobs): try again later")
        await self._check_host(request)
        try:
            check_request(request, self.config, self.profiles)
        except JobError:
            raise
        except NixcellError as exc:  # a check below compile's that spoke a CLI error
            raise JobError(one_line(exc.message)) from None
        if request.via_cache is not None:
            raise JobError("via_cache is set by the server that takes the submit")
        if self.host_cache is not None and self.config.cache_url:  # the others fetch from here
            request = request.model_copy(update={"via_cache": self.config.cache_url})
        self.workspaces.check(request)
        if request.workspace.upload:
            self.workspaces.check_upload(caller, request.workspace.upload)
        body = request.model_dump()
        if self.cluster is None:
            job = await asyncio.to_thread(self.store.create, caller.key, caller.name, body)
            self.queue.push(job.id, job.owner)
        else:
            job = await asyncio.to_thread(self.cluster.create, caller.key, caller.name, body)
        self._wake.set()
        try:  # stored: from here on, nothing may make the answer an error
            await self.publish(job)
        except Exception as exc:
            log.warning("job %d: its queued event was not published: %s", job.id, exc)
        return job

    async def _queued(self) -> int:
        if self.cluster is None:
            return len(self.queue)
        return (await asyncio.to_thread(self.store.counts)).get("queued", 0)

    async def _check_host(self, request: JobRequest) -> None:
        """``on_host`` names a host that serves this queue (a typo would wait forever)."""
        wanted = request.on_host
        if wanted is None or wanted == self.config.host_name:
            return
        if self.cluster is None:
            raise JobError(
                f"on_host: this server runs its jobs itself (host {self.config.host_name}); "
                f"{shown_value(wanted)} is not one of its hosts"
            )
        hosts = {h["name"] for h in await asyncio.to_thread(self.store.hosts)}
        if wanted not in hosts:
            known = ", ".join(sorted(hosts)) or "none"
            raise JobError(f"on_host: no host {shown_value(wanted)} in this cluster ({known})")

    def _accept(self) -> None:
        if not self.accepting:
            raise Unavailable("the server is not accepting jobs (it is stopping)")

    async def cancel(self, caller: Caller, job_id: int) -> Job:
        job = self.get(caller, job_id)
        if job.terminal:
            raise Conflict(f"job {job_id} has already finished ({job.state})")
        reason = f"cancelled by {caller.name}"
        if job_id not in self._claims and (job.state == "queued" or job_id in self.queue):
            self.queue.remove(job_id)  # the scheduler cannot pick it now
            done = await self._move(job_id, "cancelled", expect=("queued",), reason=reason)
            if done is not None:
                return done
        claim = self._claims.get(job_id)
        if claim is not None:  # a slot was just given to it: let the claim settle first
            await asyncio.wait({claim[1]})
        run = self._runs.get(job_id)
        if run is not None and run.task is not None:
            run.cancel(reason)
            await asyncio.wait({run.task})  # the cell is gone when this returns
        elif run is None and self.cluster is not None and job.host != self.config.host_name:
            job = await self._cancel_elsewhere(job, reason)  # its host ends it
        elif run is None:  # active in the store, run by no one here: end it in the store
            done = await self._move(job_id, "cancelled", expect=ACTIVE, reason=reason)
            if done is not None:
                return done
        job = self.get(caller, job_id)
        if job.state != "cancelled":
            raise Conflict(f"job {job_id} has already finished ({job.state})")
        return job

    async def _cancel_elsewhere(self, job: Job, reason: str) -> Job:
        """Ask the host that runs ``job`` to cancel it (NOTIFY; its heartbeat reads it too) and
        wait until it has; a lost host's job is ended by the liveness check instead."""
        await asyncio.to_thread(self.store.request_cancel, job.id, reason)
        limit = asyncio.get_running_loop().time() + self.config.host_timeout + 5
        while not job.terminal and asyncio.get_running_loop().time() < limit:
            waiter = self.hub.waiter(job.id)
            try:
                fresh = await asyncio.to_thread(self.store.get, job.id)
                if fresh is None or fresh.terminal:
                    return fresh or job
                await asyncio.wait({waiter}, timeout=self.config.heartbeat)
            finally:
                self.hub.forget(job.id, waiter)
        return job
