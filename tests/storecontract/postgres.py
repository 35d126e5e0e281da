"""``make_store`` and ``raw`` for PgStore on this test's fresh database (``pg_dsn`` of
tests/integration/pgserver.py; ``__init__.py`` says what they give)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nixcell.jobs.pgstore import PgStore

TABLES = ("jobs", "events", "logs", "hosts", "uploads", "artifacts", "cancels")


@pytest.fixture(name="make_store")
def pg_make_store(pg_dsn: str) -> Iterator[Callable[..., PgStore]]:
    made: list[PgStore] = []
    key = [os.urandom(32)]  # one key per database, as a cluster's hosts share one

    def make(*, new_key: bool = False, **kwargs: Any) -> PgStore:
        if new_key:
            key[0] = os.urandom(32)
        made.append(PgStore(pg_dsn, key=key[0], **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


class PgRaw:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _run(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            cur = conn.execute(sql, args or None)
            return cur.fetchall() if cur.description else []

    def stored(self) -> bytes:
        """Every row of every table as PostgreSQL prints it (what the database holds)."""
        union = " UNION ALL ".join(f"SELECT t::text FROM {name} t" for name in TABLES)
        return "\n".join(text for (text,) in self._run(union)).encode()

    def requests(self) -> list[str]:
        return [body for (body,) in self._run("SELECT request FROM jobs ORDER BY id")]

    def edit_requests(self, change: Callable[[str], str]) -> None:
        """Tampering as the database's superuser, past the guard trigger (which keeps a
        queued job's request fixed for every role): session_replication_role skips it."""
        import psycopg

        with psycopg.connect(self.dsn) as conn:
            conn.execute("SET session_replication_role = replica")
            for job_id, body in conn.execute("SELECT id, request FROM jobs").fetchall():
                conn.execute("UPDATE jobs SET request = %s WHERE id = %s", (change(body), job_id))


@pytest.fixture(name="raw")
def pg_raw(pg_dsn: str) -> PgRaw:
    return PgRaw(pg_dsn)
