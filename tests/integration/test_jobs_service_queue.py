"""The queue with real cells: fairness between owners, the per-user cap, many jobs at once,
shutdown (cancel / finish), reload, retention and metrics."""

from __future__ import annotations

import asyncio
import os

import pytest
from tests.integration.jobsrig import (
    ADMIN,
    ALICE,
    BOB,
    CAROL,
    collect,
    config,
    processes_with,
    script,
    serve,
    settle,
)

from nixcell.jobs.model import Event, LogLine

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _cells(offline_set):
    """Every test here runs real cells from the offline package set."""


def started_order(svc, ids):
    jobs = [svc.get(ADMIN, i) for i in ids]
    return [j.id for j in sorted((j for j in jobs if j.started), key=lambda j: j.started)]


def test_fairness_a_later_owner_is_not_stuck_behind_a_backlog(tmp_path) -> None:
    """Concurrency 2, both slots held by carol; alice queues 3 jobs, then bob 1. As carol's
    jobs end one by one, alice's oldest starts, then bob's (fewest running), not alice's 2nd."""

    async def body(svc):
        blockers = [await svc.submit(CAROL, script("sleep 987661")) for _ in range(2)]
        for b in blockers:
            await settle(svc, b.id, {"running"})
        a = [await svc.submit(ALICE, script("sleep 987662")) for _ in range(3)]
        b1 = await svc.submit(BOB, script("sleep 987663"))
        await svc.cancel(CAROL, blockers[0].id)
        first = await settle(svc, a[0].id, {"running"})
        await svc.cancel(CAROL, blockers[1].id)
        second = await settle(svc, b1.id, {"running"})
        states = [svc.get(ADMIN, j.id).state for j in a]
        return first, second, states

    first, second, states = serve(tmp_path, body, concurrency=2)
    assert first.owner == ALICE.key and second.owner == BOB.key
    assert states == ["running", "queued", "queued"]


def test_concurrency_one_is_fifo_across_owners(tmp_path) -> None:
    """With one slot nobody is running when the next job is picked: the rule is then age."""

    async def body(svc):
        ids = []
        for caller in (ALICE, ALICE, BOB, ALICE, BOB):
            ids.append((await svc.submit(caller, script("true"))).id)
        for i in ids:
            await settle(svc, i)
        return ids, started_order(svc, ids)

    ids, order = serve(tmp_path, body, concurrency=1)
    assert order == ids


def test_per_user_cap(tmp_path) -> None:
    """per_user 1, concurrency 3: alice's second job waits while bob's runs."""

    async def body(svc):
        a1 = await svc.submit(ALICE, script("sleep 987664"))
        a2 = await svc.submit(ALICE, script("sleep 987664"))
        b1 = await svc.submit(BOB, script("sleep 987664"))
        await settle(svc, a1.id, {"running"})
        await settle(svc, b1.id, {"running"})
        held = svc.get(ALICE, a2.id).state
        await svc.cancel(ALICE, a1.id)
        await settle(svc, a2.id, {"running"})
        return held

    assert serve(tmp_path, body, concurrency=3, per_user=1) == "queued"


