"""PgStore's cluster methods on a real PostgreSQL: claim (fairness, caps, routing, the closure
hint, SKIP LOCKED), lost hosts, cancel requests, uploads and artifacts."""

from __future__ import annotations

import threading

import pytest
from tests.storecontract.contract_races import together
from tests.storecontract.postgres import pg_make_store  # noqa: F401 - the fixture

from nixcell.errors import StateError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.pgstore import PgStore
from nixcell.jobs.sealing import HIDDEN
from nixcell.jobs.store import ClusterStore


@pytest.fixture
def store(make_store) -> PgStore:
    return make_store()


def _claims(store: PgStore, host: str, **kwargs) -> list[tuple[str, int]]:
    found = []
    while (job := store.claim(host, **kwargs)) is not None:
        found.append((job.owner, job.id))
    return found


def test_it_is_a_cluster_store(store: PgStore) -> None:
    assert isinstance(store, ClusterStore) and store.cluster


def test_claim_is_fair_between_owners_across_the_cluster(store: PgStore) -> None:
    for owner in ["a", "a", "a", "b", "b", "c"]:
        store.create(owner, owner, {})
    store.transition(6, "running", expect=["queued"])  # c already has one running somewhere
    # fewest preparing/running first, ties to the smallest id; c's running one counts
    assert _claims(store, "h1") == [("a", 1), ("b", 4), ("a", 2), ("b", 5), ("a", 3)]


def test_claim_marks_the_job_and_its_event(store: PgStore) -> None:
    job = store.create("u", "u", {})
    claimed = store.claim("h1")
    assert (claimed.id, claimed.state, claimed.host) == (job.id, "preparing", "h1")
    assert store.get(job.id) == claimed
    [_, event] = store.events(job.id)
    assert (event.state, event.kind) == ("preparing", "state")
    assert store.claim("h1") is None


def test_per_user_caps_an_owner_across_hosts(make_store) -> None:
    a, b = make_store(), make_store()
    for owner in ["x", "x", "x", "y"]:
        a.create(owner, owner, {})
    assert a.claim("h1", per_user=1).id == 1
    assert b.claim("h2", per_user=1).id == 4  # x is at its cap on the other host
    assert b.claim("h2", per_user=1) is None
    a.transition(1, "succeeded", expect=["preparing"], host="h1")
    assert b.claim("h2", per_user=1).id == 2


def test_a_pinned_job_waits_for_its_host(store: PgStore) -> None:
    pinned = store.create("u", "u", {}, target="h2")
    free = store.create("u", "u", {})
    assert _claims(store, "h1") == [("u", free.id)]
    assert store.get(pinned.id).state == "queued"
    assert store.claim("h2").id == pinned.id


def test_the_closure_hint_prefers_the_host_that_has_it(store: PgStore) -> None:
    store.heartbeat("h2", concurrency=4, running=0, closure="K")
    job = store.create("u", "u", {}, closure_key="K")
    assert store.claim("h1", prefer_after=3600) is None  # h2 has it: left for h2 a while
    store.heartbeat("h1", concurrency=4, running=0, closure="K")
    assert store.claim("h1", prefer_after=3600).id == job.id  # h1 has it too now


def test_the_closure_hint_is_only_a_hint(store: PgStore) -> None:
    store.heartbeat("h2", concurrency=4, running=0, closure="K")
    first = store.create("u", "u", {}, closure_key="K")
    second = store.create("u", "u", {}, closure_key="K")
    assert store.claim("h1", prefer_after=0).id == first.id  # waited long enough
    # a host not seen within live_within does not hold jobs back
    assert store.claim("h1", prefer_after=3600, live_within=-1).id == second.id


def test_heartbeat_keeps_recent_closures_first_and_bounded(store: PgStore) -> None:
    for n in range(300):
        store.heartbeat("h1", concurrency=2, running=1, closure=f"k{n}")
    store.heartbeat("h1", concurrency=3, running=2, closure="k10")
    store.heartbeat("h1", concurrency=3, running=2)
    [host] = store.hosts()
    assert (host["name"], host["concurrency"], host["running"]) == ("h1", 3, 2)
    assert host["closures"][:3] == ["k10", "k299", "k298"] and len(host["closures"]) == 256
    assert host["closures"].count("k10") == 1 and host["age"] >= 0


