"""The PostgreSQL job store's schema and its versions (issue 13's design).

The same tables as SQLite's (``dbfile.MIGRATIONS``) plus what a cluster needs: the host that
claimed a job, its routing target and closure hint, retries, hosts' heartbeats, uploads,
artifacts and cancel requests. Log text is ``BYTEA`` (UTF-8): PostgreSQL's ``TEXT`` cannot hold
NUL, and a log line keeps its NULs as SQLite keeps them.

Migrations run in one transaction under a transaction-level advisory lock, so two hosts starting
on an empty database at once do not both create the tables: the second waits, then finds the
version current. A database newer than this code is refused, never written.
"""

from __future__ import annotations

import logging
from typing import Any

from nixcell.errors import StateError
from nixcell.jobs.pgroles import SECURE

log = logging.getLogger(__name__)

LOCK = 0x6E6978636531  # pg_advisory_xact_lock key of migrations ("nixce1")

# Entry N takes version N to N+1. Append only; never edit a shipped one.
MIGRATIONS: tuple[str | tuple[str, ...], ...] = (
    """
    CREATE TABLE jobs (
        id BIGSERIAL PRIMARY KEY,
        owner TEXT NOT NULL,
        owner_name TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        started DOUBLE PRECISION,
        finished DOUBLE PRECISION,
        exit_code INTEGER,
        reason TEXT,
        host TEXT,
        cell_id TEXT,
        log_seq INTEGER NOT NULL DEFAULT 0,
        log_dropped INTEGER NOT NULL DEFAULT 0,
        event_seq INTEGER NOT NULL DEFAULT 0,
        target TEXT,
        closure_key TEXT,
        retries INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        submit_key TEXT UNIQUE
    );
    CREATE INDEX jobs_state ON jobs (state, id);
    CREATE INDEX jobs_owner ON jobs (owner, id);
    CREATE INDEX jobs_finished ON jobs (finished);
    CREATE INDEX jobs_queued_target ON jobs (target, id) WHERE state = 'queued';
    CREATE INDEX jobs_active_host ON jobs (host) WHERE state IN ('preparing', 'running');
    CREATE TABLE events (
        job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,
        detail TEXT,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE logs (
        job_id BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        time DOUBLE PRECISION NOT NULL,
        stream TEXT NOT NULL,
        text BYTEA NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        seen DOUBLE PRECISION NOT NULL,
        started DOUBLE PRECISION NOT NULL,
        concurrency INTEGER NOT NULL,
        running INTEGER NOT NULL,
        closures TEXT[] NOT NULL DEFAULT '{}'
    );
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created DOUBLE PRECISION NOT NULL,
        data BYTEA NOT NULL
    );
    CREATE TABLE artifacts (
        job_id BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        data BYTEA NOT NULL
    );
    CREATE TABLE cancels (
        job_id BIGINT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        reason TEXT,
        requested DOUBLE PRECISION NOT NULL
    )
    """,
    SECURE,  # 2: every host its own role, held to its own jobs (pgroles.py)
)


SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: Any, where: str = "the job database") -> int:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction (``conn``: a psycopg
    connection, autocommit off, no transaction open); returns the version found before.
    ``where`` names the database in messages (a DSN without its password)."""
    try:
        if _current(conn, where):  # nothing to do: no lock, no DDL (a host role may not)
            conn.commit()
            return SCHEMA_VERSION
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found, rows = _found(conn, where)
        for n in range(found, SCHEMA_VERSION):
            step = MIGRATIONS[n]
            for statement in step.split(";") if isinstance(step, str) else step:
                if statement.strip():
                    conn.execute(statement)
            log.info("job store %s: schema version %d", where, n + 1)
        if found != SCHEMA_VERSION or rows != 1:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,))
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return found


def _current(conn: Any, where: str) -> bool:
    """The schema is at this code's version (checked without DDL); a newer one is refused."""
    if conn.execute("SELECT to_regclass('public.schema_version')").fetchone()[0] is None:
        return False
    found, rows = _found(conn, where)
    return found == SCHEMA_VERSION and rows == 1


def _found(conn: Any, where: str) -> tuple[int, int]:
    """(the stored version, its rows); a version newer than this code's is refused."""
    row = conn.execute("SELECT max(version), count(*) FROM schema_version").fetchone()
    found = row[0] if row[1] else 0
    if found > SCHEMA_VERSION:
        raise StateError(
            f"job store {where} has schema version {found}; this nixcell knows versions up "
            f"to {SCHEMA_VERSION} (use a newer nixcell)"
        )
    return found, int(row[1])
