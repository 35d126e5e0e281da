"""A store used from many threads at once, as the service does (event loop + workers): the
contract for every store (``tests/storecontract/__init__.py``)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from nixcell.jobs.store import JobStore


@pytest.fixture
def store(make_store):
    return make_store()


def together(n: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in n threads released at the same moment; their results (or errors)."""
    start = threading.Barrier(n)
    results: list[object] = [None] * n

    def body(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # the test looks at it
            results[i] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("rounds", range(5))
def test_eight_workers_claiming_one_job_exactly_one_wins(store: JobStore, rounds: int) -> None:
    job = store.create("u", "u", {})
    results = together(
        8, lambda i: store.transition(job.id, "preparing", expect=["queued"], cell_id=f"w{i}")
    )
    winners = [r for r in results if r is not None]
    assert not [r for r in results if isinstance(r, Exception)]
    assert len(winners) == 1
    assert store.get(job.id).cell_id == winners[0].cell_id
    assert [e.state for e in store.events(job.id)] == ["queued", "preparing"]


def test_cancel_racing_start_leaves_one_consistent_outcome(store: JobStore) -> None:
    jobs = [store.create("u", "u", {}) for _ in range(20)]

    def work(i: int) -> list[object]:
        if i % 2:
            return [store.transition(j.id, "cancelled", expect=["queued", "running"]) for j in jobs]
        return [store.transition(j.id, "running", expect=["queued"]) for j in jobs]

    together(8, work)
    for job in jobs:
        states = [e.state for e in store.events(job.id)]
        assert states in (["queued", "cancelled"], ["queued", "running", "cancelled"])
        assert store.get(job.id).state == "cancelled"


def test_sixteen_threads_logging_to_sixteen_jobs_lose_nothing(store: JobStore) -> None:
    jobs = [store.create("u", "u", {}).id for _ in range(16)]
    batches, size = 40, 7

    def work(i: int) -> None:
        job_id = jobs[i]
        for b in range(batches):
            other = jobs[(i + b) % 16]  # also into the other threads' jobs
            store.append_logs(job_id, [("stdout", f"{i}:{b}:{n}") for n in range(size)])
            store.append_logs(other, [("stderr", f"x{i}:{b}")])

    assert together(16, work) == [None] * 16
    every = set()
    for job_id in jobs:
        lines = store.logs(job_id, limit=100_000)
        assert [ln.seq for ln in lines] == list(range(1, len(lines) + 1))  # no gaps, no repeats
        assert store.get(job_id).log_lines == len(lines)
        every.update(ln.text for ln in lines)
    expected = {f"{i}:{b}:{n}" for i in range(16) for b in range(batches) for n in range(size)}
    assert expected <= every
    assert len(every) == len(expected) + 16 * batches  # + one "x" line per thread and batch


def test_creating_from_many_threads_gives_distinct_ids(store: JobStore) -> None:
    results = together(16, lambda i: [store.create("u", "u", {"i": i}).id for _ in range(10)])
    ids = [job_id for r in results for job_id in r]
    assert sorted(ids) == list(range(1, 161))


def test_two_stores_on_one_database_share_it(make_store) -> None:
    """Two opens of one database (the daemon and ``nixcell gc``; two hosts) write without
    losing either's."""
    a, b = make_store(), make_store()
    job = a.create("u", "u", {})
    results = together(
        8, lambda i: (a if i % 2 else b).append_logs(job.id, [("stdout", str(i))] * 25)
    )
    assert not [r for r in results if isinstance(r, Exception)]
    assert [ln.seq for ln in b.logs(job.id)] == list(range(1, 201))
    a.close()
    b.close()
