"""SqliteStore against the JobStore contract (tests/storecontract/contract_store.py, shared with
PgStore), and what only its file has."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.storecontract.contract_store import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.sqlite import sqlite_make_store, sqlite_raw  # noqa: F401 - the contract's fixtures

from nixcell.jobs.sqlite import SqliteStore


def test_a_deleted_job_leaves_no_residue_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(str(path))
    job = store.create("u", "u", {"name": "REQUEST-RESIDUE"})
    store.append_logs(job.id, [("stdout", f"LOG-RESIDUE-{n}") for n in range(200)])
    store.transition(job.id, "succeeded", expect=["queued"])
    with sqlite3.connect(path) as conn:  # the lines reach the DB file itself
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"LOG-RESIDUE" in path.read_bytes()
    store.delete(job.id)
    store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"LOG-RESIDUE" not in data and b"REQUEST-RESIDUE" not in data
