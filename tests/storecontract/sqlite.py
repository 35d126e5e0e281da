"""``make_store`` and ``raw`` for SqliteStore (``__init__.py`` says what they give)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nixcell.jobs.sqlite import SqliteStore


@pytest.fixture(name="make_store")
def sqlite_make_store(tmp_path: Path) -> Iterator[Callable[..., SqliteStore]]:
    path = tmp_path / "jobs.db"
    made: list[SqliteStore] = []

    def make(*, new_key: bool = False, **kwargs: Any) -> SqliteStore:
        if new_key:
            path.with_name("jobs.db.key").unlink()
        made.append(SqliteStore(str(path), **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


class SqliteRaw:
    def __init__(self, path: Path) -> None:
        self.path = path

    def stored(self) -> bytes:
        """Every file beside the database (it, its WAL, its key), as on disk."""
        return b"".join(p.read_bytes() for p in self.path.parent.iterdir() if p.is_file())

    def requests(self) -> list[str]:
        with sqlite3.connect(self.path) as conn:
            return [body for (body,) in conn.execute("SELECT request FROM jobs ORDER BY id")]

    def edit_requests(self, change: Callable[[str], str]) -> None:
        with sqlite3.connect(self.path) as conn:
            for job_id, body in conn.execute("SELECT id, request FROM jobs").fetchall():
                conn.execute("UPDATE jobs SET request = ? WHERE id = ?", (change(body), job_id))


@pytest.fixture(name="raw")
def sqlite_raw(tmp_path: Path) -> SqliteRaw:
    return SqliteRaw(tmp_path / "jobs.db")
