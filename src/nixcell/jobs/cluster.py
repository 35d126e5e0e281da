"""The service's part in a cluster: hosts sharing one PostgreSQL job store (docs/scale-out.md).

Each host claims jobs from the shared queue itself (``ClusterStore.claim``: one transaction,
``FOR UPDATE SKIP LOCKED``, fair across the cluster), so there is no coordinator to lose. What
the other hosts do reaches this one as NOTIFY messages (``ClusterStore.listen``, a thread): new
log lines and events wake this host's followers and web lists, a queued job wakes the claimer, a
cancel reaches the host that runs the job. NOTIFY is only the fast path: the heartbeat, every
``heartbeat`` seconds, also claims, takes pending cancels and ends the jobs of hosts silent past
``host_timeout`` (re-queued when the job allows ``retry``), so a lost notification only costs a
heartbeat's delay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

from nixcell.jobs.model import Job

log = logging.getLogger(__name__)

PUBLISHED_LIMIT = 10_000  # jobs whose last published event seq is remembered (dedupe)
PENDING_LIMIT = 2048  # jobs whose events wait to be read here (more: dropped, see _notice)
ORPHAN_QUEUED = "requeued: its claim's answer was lost with the database connection"
ORPHAN_LOST = "its end was lost with the database connection"
FENCED = "stopped: this host lost the job store (its jobs may run elsewhere)"
TAKEN = "stopped: another host took the job over (this host was seen lost)"


class Cluster:
    """Owned by ``JobService`` when its store is a cluster store; runs on the service's loop."""

    def __init__(self, service: Any, store: Any) -> None:
        self.service = service
        self.store = store
        self._realised: list[str] = []  # closure keys realised here since the last heartbeat
        self._early: dict[int, str] = {}  # cancels taken before their job's run was made
        self._published: dict[int, int] = {}  # job id -> last event seq published here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._claiming = False
        self._pending: set[int] = set()  # jobs another host changed, not yet read here
        self._background: set[asyncio.Task[None]] = set()
        self._cancels: asyncio.Task[None] | None = None  # the one reader of cancel requests
        self._cancels_again = False
        # the heartbeat's own thread: a flood of notifications (anyone who can connect may
        # NOTIFY) fills the default executor, and a heartbeat queued behind it would make this
        # live host look lost
        self._beats = concurrent.futures.ThreadPoolExecutor(1, "nixcell-heartbeat")
        self._last_beat = 0.0

    @property
    def host(self) -> str:
        return str(self.service.config.host_name)

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._loop.run_in_executor(self._beats, self._beat)
        self._last_beat = self._loop.time()
        self._listener = self.store.listen(self._from_thread)
        self._tasks = [asyncio.ensure_future(self._heartbeats())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._listener.stop)
            self._listener = None
        self._beats.shutdown(wait=False)

    # -- claiming --------------------------------------------------------------------------

    async def claim_some(self, start: Callable[[Job], None]) -> None:
        """Claim jobs while this host has free slots; ``start`` runs each claimed job. One
        claimer at a time: two would claim past the concurrency limit."""
        if self._claiming:
            return
        self._claiming = True
        try:
            svc = self.service
            while svc.accepting and svc.busy() < svc.config.concurrency:
                job = await asyncio.to_thread(
                    self.store.claim,
                    self.host,
                    per_user=svc.config.per_user,
                    prefer_after=svc.config.closure_hint,
                    live_within=svc.config.host_timeout,
                )
                if job is None:
                    return
                if not svc.accepting:  # stop began meanwhile: back to the queue, untouched
                    await self.move(job.id, "queued", expect=("preparing",), reason="requeued")
                    return
                start(job)
                early = self._early.pop(job.id, None)
                if early is not None:  # its cancel came while it was being claimed
                    self._cancel([(job.id, early)])
        finally:
            self._claiming = False

    def realised(self, key: str | None) -> None:
        """A job's closure was realised here: hosts prefer jobs whose closure they hold (sent
        with the next heartbeats, one key each)."""
        if key and key not in self._realised:
            self._realised = [*self._realised, key][-64:]

    def create(self, owner: str, owner_name: str, body: dict[str, Any]) -> Job:
        """Store a submit, exactly once: asked again after a dropped connection with the same
        submit key, the store answers the job the first ask made (if it did)."""
        import secrets

        from nixcell.jobs import routing
        from nixcell.jobs.pgconn import retrying

        return retrying(
            self.store.create,
            owner,
            owner_name,
            body,
            target=routing.target(body),
            closure_key=routing.closure_key(body),
            retries=routing.retries(body),
            submit_key=secrets.token_hex(16),
        )

    async def move(self, job_id: int, state: str, *, expect: Any, **kw: Any) -> Job | None:
        """A move of a job this host claimed (the store refuses it for another host's)."""
        return await self.service.move(job_id, state, expect=expect, host=self.host, **kw)

    # -- heartbeat -------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.service.config.heartbeat)
            try:
                lost, cancels = await loop.run_in_executor(self._beats, self._beat)
            except Exception as exc:  # the database is away: the listener reconnects
                log.warning("heartbeat failed: %s", _line(exc))
                self._fence(loop.time() - self._last_beat)
                continue
            self._last_beat = loop.time()
            for job in lost:
                await self.service.publish(job)
            self._cancel(cancels)
            if not self._claiming:
                await self._reconcile(set(self.service.claimed()))
            self.service.wake()

    def _fence(self, silent: float) -> None:
        """This host's heartbeats have failed for most of ``host_timeout``: the others will
        soon end or re-run its jobs (``retry``), so it stops their cells itself — a job must
        never run on two hosts at once."""
        if silent < 0.8 * self.service.config.host_timeout:
            return
        for job_id in self.service.claimed():
            run = self.service.run_of(job_id)
            if run is not None and run.cancel(FENCED):
                log.warning("job %d: stopped: %s", job_id, FENCED)

    async def _reconcile(self, known: set[int]) -> None:
        """This host's jobs as the store sees them against what it runs. One it runs that the
        store no longer gives it (another host ended or re-queued it: this host was seen lost)
        is stopped. One the store gives it that it does not run is a claim or a final state
        whose commit happened while the connection dropped (the answer never came): a
        ``preparing`` one goes back to the queue; a ``running`` one's end was lost with the
        connection, so it is an error (what it did is in its log)."""
        from nixcell.jobs.model import ACTIVE

        limit = max(1000, 2 * self.service.config.concurrency)
        try:
            mine = await asyncio.get_running_loop().run_in_executor(
                self._beats,
                functools.partial(self.store.list, states=ACTIVE, host=self.host, limit=limit),
            )
        except Exception as exc:
            log.warning("could not compare this host's jobs with the store's: %s", _line(exc))
            return
        if self._claiming:  # a claim began meanwhile: its job may be in the answer
            return
        theirs = {job.id for job in mine}
        for job_id in known:
            run = self.service.run_of(job_id)
            if job_id not in theirs and run is not None and run.cancel(TAKEN):
                log.warning("job %d: stopped: %s", job_id, TAKEN)
        for job in mine:
            if job.id in known or job.host != self.host or job.id in self.service.claimed():
                continue
            log.warning("job %d: %s here but not run by this host: ended", job.id, job.state)
            if job.state == "preparing":
                await self.move(job.id, "queued", expect=("preparing",), reason=ORPHAN_QUEUED)
            else:
                await self.move(job.id, "error", expect=("running",), reason=ORPHAN_LOST)

    def _beat(self) -> tuple[list[Job], list[tuple[int, str]]]:
        svc = self.service
        key = self._realised.pop(0) if self._realised else None
        self.store.heartbeat(
            self.host, concurrency=svc.config.concurrency, running=svc.busy(), closure=key
        )
        lost = self.store.reap_lost(svc.config.host_timeout)
        return lost, self.store.take_cancels(self.host)

    def _cancel(self, cancels: list[tuple[int, str]]) -> None:
        for job_id, reason in cancels:
            run = self.service.run_of(job_id)
            if run is not None:
                run.cancel(reason)
            else:  # claimed in this instant, its run not made yet: cancelled once it is
                self._early[job_id] = reason
                while len(self._early) > 1000:
                    self._early.pop(next(iter(self._early)))

    # -- notifications ---------------------------------------------------------------------

    def _from_thread(self, kind: str, payload: str) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._notice, kind, payload)

    def _notice(self, kind: str, payload: str) -> None:
        svc = self.service
        fields = payload.split()
        try:
            job_id = int(fields[0]) if fields else 0
        except ValueError:
            log.warning("ignored a malformed notification %r %r", kind, payload[:80])
            return
        if kind == "l":
            svc.hub.notify(job_id)
        elif kind == "e":
            seq = int(fields[1]) if len(fields) > 1 and fields[1][:12].isdigit() else None
            if seq is not None and seq <= self._published.get(job_id, 0):
                return  # this host made it and published it already
            if not svc.hub.listened(job_id):
                return  # nobody here follows it or watches the event streams: nothing to do
            if not self._pending:
                self._spawn(self._read_pending())
            if len(self._pending) < PENDING_LIMIT:  # a flood: followers' own rereads cover it
                self._pending.add(job_id)
        elif kind == "q":
            svc.wake()
        elif kind == "c":
            self._want_cancels()
        elif kind == "r":  # reconnected: whatever was missed, read it again
            svc.wake()
            svc.hub.notify_all()
            self._want_cancels()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _read_pending(self) -> None:
        """The events of every job named since the last read, one job at a time (a burst of
        notifications is one pass, not a thread each)."""
        await asyncio.sleep(0)
        while self._pending:
            job_id = self._pending.pop()
            await self._events_of(job_id)

    def _want_cancels(self) -> None:
        """Read the cancel requests: one reader at a time, once more if asked meanwhile (a
        flood of ``c`` notifications is one or two reads, not a thread each)."""
        if self._cancels is not None and not self._cancels.done():
            self._cancels_again = True
            return
        self._cancels = asyncio.ensure_future(self._take_cancels())

    async def _take_cancels(self) -> None:
        while True:
            self._cancels_again = False
            try:
                cancels = await asyncio.to_thread(self.store.take_cancels, self.host)
            except Exception as exc:
                log.warning("could not read cancel requests: %s", _line(exc))
                return
            self._cancel(cancels)
            if not self._cancels_again:
                return

    async def _events_of(self, job_id: int) -> None:
        """Another host changed a job: publish what this host has not published yet."""
        try:
            job, events = await asyncio.to_thread(self._read_events, job_id)
        except Exception as exc:
            log.warning("job %d: could not read its events: %s", job_id, _line(exc))
            return
        if job is None:
            return
        self.service.publish_events(job, events)

    def _read_events(self, job_id: int) -> tuple[Job | None, list[Any]]:
        job = self.store.get(job_id)
        if job is None:
            return None, []
        return job, self.store.events(job_id, after=self._published.get(job_id, 0))

    def published(self, job: Job, seq: int) -> bool:
        """Record that event ``seq`` of ``job`` is out; False if it (or a later one) was."""
        if seq <= self._published.get(job.id, 0):
            return False
        self._published[job.id] = seq
        if len(self._published) > PUBLISHED_LIMIT:
            for old in list(self._published)[: PUBLISHED_LIMIT // 10]:
                del self._published[old]
        return True


def _line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
