"""What the HTTP layer hands the service from a client, hostile from every side: job ids,
filters, counts and stream names. Each is a one-line JobError with a 4xx status (NotFound for
ids), never another exception, never an answer about a job the caller may not see. A real
SqliteStore; no cell is started (nothing here reaches the scheduler)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.jobs.config import ServerConfig
from nixcell.jobs.contract import JobError, NotFound
from nixcell.jobs.model import Caller
from nixcell.jobs.service import JobService
from nixcell.jobs.sqlite import SqliteStore

ALICE = Caller("uid:1000", "alice")
BOB = Caller("uid:1001", "bob")

IDS = [0, -1, 2**63, 2**70, -(2**70), True, False, 1.0, "1", None, "1; DROP TABLE jobs", b"1"]
COUNTS = [-1, 2**63, 2**80, True, 1.5, "10", None, float("nan")]
NAMES = ["", "QUEUED", "running ", "stdout\n", "x" * 10000, "\x00", "../stdout", None, 5]


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svc")
    store = SqliteStore(str(tmp / "jobs.db"))
    service = JobService(ServerConfig(state_dir=str(tmp / "state")), store)
    job = store.create(ALICE.key, ALICE.name, {"packages": ["bash"], "script": "true"})
    service.known = job.id  # type: ignore[attr-defined]
    yield service
    store.close()


def one_line_4xx(err: JobError) -> None:
    assert 400 <= err.status < 500
    assert str(err) and "\n" not in str(err) and len(str(err)) < 300


@pytest.mark.parametrize("job_id", [*IDS, 2, 999])
def test_bad_or_unknown_ids_are_not_found(svc, job_id) -> None:
    async def main():
        for call in (
            lambda: svc.get(ALICE, job_id),
            lambda: svc.logs(ALICE, job_id),
            lambda: svc.follow(ALICE, job_id),
            lambda: svc.events(ALICE, job_id if job_id is not None else -1),  # None: all jobs
            lambda: svc.audit(ALICE, job_id),
            lambda: svc.artifacts(ALICE, job_id),
        ):
            with pytest.raises(NotFound) as err:
                call()
            one_line_4xx(err.value)
        with pytest.raises(NotFound):
            await svc.cancel(ALICE, job_id)

    asyncio.run(main())


def test_another_users_job_is_the_same_not_found(svc) -> None:
    with pytest.raises(NotFound) as theirs:
        svc.get(BOB, svc.known)
    with pytest.raises(NotFound) as none:
        svc.get(BOB, 999)
    assert str(theirs.value).replace(str(svc.known), "N") == str(none.value).replace("999", "N")


@pytest.mark.parametrize("value", COUNTS)
def test_bad_counts(svc, value) -> None:
    for call in (
        lambda: svc.list(ALICE, limit=value),
        lambda: svc.logs(ALICE, svc.known, after=value),
        lambda: (
            svc.logs(ALICE, svc.known, tail=value)
            if value is not None
            else svc.list(ALICE, limit=0)
        ),
        lambda: svc.follow(ALICE, svc.known, after=value),
    ):
        with pytest.raises(JobError) as err:
            call()
        one_line_4xx(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_state_and_stream_names(svc, name) -> None:
    for call in (
        lambda: svc.list(ALICE, states=[name]),
        lambda: svc.list(ALICE, states=["queued", name]),
        lambda: svc.logs(ALICE, svc.known, streams=[name]),
        lambda: svc.follow(ALICE, svc.known, streams=["stdout", name]),
    ):
        with pytest.raises(JobError) as err:
            call()
        one_line_4xx(err.value)


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(st.integers(), st.text(max_size=20), st.none(), st.booleans(), st.floats()),
    st.lists(st.text(max_size=12), max_size=3),
)
def test_anything_is_an_answer_or_a_4xx(svc, value, names) -> None:
    for call in (
        lambda: svc.get(ALICE, value),
        lambda: svc.list(ALICE, limit=value, states=names),
        lambda: svc.logs(ALICE, svc.known, after=value, streams=names),
        lambda: svc.logs(ALICE, value, tail=3),
    ):
        try:
            call()
        except JobError as err:
            one_line_4xx(err)


def test_gc_is_for_admins(svc) -> None:
    with pytest.raises(JobError) as err:
        asyncio.run(svc.gc(ALICE))
    assert err.value.status == 403


def test_a_bad_reload_keeps_the_running_configuration(svc, tmp_path) -> None:
    from nixcell.errors import NixcellError

    bad = tmp_path / "profiles"
    bad.mkdir()
    (bad / "x.toml").write_text("packages = [\n")  # broken TOML
    before = svc.config
    changed = ServerConfig(state_dir=before.state_dir, profile_dir=str(bad), concurrency=9)
    with pytest.raises(NixcellError) as err:
        svc.reload(changed)
    assert "\n" not in str(err.value)
    assert svc.config is before and svc.profiles == {}
    with pytest.raises(JobError, match="state_dir"):
        svc.reload(ServerConfig(state_dir=str(tmp_path / "elsewhere")))
