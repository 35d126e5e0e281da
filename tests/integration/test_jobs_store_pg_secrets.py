"""PgStore's secret env values: the contract SqliteStore passes
(tests/storecontract/contract_secrets.py, reading every row beneath the store), and the server's
own files holding no secret in the clear."""

from __future__ import annotations

import os

from tests.storecontract.contract_secrets import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.postgres import pg_make_store, pg_raw  # noqa: F401 - the contract's fixtures

from nixcell.jobs.model import JobRequest

SECRET = "tok-77c2e0-secret-in-postgres"


def _files(top: str) -> bytes:
    found = []
    for base, _, names in os.walk(top):
        for name in names:
            try:
                with open(os.path.join(base, name), "rb") as f:
                    found.append(f.read())
            except OSError:
                continue  # a file the server removed while we walked
    return b"".join(found)


def test_the_server_files_never_hold_the_secret(store, pg_server) -> None:
    """Past a CHECKPOINT (tables and WAL written out): the data dir has the plain value of the
    request but not the secret one, neither while queued nor once finished."""
    request = JobRequest(command=["true"], env={"TOKEN": SECRET, "PLAIN": "visible-77c2e0"},
                         secret_env=["TOKEN"]).model_dump()  # fmt: skip
    job = store.create("u", "u", request)
    assert store.get(job.id).request["env"]["TOKEN"] == SECRET
    store.transition(job.id, "succeeded", expect=["queued"])
    pg_server.admin("CHECKPOINT")
    data = _files(pg_server.data)
    assert b"visible-77c2e0" in data  # the scan does see what the server stored
    assert SECRET.encode() not in data
