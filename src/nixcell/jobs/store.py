"""The job store interface: jobs, their events and their log lines.

``sqlite.py`` implements it for one host (WAL); ``pgstore.py`` puts PostgreSQL behind the same
methods (and the ``ClusterStore`` ones of several hosts), so nothing above this layer knows which
database it talks to. Every method is
synchronous and short; the service calls them from a worker thread when it must not block.

Durability: ``create`` returns only once the job is committed (a submit answered with an id is
never lost); ``transition`` is a compare-and-set (a job claimed by one worker is not claimed by
another; a cancelled job does not become running).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from nixcell.jobs.model import Event, Job, LogLine

TRUNCATED = "[nixcell: log truncated: {dropped} more line(s) not stored]"  # the marker's text


class JobStore(Protocol):
    def create(self, owner: str, owner_name: str, request: dict[str, Any]) -> Job:
        """Store a new job as ``queued`` (and its first event), committed, and return it."""

    def get(self, job_id: int) -> Job | None: ...

    def list(
        self,
        *,
        owner: str | None = None,  # None: every owner (admins)
        states: Iterable[str] | None = None,
        limit: int = 100,
        before: int | None = None,  # ids below this (paging, newest first)
    ) -> list[Job]:
        """Newest first."""

    def queued(self) -> list[Job]:
        """Every queued job, oldest first (the scheduler picks with fairness from these)."""

    def transition(
        self,
        job_id: int,
        state: str,
        *,
        expect: Iterable[str],
        reason: str | None = None,
        exit_code: int | None = None,
        cell_id: str | None = None,
    ) -> Job | None:
        """Move a job to ``state`` if its state is one of ``expect``; record the event (with
        ``reason`` as its detail) and the times (``started`` on running, ``finished`` on a
        terminal state). Returns the updated job, or None when the state did not match."""

    def add_event(self, job_id: int, kind: str, detail: str | None = None) -> Event: ...

    def events(self, job_id: int, *, after: int = 0) -> list[Event]: ...

    def append_logs(self, job_id: int, lines: Sequence[tuple[str, str]]) -> int:
        """Store ``(stream, text)`` lines in one transaction, numbered on from the job's last
        seq. Past the per-job bound, lines are dropped and one marker line (``TRUNCATED``, stream
        ``system``) is kept as the last stored line, its count updated. Returns the last seq."""

    def logs(
        self,
        job_id: int,
        *,
        after: int = 0,
        streams: Iterable[str] | None = None,
        tail: int | None = None,  # only the last N lines (of the selected streams)
        limit: int = 10000,
    ) -> list[LogLine]:
        """Lines with seq > ``after``, oldest first."""

    def unfinished(self) -> list[Job]:
        """Jobs in ``preparing`` or ``running`` (recovery at start marks them error)."""

    def expired(self, finished_before: float) -> list[Job]:
        """Terminal jobs finished before the given time (retention)."""

    def delete(self, job_id: int) -> None:
        """A terminal job with its events and logs."""

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state in ``model.STATES``, zeros included)."""

    def durations(self, *, limit: int = 1000) -> list[tuple[str, float]]:
        """(state, seconds from started to finished) of recent finished jobs (metrics)."""

    def close(self) -> None: ...


@runtime_checkable
class ClusterStore(JobStore, Protocol):
    """A ``JobStore`` shared by several job hosts (``pgstore.PgStore``): the service claims from
    it instead of its in-memory queue whenever a store has these (``store.cluster`` is True).
    Times are the database's clock; every change is NOTIFYed (``listen``)."""

    cluster: bool

    def create(
        self,
        owner: str,
        owner_name: str,
        request: dict[str, Any],
        *,
        target: str | None = None,  # only this host takes it (``--on-host``); None: any host
        closure_key: str | None = None,  # the closure hint (hash of packages + nixpkgs)
        retries: int = 0,  # re-runs allowed after its host was lost (idempotent jobs)
    ) -> Job: ...

    def transition(
        self,
        job_id: int,
        state: str,
        *,
        expect: Iterable[str],
        reason: str | None = None,
        exit_code: int | None = None,
        cell_id: str | None = None,
        host: str | None = None,  # the job must be claimed by this host (a host moves its own)
    ) -> Job | None: ...

    def list(
        self,
        *,
        owner: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        before: int | None = None,
        host: str | None = None,  # only jobs this host claimed; None: the whole cluster's
    ) -> list[Job]: ...

    def unfinished(self, host: str | None = None) -> list[Job]:
        """Jobs in preparing/running (``host``: only those it claimed: a restarted host's own
        leftovers, not its peers' running jobs)."""

    def claim(
        self,
        host: str,
        *,
        per_user: int | None = None,
        prefer_after: float = 5.0,
        live_within: float = 30.0,
    ) -> Job | None:
        """In one transaction: the next queued job ``host`` may run (target None or ``host``),
        by cluster-wide fairness (owner with the fewest preparing/running jobs, then smallest
        id; owners at ``per_user`` skipped; a job whose closure only another live host has
        waits ``prefer_after`` s for it), locked SKIP LOCKED, moved to ``preparing`` on
        ``host`` (attempts + 1, event, NOTIFY). None when there is none."""

    def heartbeat(
        self, host: str, *, concurrency: int, running: int, closure: str | None = None
    ) -> None:
        """Upsert the host's row (seen = the database's clock; ``closure`` added to its recent
        closure keys)."""

    def hosts(self) -> list[dict[str, Any]]:
        """Every host: name, age (s since seen), started, concurrency, running, closures."""

    def reap_lost(self, timeout: float) -> list[Job]:
        """Active jobs whose host is silent past ``timeout`` s (or unknown): re-queued while
        attempts <= retries (event "requeued: host X lost"), else error "host lost"; cancelled
        when a cancel was requested. Returns them as they are now."""

    def request_cancel(self, job_id: int, reason: str) -> None:
        """Record a cancel for the host running the job and NOTIFY ``c <id>``."""

    def take_cancels(self, host: str) -> list[tuple[int, str]]:
        """(job id, reason) of cancels of active jobs claimed by ``host``, each returned once."""

    def put_upload(self, upload_id: str, owner: str, data: bytes) -> None: ...

    def take_upload(self, upload_id: str, owner: str) -> bytes | None:
        """The owner's upload, removed from the store (None: no such upload of theirs)."""

    def drop_upload(self, upload_id: str) -> None: ...

    def put_artifacts(self, job_id: int, data: bytes) -> None: ...

    def get_artifacts(self, job_id: int) -> bytes | None: ...

    def listen(self, callback: Callable[[str, str], None]) -> Any:
        """Call ``callback(kind, rest)`` from a daemon thread for every NOTIFY on channel
        ``nixcell``: ``e <job> <seq> <host|->`` an event, ``l <job> <seq>`` log lines,
        ``q <job> <target|->`` queued, ``c <job>`` cancel requested; ``("r", "")`` after a
        reconnect (read again: some may be missed). Returns a handle with ``stop()``."""
