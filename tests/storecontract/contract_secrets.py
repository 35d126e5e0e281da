"""Secret env values never reach the database in the clear, and leave with the job: the
contract for every store (``tests/storecontract/__init__.py``)."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.jobs import sealing
from nixcell.jobs.model import TERMINAL, JobRequest
from nixcell.jobs.store import JobStore

SECRET = "tok-3f9a1c-very-secret-value"


def _request(**env: str) -> dict:
    env = env or {"TOKEN": SECRET, "PLAIN": "visible"}
    return JobRequest(command=["true"], env=env, secret_env=["TOKEN"]).model_dump()


@pytest.fixture
def store(make_store):
    return make_store()


def test_a_queued_job_has_its_secret_but_the_database_not(store: JobStore, raw) -> None:
    job = store.create("u", "u", _request())
    assert job.request["env"] == {"TOKEN": SECRET, "PLAIN": "visible"}
    for seen in (store.get(job.id), store.list()[0], store.queued()[0]):
        assert seen.request["env"]["TOKEN"] == SECRET
    store.transition(job.id, "running", expect=["queued"])
    assert store.unfinished()[0].request["env"]["TOKEN"] == SECRET
    disk = raw.stored()
    assert SECRET.encode() not in disk and b"visible" in disk


def test_the_secret_survives_a_restart_while_queued(make_store) -> None:
    make_store().create("u", "u", _request())
    again = make_store()
    assert again.get(1).request["env"]["TOKEN"] == SECRET


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_a_finished_job_keeps_no_secret_not_even_sealed(store, raw, state: str) -> None:
    job = store.create("u", "u", _request())
    done = store.transition(job.id, state, expect=["queued"])
    assert done.request["env"] == {"TOKEN": sealing.HIDDEN, "PLAIN": "visible"}
    assert store.get(job.id).request == done.request
    [body] = raw.requests()
    assert sealing.PREFIX not in body and json.loads(body)["env"]["TOKEN"] == sealing.HIDDEN
    assert SECRET.encode() not in raw.stored()


def test_another_key_hides_the_value_and_logs_only_its_name(make_store, caplog) -> None:
    make_store().create("u", "u", _request())
    with caplog.at_level(logging.WARNING):
        store = make_store(new_key=True)  # the old seal does not open with this key
        assert store.get(1).request["env"]["TOKEN"] == sealing.HIDDEN
    assert "TOKEN" in caplog.text and SECRET not in caplog.text


def test_a_sealed_value_moved_to_another_name_does_not_open(make_store, raw) -> None:
    make_store().create("u", "u", _request(TOKEN=SECRET, OTHER="x"))

    def move(body: str) -> str:
        request = json.loads(body)
        request["env"]["OTHER"] = request["env"]["TOKEN"]
        request["secret_env"] = ["TOKEN", "OTHER"]
        return json.dumps(request)

    raw.edit_requests(move)
    env = make_store().get(1).request["env"]
    assert env == {"TOKEN": SECRET, "OTHER": sealing.HIDDEN}


ODD_REQUESTS = {
    "secret_env names a missing var": {"env": {"A": "1"}, "secret_env": ["B"]},
    "secret_env is not a list": {"env": {"A": "1"}, "secret_env": "A"},
    "env is not a dict": {"env": ["A"], "secret_env": ["A"]},
    "a secret that is not a string": {"env": {"A": 5}, "secret_env": ["A"]},
    "no env at all": {"command": ["x"]},
}


@pytest.mark.parametrize("request_", ODD_REQUESTS.values(), ids=ODD_REQUESTS.keys())
def test_odd_requests_are_stored_as_they_are(store: JobStore, request_: dict) -> None:
    job = store.create("u", "u", request_)
    assert job.request == request_
    assert store.transition(job.id, "failed", expect=["queued"]).request == request_


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(min_size=1, max_size=60), name=st.text(min_size=1, max_size=10))
def test_any_secret_round_trips_and_never_lands_in_the_clear(
    store: JobStore, raw, value: str, name: str
) -> None:
    """Every example adds a job to one database: each one's secret is looked for in it all."""
    secret = "S3CR3T" + value
    request = {"env": {name: secret}, "secret_env": [name]}
    job = store.create("u", "u", request)
    assert store.get(job.id).request == request
    disk = raw.stored()
    assert secret.encode("utf-8", "surrogatepass") not in disk
    assert json.dumps(secret).encode() not in disk  # nor JSON-escaped
