"""The job store on one host: SQLite in WAL mode behind ``store.JobStore``.

Durability: job creation, transitions and events commit with ``synchronous=FULL`` (a submit
answered with an id survives kill -9 and power loss); log appends commit with ``NORMAL`` (WAL:
they survive a crash of the daemon, a power loss may take the last ones). Every write is one
transaction; writers of this process queue on a lock (SQLite's busy handler only serves other
processes), readers use their own pooled connections and never wait for a writer.

The SQL is kept plain (no ``RETURNING``, no upserts, no ``LIMIT -1``) so that the PostgreSQL store
of the scale-out issue can behave the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from nixcell.errors import StateError
from nixcell.jobs import dbfile, sealing, storeparts
from nixcell.jobs.model import ACTIVE, TERMINAL, Event, Job, LogLine
from nixcell.jobs.storeparts import (
    CUT,
    JOB_COLUMNS,
    SharedReads,
    check_limits,
    check_state,
    check_stream,
    check_text,
    count,
    cut,
    encode_request,
    filters,
    hidden_body,
    plan_logs,
    where,
)

log = logging.getLogger(__name__)

__all__ = ["CUT", "SqliteStore"]

_IDLE = 8  # pooled connections kept open


def _wal(conn: sqlite3.Connection, wait: float = 30.0) -> None:
    """Switch to WAL. Another process switching a new file at the same moment makes SQLite
    answer "locked" at once, without its busy handler: wait here instead."""
    deadline = time.monotonic() + wait
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteStore(SharedReads):
    """``JobStore`` in one SQLite file (created 0600; a symlink at the path is refused). Secret
    env values are sealed with the key in ``PATH.key`` and dropped when a job ends
    (``sealing.py``): ``Job.request`` has them while the job may still run, then ``<secret>``."""

    def __init__(self, path: str, *, log_limit: int = 100_000, line_limit: int = 16384) -> None:
        check_limits(log_limit, line_limit)
        self.path = os.path.abspath(path)
        self.log_limit = log_limit
        self.line_limit = line_limit
        self._write = threading.Lock()  # one writer of this process at a time
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        inode = dbfile.prepare(self.path)
        self._sealer = sealing.Sealer(dbfile.load_key(self.path + ".key"))
        conn = self._connect()
        try:
            dbfile.check_same(self.path, inode)
            with self._write:
                dbfile.migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._idle.append(conn)

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            _wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")  # deleted jobs' lines leave no residue
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot open job store {self.path}: {exc}") from None
        return conn

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._closed:
                raise StateError("the job store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            with self._pool_lock:
                if self._closed or len(self._idle) >= _IDLE:
                    conn.close()
                else:
                    self._idle.append(conn)

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable``: fsync at commit (FULL), else WAL NORMAL."""
        with self._write, self._conn() as conn:
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- jobs -------------------------------------------------------------------------------

    def create(self, owner: str, owner_name: str, request: dict[str, Any]) -> Job:
        check_text(owner, "job owner")
        check_text(owner_name, "job owner name")
        now = time.time()
        body = encode_request(self._sealer, request)
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (owner, owner_name, request, state, created, event_seq) "
                "VALUES (?, ?, ?, 'queued', ?, 1)",
                (owner, owner_name, body, now),
            )
            job_id = cur.lastrowid
            conn.execute(
                "INSERT INTO events (job_id, seq, time, kind, state) VALUES (?, 1, ?, 'state', "
                "'queued')",
                (job_id, now),
            )
            job = self._get(conn, job_id)
        assert job is not None
        return job

    def get(self, job_id: int) -> Job | None:
        with self._conn() as conn:
            return self._get(conn, job_id)

    def _get(self, conn: sqlite3.Connection, job_id: int) -> Job | None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(
        self,
        *,
        owner: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Job]:
        clauses, args = filters(owner=owner, states=states)
        if before is not None:
            clauses.append("id < ?")
            args.append(before)
        return self._select(clauses, args, "id DESC LIMIT ?", count(limit, "limit"))

    def queued(self) -> list[Job]:
        return self._select(*filters(states=["queued"]), "id")

    def unfinished(self) -> list[Job]:
        return self._select(*filters(states=ACTIVE), "id")

    def expired(self, finished_before: float) -> list[Job]:
        clauses, args = filters(states=TERMINAL)
        return self._select([*clauses, "finished < ?"], [*args, finished_before], "id")

    def _select(self, clauses: list[str], args: list[Any], order: str, *more: Any) -> list[Job]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs{where(clauses)} ORDER BY {order}"
        with self._conn() as conn:
            return [self._job(row) for row in conn.execute(sql, [*args, *more])]

    def transition(
        self,
        job_id: int,
        state: str,
        *,
        expect: Iterable[str],
        reason: str | None = None,
        exit_code: int | None = None,
        cell_id: str | None = None,
    ) -> Job | None:
        check_state(state)
        check_text(reason, "job reason")
        check_text(cell_id, "cell id")
        expected = sorted({check_state(s) for s in expect})
        if not expected:
            return None
        now = time.time()
        sets = ["state = ?", "event_seq = event_seq + 1"]
        args: list[Any] = [state]
        if state == "running":
            sets.append("started = ?")
            args.append(now)
        if state in TERMINAL:
            sets.append("finished = ?")
            args.append(now)
        for column, value in (("reason", reason), ("exit_code", exit_code), ("cell_id", cell_id)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(value)
        marks = ", ".join("?" * len(expected))
        with self._tx() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND state IN ({marks})",
                [*args, job_id, *expected],
            )
            if cur.rowcount != 1:
                return None
            seq, body = conn.execute(
                "SELECT event_seq, request FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            hidden = hidden_body(body) if state in TERMINAL else None
            if hidden is not None:  # it will not run again: its secrets go, even sealed
                conn.execute("UPDATE jobs SET request = ? WHERE id = ?", (hidden, job_id))
            conn.execute(
                "INSERT INTO events (job_id, seq, time, kind, state, detail) "
                "VALUES (?, ?, ?, 'state', ?, ?)",
                (job_id, seq, now, state, reason),
            )
            return self._get(conn, job_id)

    def delete(self, job_id: int) -> None:
        with self._tx(durable=False) as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            if row[0] not in TERMINAL:
                raise StateError(f"job {job_id} is {row[0]}: only finished jobs are deleted")
            for table, column in (("logs", "job_id"), ("events", "job_id"), ("jobs", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))

    # -- events -----------------------------------------------------------------------------

    def add_event(self, job_id: int, kind: str, detail: str | None = None) -> Event:
        check_text(kind, "event kind")
        check_text(detail, "event detail")
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute("UPDATE jobs SET event_seq = event_seq + 1 WHERE id = ?", (job_id,))
            if cur.rowcount != 1:
                raise StateError(f"no job {job_id}")
            (seq,) = conn.execute("SELECT event_seq FROM jobs WHERE id = ?", (job_id,)).fetchone()
            conn.execute(
                "INSERT INTO events (job_id, seq, time, kind, detail) VALUES (?, ?, ?, ?, ?)",
                (job_id, seq, now, kind, detail),
            )
        return Event(job_id=job_id, seq=seq, time=now, kind=kind, detail=detail)

    def events(self, job_id: int, *, after: int = 0) -> list[Event]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT job_id, seq, time, kind, state, detail FROM events "
                "WHERE job_id = ? AND seq > ? ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [Event(*row) for row in rows]

    # -- logs -------------------------------------------------------------------------------

    def append_logs(self, job_id: int, lines: Sequence[tuple[str, str]]) -> int:
        rows = [(check_stream(stream), cut(text, self.line_limit)) for stream, text in lines]
        now = time.time()
        with self._tx(durable=False) as conn:
            row = conn.execute(
                "SELECT log_seq, log_dropped FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")
            plan = plan_logs(row[0], row[1], rows, self.log_limit)
            if not rows:
                return plan.seq
            conn.executemany(
                "INSERT INTO logs (job_id, seq, time, stream, text) VALUES (?, ?, ?, ?, ?)",
                [(job_id, seq, now, s, t) for seq, s, t in plan.rows],
            )
            if plan.marker is not None:
                conn.execute(
                    "UPDATE logs SET text = ? WHERE job_id = ? AND seq = ?",
                    (plan.marker, job_id, plan.seq),
                )
            conn.execute(
                "UPDATE jobs SET log_seq = ?, log_dropped = ? WHERE id = ?",
                (plan.seq, plan.dropped, job_id),
            )
        return plan.seq

    def logs(
        self,
        job_id: int,
        *,
        after: int = 0,
        streams: Iterable[str] | None = None,
        tail: int | None = None,
        limit: int = 10000,
    ) -> list[LogLine]:
        clauses = ["job_id = ?", "seq > ?"]
        args: list[Any] = [job_id, after]
        if streams is not None:
            chosen = sorted({check_stream(s) for s in streams})
            if not chosen:
                return []
            clauses.append(f"stream IN ({', '.join('?' * len(chosen))})")
            args.extend(chosen)
        sql = f"SELECT job_id, seq, time, stream, text FROM logs{where(clauses)}"
        if tail is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) AS last"
            args.append(count(tail, "tail"))
        sql += " ORDER BY seq LIMIT ?"
        args.append(count(limit, "limit"))
        with self._conn() as conn:
            return [LogLine(*row) for row in conn.execute(sql, args)]

    def _job(self, row: Sequence[Any]) -> Job:
        return storeparts.job(row, self._sealer.unseal(json.loads(row[3]), row[0]))
