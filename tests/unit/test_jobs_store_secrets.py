"""SqliteStore's secret env values: the contract (tests/storecontract/contract_secrets.py,
shared with PgStore, reading the database files themselves here), and its key file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from tests.storecontract.contract_secrets import *  # noqa: F403 - the contract's tests run here
from tests.storecontract.sqlite import sqlite_make_store, sqlite_raw  # noqa: F401 - the contract's fixtures

from nixcell.errors import StateError
from nixcell.jobs.sqlite import SqliteStore


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
