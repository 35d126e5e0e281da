"""The fairness rule of ``jobs/scheduler.py``, against the rule as the issue words it.

The oracle below is written from the sentence, not from the code: among owners under their
``per_user`` cap, take the fewest running; among their queued jobs, the oldest (smallest id).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.jobs.scheduler import FairQueue

OWNERS = ["uid:1000", "uid:1001", "token:ci", "uid:0"]


def oracle(queued: list[tuple[int, str]], running: dict[str, int], per_user: int | None):
    eligible = [
        (running.get(owner, 0), job_id)
        for job_id, owner in queued
        if per_user is None or running.get(owner, 0) < per_user
    ]
    return min(eligible)[1] if eligible else None


def queue_of(queued: list[tuple[int, str]]) -> FairQueue:
    q = FairQueue()
    for job_id, owner in queued:
        q.push(job_id, owner)
    return q


@pytest.mark.parametrize(
    ("queued", "running", "per_user", "expected"),
    [
        ([], {}, None, None),
        ([(1, "a")], {}, None, 1),
        ([(1, "a"), (2, "a"), (3, "b")], {}, None, 1),  # no one runs: oldest
        ([(1, "a"), (2, "a"), (3, "b")], {"a": 1}, None, 3),  # b has fewer running
        ([(1, "a"), (2, "b")], {"a": 2, "b": 2}, None, 1),  # tie: oldest
        ([(1, "a"), (2, "b")], {"a": 1}, 1, 2),  # a at its cap
        ([(1, "a"), (2, "b")], {"a": 1, "b": 1}, 1, None),  # everyone at the cap
        ([(5, "a"), (2, "b"), (9, "c")], {"b": 3, "c": 3}, None, 5),
        ([(4, "a"), (3, "a")], {}, None, 3),  # pushed out of order: still oldest first
        ([(1, "a")], {"a": 0}, 0, None),  # a cap of 0 starts nothing
    ],
)
def test_pick_table(queued, running, per_user, expected) -> None:
    assert queue_of(queued).pick(running, per_user) == expected
    assert oracle(queued, running, per_user) == expected


jobs = st.lists(st.sampled_from(OWNERS), max_size=40).map(
    lambda owners: [(i + 1, o) for i, o in enumerate(owners)]
)
runs = st.dictionaries(st.sampled_from(OWNERS), st.integers(0, 5))
caps = st.none() | st.integers(1, 4)


@given(jobs, runs, caps)
def test_pick_is_the_rule(queued, running, per_user) -> None:
    assert queue_of(queued).pick(running, per_user) == oracle(queued, running, per_user)


@given(jobs, st.integers(1, 6), caps, st.lists(st.integers(1, 40), max_size=10))
def test_draining_the_queue(queued, concurrency, per_user, cancelled) -> None:
    """Start jobs until none may start, finishing the oldest running one each round: every job
    starts exactly once (or was cancelled), no owner ever exceeds its cap, and each start is
    what the rule picks at that moment."""
    q = queue_of(queued)
    for job_id in cancelled:
        q.remove(job_id)
    left = [(i, o) for i, o in queued if i not in cancelled]
    owner_of = dict(queued)
    running: list[int] = []
    started: list[int] = []
    while len(q):
        counts: dict[str, int] = {}
        for job_id in running:
            counts[owner_of[job_id]] = counts.get(owner_of[job_id], 0) + 1
        pick = q.pick(counts, per_user) if len(running) < concurrency else None
        if pick is None:
            assert running, "nothing runs and nothing may start: the queue is stuck"
            running.pop(0)
            continue
        assert pick == oracle([(i, o) for i, o in left if i in q], counts, per_user)
        assert per_user is None or counts.get(owner_of[pick], 0) < per_user
        assert q.remove(pick)
        assert not q.remove(pick)
        running.append(pick)
        started.append(pick)
    assert sorted(started) == sorted(i for i, _ in left)


def test_a_later_owner_does_not_wait_for_an_earlier_ones_backlog() -> None:
    """Concurrency 2: a queued 1..3 before b queued 4; b's job starts second, not fourth."""
    q = queue_of([(1, "a"), (2, "a"), (3, "a"), (4, "b")])
    first = q.pick({})
    q.remove(first)
    second = q.pick({"a": 1})
    q.remove(second)
    assert (first, second) == (1, 4)
    assert q.pick({"a": 1, "b": 1}) == 2  # then a's next, in a's order


def test_remove_and_contains() -> None:
    q = queue_of([(1, "a"), (2, "b")])
    assert 1 in q and len(q) == 2
    assert q.remove(1) and 1 not in q
    assert not q.remove(1) and not q.remove(99)
    q.push(2, "b")  # a repeated push is one job
    assert len(q) == 1 and list(q.ids()) == [2]
