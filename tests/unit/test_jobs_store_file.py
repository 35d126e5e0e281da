"""The DB file: created 0600, never through a planted name, schema versions checked at open."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from nixcell.errors import StateError
from nixcell.jobs.dbfile import SCHEMA_VERSION
from nixcell.jobs.sqlite import SqliteStore


def test_a_new_file_is_private_and_at_the_current_schema(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteStore(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sidecar_files_are_private_too(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteStore(str(path))
    store.create("u", "u", {})
    for side in ("jobs.db-wal", "jobs.db-shm"):
        assert stat.S_IMODE((tmp_path / side).stat().st_mode) == 0o600
    store.close()


def test_an_existing_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteStore(str(path)).close()
    path.chmod(0o644)
    SqliteStore(str(path)).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _elsewhere(tmp_path: Path) -> Path:
    target = tmp_path / "elsewhere.db"
    SqliteStore(str(target)).close()
    return target


PLANTED: dict[str, Callable[[Path, Path], None]] = {
    "a symlink to a store": lambda p, t: p.symlink_to(_elsewhere(t)),
    "a dangling symlink": lambda p, t: p.symlink_to(t / "nowhere.db"),
    "a symlink to /dev/null": lambda p, t: p.symlink_to("/dev/null"),
    "a hard link to another store": lambda p, t: os.link(_elsewhere(t), p),
    "a FIFO": lambda p, t: os.mkfifo(p),
    "a directory": lambda p, t: p.mkdir(),
    "a symlinked -wal": lambda p, t: (p.touch(mode=0o600), (t / "jobs.db-wal").symlink_to(t / "w")),
    "a symlinked -shm": lambda p, t: (p.touch(mode=0o600), (t / "jobs.db-shm").symlink_to(t / "s")),
    "a FIFO as -journal": lambda p, t: (p.touch(mode=0o600), os.mkfifo(t / "jobs.db-journal")),
}


@pytest.mark.parametrize("plant", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_name_is_refused(tmp_path: Path, plant) -> None:
    path = tmp_path / "jobs.db"
    plant(path, tmp_path)
    before = {p.name: p.lstat() for p in tmp_path.iterdir()}
    with pytest.raises(StateError) as err:
        SqliteStore(str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert {p.name: p.lstat() for p in tmp_path.iterdir()} == before  # nothing was written


def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"not a database at all, " * 100)
    path.chmod(0o600)
    with pytest.raises(StateError, match="cannot open job store") as err:
        SqliteStore(str(path))
    assert "\n" not in str(err.value)


def test_a_newer_schema_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteStore(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="schema version") as err:
        SqliteStore(str(path))
    assert "\n" not in str(err.value)
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1


def test_an_empty_file_is_migrated_from_version_zero(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.touch(mode=0o600)
    store = SqliteStore(str(path))
    assert store.create("u", "u", {}).id == 1
    store.close()


@pytest.mark.parametrize(
    "kwargs", [{"log_limit": -1}, {"line_limit": 0}, {"line_limit": 6}], ids=str
)
def test_bad_limits_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(StateError):
        SqliteStore(str(tmp_path / "jobs.db"), **kwargs)
