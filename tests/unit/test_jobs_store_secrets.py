"""Secret env values never reach the database files in the clear, and leave with the job."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.errors import StateError
from nixcell.jobs import sealing
from nixcell.jobs.model import TERMINAL, JobRequest
from nixcell.jobs.sqlite import SqliteStore

SECRET = "tok-3f9a1c-very-secret-value"


def _request(**env: str) -> dict:
    env = env or {"TOKEN": SECRET, "PLAIN": "visible"}
    return JobRequest(command=["true"], env=env, secret_env=["TOKEN"]).model_dump()


def _on_disk(tmp_path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())


@pytest.fixture
def store(tmp_path: Path):
    s = SqliteStore(str(tmp_path / "jobs.db"))
    yield s
    s.close()


def test_a_queued_job_has_its_secret_but_the_files_do_not(store: SqliteStore, tmp_path) -> None:
    job = store.create("u", "u", _request())
    assert job.request["env"] == {"TOKEN": SECRET, "PLAIN": "visible"}
    for seen in (store.get(job.id), store.list()[0], store.queued()[0]):
        assert seen.request["env"]["TOKEN"] == SECRET
    store.transition(job.id, "running", expect=["queued"])
    assert store.unfinished()[0].request["env"]["TOKEN"] == SECRET
    disk = _on_disk(tmp_path)
    assert SECRET.encode() not in disk and b"visible" in disk


def test_the_secret_survives_a_restart_while_queued(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    SqliteStore(path).create("u", "u", _request())
    again = SqliteStore(path)
    assert again.get(1).request["env"]["TOKEN"] == SECRET
    again.close()


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_a_finished_job_keeps_no_secret_not_even_sealed(store, tmp_path, state: str) -> None:
    job = store.create("u", "u", _request())
    done = store.transition(job.id, state, expect=["queued"])
    assert done.request["env"] == {"TOKEN": sealing.HIDDEN, "PLAIN": "visible"}
    assert store.get(job.id).request == done.request
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        [(body,)] = conn.execute("SELECT request FROM jobs").fetchall()
    assert sealing.PREFIX not in body and json.loads(body)["env"]["TOKEN"] == sealing.HIDDEN
    assert SECRET.encode() not in _on_disk(tmp_path)


def test_another_key_hides_the_value_and_logs_only_its_name(tmp_path: Path, caplog) -> None:
    path = tmp_path / "jobs.db"
    SqliteStore(str(path)).create("u", "u", _request())
    key = path.with_name("jobs.db.key")
    key.unlink()
    with caplog.at_level(logging.WARNING):
        store = SqliteStore(str(path))  # a new key is made: the old seal does not open
        assert store.get(1).request["env"]["TOKEN"] == sealing.HIDDEN
    store.close()
    assert "TOKEN" in caplog.text and SECRET not in caplog.text


def test_a_sealed_value_moved_to_another_name_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteStore(str(path)).create("u", "u", _request(TOKEN=SECRET, OTHER="x"))
    with sqlite3.connect(path) as conn:
        request = json.loads(conn.execute("SELECT request FROM jobs").fetchone()[0])
        request["env"]["OTHER"] = request["env"]["TOKEN"]
        request["secret_env"] = ["TOKEN", "OTHER"]
        conn.execute("UPDATE jobs SET request = ?", (json.dumps(request),))
    env = SqliteStore(str(path)).get(1).request["env"]
    assert env == {"TOKEN": SECRET, "OTHER": sealing.HIDDEN}


def test_the_key_is_private(store: SqliteStore, tmp_path: Path) -> None:
    key = tmp_path / "jobs.db.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32


BAD_KEYS = {
    "a symlink": lambda k, t: k.symlink_to(t / "elsewhere"),
    "a FIFO": lambda k, t: os.mkfifo(k),
    "too short": lambda k, t: (k.write_bytes(b"x" * 16), k.chmod(0o600)),
    "too long": lambda k, t: (k.write_bytes(b"x" * 64), k.chmod(0o600)),
    "readable by others": lambda k, t: (k.write_bytes(b"x" * 32), k.chmod(0o644)),
    "a hard link": lambda k, t: (
        (t / "other").write_bytes(b"x" * 32),
        (t / "other").chmod(0o600),
        os.link(t / "other", k),
        (t / "third").hardlink_to(t / "other"),
    ),
}


@pytest.mark.parametrize("plant", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_a_bad_key_file_is_refused(tmp_path: Path, plant) -> None:
    plant(tmp_path / "jobs.db.key", tmp_path)
    with pytest.raises(StateError, match="key") as err:
        SqliteStore(str(tmp_path / "jobs.db"))
    assert "\n" not in str(err.value)


ODD_REQUESTS = {
    "secret_env names a missing var": {"env": {"A": "1"}, "secret_env": ["B"]},
    "secret_env is not a list": {"env": {"A": "1"}, "secret_env": "A"},
    "env is not a dict": {"env": ["A"], "secret_env": ["A"]},
    "a secret that is not a string": {"env": {"A": 5}, "secret_env": ["A"]},
    "no env at all": {"command": ["x"]},
}


@pytest.mark.parametrize("request_", ODD_REQUESTS.values(), ids=ODD_REQUESTS.keys())
def test_odd_requests_are_stored_as_they_are(store: SqliteStore, request_: dict) -> None:
    job = store.create("u", "u", request_)
    assert job.request == request_
    assert store.transition(job.id, "failed", expect=["queued"]).request == request_


@settings(max_examples=40, deadline=None)
@given(value=st.text(min_size=1, max_size=60), name=st.text(min_size=1, max_size=10))
def test_any_secret_round_trips_and_never_lands_in_the_clear(value: str, name: str) -> None:
    import tempfile

    secret = "S3CR3T" + value
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"{tmp}/j.db")
        request = {"env": {name: secret}, "secret_env": [name]}
        job = store.create("u", "u", request)
        assert store.get(job.id).request == request
        disk = _on_disk(Path(tmp))
        store.close()
    assert secret.encode("utf-8", "surrogatepass") not in disk
    assert json.dumps(secret).encode() not in disk  # nor JSON-escaped