def test_concurrent_claims_from_two_stores_take_each_job_exactly_once(make_store) -> None:
    stores = [make_store(pool_size=4), make_store(pool_size=4)]
    for n in range(200):
        stores[0].create(f"u{n % 7}", "u", {})

    def work(i: int) -> list[int]:
        store, mine = stores[i % 2], []
        while (job := store.claim(f"h{i}")) is not None:
            mine.append(job.id)
        return mine

    results = together(8, work)
    assert not [r for r in results if isinstance(r, Exception)]
    ids = [job_id for r in results for job_id in r]
    assert sorted(ids) == list(range(1, 201))
    for job in stores[1].list(limit=500):
        assert job.state == "preparing" and job.host is not None
        assert [e.state for e in stores[1].events(job.id)] == ["queued", "preparing"]
    with stores[0]._conn() as conn:
        assert conn.execute("SELECT DISTINCT attempts FROM jobs").fetchall() == [(1,)]


def test_a_host_moves_only_jobs_it_claimed(store: PgStore) -> None:
    job = store.create("u", "u", {})
    store.claim("h1")
    assert store.transition(job.id, "running", expect=["preparing"], host="h2") is None
    assert store.get(job.id).state == "preparing"
    assert store.transition(job.id, "running", expect=["preparing"], host="h1").host == "h1"


def _secret() -> dict:
    return JobRequest(command=["x"], env={"T": "s3cret"}, secret_env=["T"]).model_dump()


def test_lost_hosts_jobs_are_requeued_while_retries_last_then_errors(store: PgStore) -> None:
    retried = store.create("u", "u", _secret(), retries=1)
    once = store.create("u", "u", _secret())
    store.heartbeat("h1", concurrency=2, running=2)
    store.claim("h1")
    store.claim("h1")
    store.transition(once.id, "running", expect=["preparing"], host="h1")
    assert store.reap_lost(3600) == []  # seen just now: alive
    moved = {job.id: job for job in store.reap_lost(0)}
    assert (moved[retried.id].state, moved[retried.id].host) == ("queued", None)
    assert moved[retried.id].request["env"]["T"] == "s3cret"  # it runs again: keeps it
    assert store.events(retried.id)[-1].detail == "requeued: host h1 lost"
    assert (moved[once.id].state, moved[once.id].reason) == ("error", "host lost")
    assert moved[once.id].request["env"]["T"] == HIDDEN and moved[once.id].finished
    assert store.queued() == [store.get(retried.id)]
    store.heartbeat("h2", concurrency=1, running=1)
    assert store.claim("h2").id == retried.id
    assert store.reap_lost(3600) == []
    [again] = store.reap_lost(0)  # its second loss: attempts 2 > retries 1
    assert (again.id, again.state, again.reason) == (retried.id, "error", "host lost")


def test_a_job_of_a_host_never_seen_is_lost_and_a_cancel_asked_wins(store: PgStore) -> None:
    a, b = store.create("u", "u", {}, retries=5), store.create("u", "u", {}, retries=5)
    store.claim("ghost")
    store.claim("ghost")
    store.request_cancel(b.id, "by alice")
    moved = {job.id: job for job in store.reap_lost(3600)}  # no hosts row at all
    assert moved[a.id].state == "queued"
    assert (moved[b.id].state, moved[b.id].reason) == ("cancelled", "by alice")
    assert store.take_cancels("ghost") == []


def test_take_cancels_gives_each_host_its_own_once(store: PgStore) -> None:
    jobs = [store.create("u", "u", {}) for _ in range(4)]
    store.claim("h1")
    store.claim("h2")
    store.claim("h1")  # h1 has 1 and 3, h2 has 2; 4 is queued
    for job in jobs:
        store.request_cancel(job.id, f"stop {job.id}")
    store.request_cancel(1, "asked again")  # the first reason stays
    assert store.take_cancels("h1") == [(1, "stop 1"), (3, "stop 3")]
    assert store.take_cancels("h1") == []
    assert store.take_cancels("h2") == [(2, "stop 2")]
    assert store.take_cancels("h3") == []
    with pytest.raises(StateError, match="no job 99"):
        store.request_cancel(99, "x")


