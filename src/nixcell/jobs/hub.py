"""In-process pub/sub: followers sleep until a job has new lines or events, not on a timer.

The store is the truth; the hub only wakes readers, who then read the store. Two kinds:
``waiter(job_id)`` is a one-shot future set by the next ``notify(job_id)`` (a log follower
takes it *before* reading the store, so nothing stored in between is missed), and
``subscribe()`` is a bounded queue of every published ``Event`` (the web list). A subscriber
that falls too far behind is dropped (its stream ends; a client reconnects), so a slow reader
cannot make the daemon hold unbounded memory. Everything runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from nixcell.jobs.model import Event

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1000  # events a subscriber may be behind before it is dropped


class _Closed:
    """The sentinel that ends a subscription."""


_CLOSED = _Closed()


class Subscription:
    """A bounded queue of (event, owner) pairs; iterate it with ``async for``."""

    def __init__(self, hub: Hub, visible: Callable[[str], bool], limit: int) -> None:
        self._hub = hub
        self._visible = visible
        self._queue: asyncio.Queue[tuple[Event, str] | _Closed] = asyncio.Queue(limit + 1)
        self._limit = limit

    def _offer(self, event: Event, owner: str) -> None:
        if not self._visible(owner):
            return
        if self._queue.qsize() >= self._limit:  # too far behind: end it rather than grow
            log.info("dropped an event subscriber that fell %d events behind", self._limit)
            self._hub._subs.discard(self)
            self._queue.put_nowait(_CLOSED)
            return
        self._queue.put_nowait((event, owner))

    def close(self) -> None:
        self._hub._subs.discard(self)
        if not self._queue.full():
            self._queue.put_nowait(_CLOSED)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while True:
                item = await self._queue.get()
                if isinstance(item, _Closed):
                    return
                yield item[0]
        finally:
            self._hub._subs.discard(self)


class Hub:
    def __init__(self) -> None:
        self._waiters: dict[int, list[asyncio.Future[None]]] = {}
        self._subs: set[Subscription] = set()
        self.closed = False

    def waiter(self, job_id: int) -> asyncio.Future[None]:
        """A future done at the next ``notify(job_id)`` (or at ``close``)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_result(None)
            return fut
        self._waiters.setdefault(job_id, []).append(fut)
        return fut

    def forget(self, job_id: int, fut: asyncio.Future[None]) -> None:
        """A follower that stops waiting takes its future back (no leak per poll)."""
        waiting = self._waiters.get(job_id)
        if waiting is not None:
            with contextlib.suppress(ValueError):
                waiting.remove(fut)
            if not waiting:
                del self._waiters[job_id]

    def notify(self, job_id: int) -> None:
        """Job ``job_id`` has new lines or events."""
        for fut in self._waiters.pop(job_id, ()):
            if not fut.done():
                fut.set_result(None)

    def listened(self, job_id: int) -> bool:
        """Someone here would hear of this job's events (a follower or an event stream)."""
        return bool(self._subs) or bool(self._waiters.get(job_id))

    def notify_all(self) -> None:
        """Every follower reads the store again (a cluster host missed notifications)."""
        for job_id in list(self._waiters):
            self.notify(job_id)

    def publish(self, event: Event, owner: str) -> None:
        """A new event of a job owned by ``owner``: to its followers and every subscriber."""
        self.notify(event.job_id)
        for sub in list(self._subs):
            sub._offer(event, owner)

    def subscribe(self, visible: Callable[[str], bool], limit: int = QUEUE_LIMIT) -> Subscription:
        """Events of jobs whose owner passes ``visible`` (``Caller.may_see``), from now on."""
        sub = Subscription(self, visible, limit)
        if self.closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def close(self) -> None:
        """Shutdown: wake every follower and end every subscription."""
        self.closed = True
        for job_id in list(self._waiters):
            self.notify(job_id)
        for sub in list(self._subs):
            sub.close()
