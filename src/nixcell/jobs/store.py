"""The job store interface: jobs, their events and their log lines.

``sqlite.py`` implements it for one host (WAL); the scale-out issue puts PostgreSQL behind the
same methods, so nothing above this layer knows which database it talks to. Every method is
synchronous and short; the service calls them from a worker thread when it must not block.

Durability: ``create`` returns only once the job is committed (a submit answered with an id is
never lost); ``transition`` is a compare-and-set (a job claimed by one worker is not claimed by
another; a cancelled job does not become running).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

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
