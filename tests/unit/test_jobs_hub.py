"""The in-process hub (``jobs/hub.py``): waiters wake on notify, subscriptions see only what
their caller may see, a subscriber too far behind is dropped, close ends everything."""

from __future__ import annotations

import asyncio

from nixcell.jobs.hub import Hub
from nixcell.jobs.model import Caller, Event


def ev(job_id: int, seq: int = 1, state: str = "queued") -> Event:
    return Event(job_id, seq, 0.0, "state", state)


def test_waiters_wake_on_their_job_only_and_are_forgotten() -> None:
    async def main():
        hub = Hub()
        one, two = hub.waiter(1), hub.waiter(2)
        hub.notify(1)
        assert one.done() and not two.done()
        hub.forget(2, two)
        hub.notify(2)  # nobody waits any more: nothing held
        assert not two.done() and hub._waiters == {}
        late = hub.waiter(3)
        hub.publish(ev(3), "uid:1")  # an event wakes the job's followers too
        assert late.done()

    asyncio.run(main())


def test_subscriptions_filter_by_caller() -> None:
    alice, admin = Caller("uid:1", "alice"), Caller("uid:0", "root", admin=True)

    async def main():
        hub = Hub()
        mine, everything = hub.subscribe(alice.may_see), hub.subscribe(admin.may_see)
        hub.publish(ev(1), "uid:1")
        hub.publish(ev(2), "uid:2")
        hub.close()
        return [e.job_id async for e in mine], [e.job_id async for e in everything]

    assert asyncio.run(main()) == ([1], [1, 2])


def test_a_subscriber_too_far_behind_is_dropped_not_grown() -> None:
    async def main():
        hub = Hub()
        slow = hub.subscribe(lambda owner: True, limit=5)
        for i in range(50):
            hub.publish(ev(i), "uid:1")
        got = [e.job_id async for e in slow]  # ends: it was dropped, with what it had
        assert slow not in hub._subs
        return got

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]


def test_close_wakes_waiters_and_refuses_new_ones_quietly() -> None:
    async def main():
        hub = Hub()
        w = hub.waiter(1)
        hub.close()
        assert w.done() and hub.waiter(2).done()
        return [e async for e in hub.subscribe(lambda owner: True)]

    assert asyncio.run(main()) == []