def test_uploads_are_read_by_their_owners_jobs_and_kept_until_they_expire(store: PgStore) -> None:
    data = bytes(range(256)) * 1000
    store.put_upload("up-1", "uid:1", data)
    with pytest.raises(StateError, match="duplicate key"):
        store.put_upload("up-1", "uid:1", b"other")
    assert store.take_upload("up-1", "uid:2") is None  # another owner's id is not theirs
    assert not store.has_upload("up-1", "uid:2") and store.has_upload("up-1", "uid:1")
    assert store.take_upload("up-1", "uid:1") == data
    assert store.take_upload("up-1", "uid:1") == data  # a second job (or a re-run) reads it too
    assert store.expire_uploads(0) == 0  # younger than the hour every upload is kept
    assert store.take_upload("up-1", "uid:1") == data
    store.put_upload("up-2", "uid:1", b"x")
    store.drop_upload("up-2")
    store.drop_upload("up-2")
    assert store.take_upload("up-2", "uid:1") is None


def test_artifacts_round_trip_and_go_with_the_job(store: PgStore) -> None:
    job = store.create("u", "u", {})
    assert store.get_artifacts(job.id) is None
    store.put_artifacts(job.id, b"\x00tar-1")
    store.put_artifacts(job.id, b"\x00tar-2")
    assert store.get_artifacts(job.id) == b"\x00tar-2"
    with pytest.raises(StateError, match="no job 42"):
        store.put_artifacts(42, b"x")
    store.transition(job.id, "succeeded", expect=["queued"])
    store.delete(job.id)
    assert store.get_artifacts(job.id) is None


def test_claims_and_creates_from_threads_of_one_store(store: PgStore) -> None:
    """The pool under claimers and submitters at once: nothing lost, nothing twice."""
    done = threading.Event()

    def work(i: int) -> list[int]:
        if i < 2:
            for _ in range(50):
                store.create(f"s{i}", "s", {})
            return []
        got: list[int] = []
        while True:
            job = store.claim(f"h{i}")
            if job is not None:
                got.append(job.id)
            elif done.is_set() and not store.queued():
                return got
            elif len(store.list(limit=200)) == 100:
                done.set()

    results = together(6, work)
    assert not [r for r in results if isinstance(r, Exception)]
    assert sorted(j for r in results for j in r) == list(range(1, 101))


def test_a_host_finds_its_own_leftovers_not_its_peers(store: PgStore) -> None:
    for _ in range(4):
        store.create("u", "u", {})
    store.claim("h1")
    store.claim("h2")
    store.claim("h1")
    assert [j.id for j in store.unfinished(host="h1")] == [1, 3]
    assert [j.id for j in store.unfinished()] == [1, 2, 3]
    assert [j.id for j in store.list(host="h2")] == [4, 2]  # its own, and the queue it may take
    assert [j.id for j in store.list(host="h2", states=["preparing"])] == [2]
    assert [j.id for j in store.list(host="h3", states=["preparing", "running"])] == []
    assert [j.id for j in store.list()] == [4, 3, 2, 1]


def test_a_job_another_transaction_holds_is_skipped_not_waited_for(store: PgStore, pg_dsn) -> None:
    import psycopg

    for _ in range(3):
        store.create("a", "a", {})
    store.create("b", "b", {})
    with psycopg.connect(pg_dsn) as other:  # holds a's first job and b's only one
        other.execute("SELECT id FROM jobs WHERE id IN (1, 4) FOR UPDATE")
        assert store.claim("h1").id == 2  # the next in fairness order that is free
        assert store.claim("h1").id == 3
        assert store.claim("h1") is None
    assert store.claim("h1").id == 4  # b has none running: before a's 1
    assert store.claim("h1").id == 1
