"""What the API streams: a job's log as it grows (``follow``), live events, artifacts.

A follower reads the store, and sleeps on the hub until the job has more: it takes its waiter
*before* each read, so a line stored between the read and the sleep wakes it at once. The job's
terminal state is sent last, once every stored line is out: the executor stores its last lines
before the final transition, so one more read after seeing the state is enough.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterable, Iterator

from nixcell.jobs.hub import Hub, Subscription
from nixcell.jobs.model import TERMINAL, Event, Job, LogLine
from nixcell.jobs.store import JobStore

BATCH = 1000  # lines per store read
RECHECK = 15.0  # seconds a follower sleeps at most between reads (a safety net, not the path)


async def follow_job(
    store: JobStore,
    hub: Hub,
    job_id: int,
    *,
    after: int = 0,
    streams: Iterable[str] | None = None,
) -> AsyncIterator[LogLine | Event]:
    """Lines with seq > ``after`` and the job's events (all of them from the start; only new
    ones on a resume), then the terminal state's event last."""
    wanted = list(streams) if streams is not None else None
    seq = after
    seen = 0 if after == 0 else await asyncio.to_thread(_sent_before, store, job_id)
    final: Event | None = None
    last_pass = False  # the hub closed: one more read (a state stored just before it closed)
    while True:
        waiter = hub.waiter(job_id)
        try:  # every read off the loop: a cluster's store is a database over the network
            lines = await asyncio.to_thread(
                store.logs, job_id, after=seq, streams=wanted, limit=BATCH
            )
            for line in lines:
                seq = line.seq
                yield line
            if len(lines) >= BATCH:
                continue
            job, events = await asyncio.to_thread(_job_and_events, store, job_id, seen)
            if job is None:  # deleted (retention) while followed
                return
            for event in events:
                seen = event.seq
                if _is_final(event):
                    final = terminal_event(event, job)
                else:
                    yield event
            if job.terminal:
                more = await asyncio.to_thread(
                    store.logs, job_id, after=seq, streams=wanted, limit=1
                )
                if more:
                    continue
                yield (  # with the job as read now: the final event may have been read
                    # with a job read just before it ended (no exit code yet)
                    terminal_event(final, job)
                    if final is not None
                    else await asyncio.to_thread(_stored_final, store, job)
                )
                return
            if hub.closed:  # the service stops: it stored every state it ends before this
                if last_pass:
                    return
                last_pass = True
                continue
            await asyncio.wait({waiter}, timeout=RECHECK)
        finally:
            hub.forget(job_id, waiter)


async def job_events(
    store: JobStore, sub: Subscription, job_id: int | None = None
) -> AsyncIterator[Event]:
    """Live events of ``sub`` (made when the caller asked: nothing published since is
    missed), or of one job until its terminal state."""
    try:
        if job_id is not None:
            job = store.get(job_id)
            if job is None:
                return
            if job.terminal:
                yield _stored_final(store, job)
                return
        async for event in sub:
            if job_id is not None and event.job_id != job_id:
                continue
            yield event
            if job_id is not None and _is_final(event):
                return
    finally:
        sub.close()


def _job_and_events(store: JobStore, job_id: int, seen: int) -> tuple[Job | None, list[Event]]:
    job = store.get(job_id)
    return job, ([] if job is None else store.events(job_id, after=seen))


def terminal_event(event: Event, job: Job) -> Event:
    """A terminal state's event with the job's exit code (``Event.exit_code``)."""
    import dataclasses

    return dataclasses.replace(event, exit_code=job.exit_code)


def _is_final(event: Event) -> bool:
    return event.kind == "state" and event.state in TERMINAL


def _stored_final(store: JobStore, job: Job) -> Event:
    for event in reversed(store.events(job.id)):
        if _is_final(event):
            return terminal_event(event, job)
    when = job.finished or job.created
    return Event(job.id, 0, when, "state", job.state, job.reason, job.exit_code)


def _sent_before(store: JobStore, job_id: int) -> int:
    """On a resume: the events already sent (all but a terminal one, which is always sent)."""
    events = store.events(job_id)
    if events and _is_final(events[-1]):
        return events[-1].seq - 1
    return events[-1].seq if events else 0


class IteratorIO(io.RawIOBase):
    """A readable file over an iterator of byte chunks (the workspace's tar stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = iter(chunks)
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._left:
            try:
                self._left = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def close(self) -> None:
        closer = getattr(self._chunks, "close", None)
        if closer is not None:
            closer()
        super().close()