def test_fifty_jobs_at_concurrency_eight(tmp_path) -> None:
    n_jobs, n_lines = 50, 200

    async def body(svc):
        ids = []
        for k in range(n_jobs):
            text = f'for i in $(seq 1 {n_lines}); do echo "{k} $i"; done; exit {k % 7}'
            ids.append((await svc.submit(ALICE if k % 2 else BOB, script(text))).id)
        svc.reload(config(tmp_path, concurrency=8))  # all 50 are queued: now they may start
        follows = await asyncio.gather(*(collect(svc, ADMIN, i) for i in ids))
        spans = []  # (claimed, finished) of each job, as the store timed them
        for i in ids:
            events = svc.store.events(i)
            claimed = next(e.time for e in events if e.state == "preparing")
            spans.append((claimed, events[-1].time))
        return follows, [svc.get(ADMIN, i) for i in ids], spans

    follows, jobs, spans = serve(tmp_path, body, concurrency=0)  # paused while they queue
    edges = sorted([(t, 1) for t, _ in spans] + [(t, -1) for _, t in spans])
    busy = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        busy += step
        peak = max(peak, busy)
    assert 6 <= peak <= 8, f"{peak} jobs held a slot at once"
    for k, (job, items) in enumerate(zip(jobs, follows, strict=True)):
        assert job.exit_code == k % 7, f"job {k}"
        assert job.state == ("succeeded" if k % 7 == 0 else "failed")
        out = [x.text for x in items if isinstance(x, LogLine) and x.stream == "stdout"]
        assert out == [f"{k} {i}" for i in range(1, n_lines + 1)], f"job {k} lost lines"
        assert isinstance(items[-1], Event) and items[-1].exit_code == k % 7


def test_stop_cancel_leaves_nothing_and_keeps_the_queue(tmp_path) -> None:
    async def body(svc):
        running = [await svc.submit(ALICE, script("sleep 987665", memory="128M")) for _ in range(3)]
        queued = await svc.submit(BOB, script("echo later"))
        for job in running:
            await settle(svc, job.id, {"running"})
        while len(processes_with("987665")) < 3:
            await asyncio.sleep(0.02)
        cells = [svc.get(ADMIN, j.id).cell_id for j in running]
        await svc.stop("cancel")
        from tests.integration.jobsrig import cgroups_of

        left = processes_with("987665"), [c for cell in cells for c in cgroups_of(cell)]
        return [svc.get(ADMIN, j.id) for j in running], svc.get(ADMIN, queued.id), left

    running, queued, left = serve(tmp_path, body, concurrency=3)
    assert {j.state for j in running} == {"cancelled"}
    assert all(j.reason == "cancelled: the server stopped" for j in running)
    assert queued.state == "queued", "a queued job must wait for the next start"
    assert left == ([], [])


def test_stop_finish_lets_running_jobs_end(tmp_path) -> None:
    async def body(svc):
        job = await svc.submit(ALICE, script("sleep 1; echo finished"))
        await settle(svc, job.id, {"running"})
        await svc.stop("finish")
        return svc.get(ALICE, job.id), svc.logs(ALICE, job.id, streams=["stdout"])

    job, lines = serve(tmp_path, body, shutdown_grace=300.0)
    assert job.state == "succeeded" and [x.text for x in lines] == ["finished"]


def test_reload_applies_to_jobs_not_yet_started(tmp_path) -> None:
    async def body(svc):
        a = await svc.submit(ALICE, script("sleep 987666"))
        b = await svc.submit(BOB, script("sleep 987666"))
        await settle(svc, a.id, {"running"})
        held = svc.get(BOB, b.id).state
        svc.reload(config(tmp_path, concurrency=2))
        await settle(svc, b.id, {"running"})
        return held

    assert serve(tmp_path, body, concurrency=1) == "queued"


def test_retention_gc_and_metrics(tmp_path) -> None:
    async def body(svc):
        old = await svc.submit(ALICE, script("exit 2"))
        await settle(svc, old.id)
        jobdir = os.path.join(svc.config.state_dir, "jobs", str(old.id))
        had_dir = os.path.isdir(jobdir)
        metrics = svc.metrics()
        svc.reload(config(tmp_path, retention=0.0))
        removed = await svc.gc(ADMIN)
        return had_dir, os.path.lexists(jobdir), removed, svc.store.get(old.id), metrics

    had_dir, still, removed, row, metrics = serve(tmp_path, body)
    assert had_dir and not still and row is None
    assert removed["jobs"] == 1 and removed["workspaces"] == 1
    assert 'nixcell_jobs{state="failed"} 1' in metrics
    assert "nixcell_queue_length 0" in metrics
