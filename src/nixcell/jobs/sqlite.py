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
from nixcell.jobs import dbfile, sealing
from nixcell.jobs.model import ACTIVE, STATES, STREAMS, TERMINAL, Event, Job, LogLine
from nixcell.jobs.store import TRUNCATED

log = logging.getLogger(__name__)

CUT = " [cut]"  # the visible end of a line cut at ``line_limit`` bytes
_IDLE = 8  # pooled connections kept open

_JOB_COLUMNS = (
    "id, owner, owner_name, request, state, created, started, finished, exit_code, reason, "
    "host, cell_id, log_seq, log_dropped"
)


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


class SqliteStore:
    """``JobStore`` in one SQLite file (created 0600; a symlink at the path is refused). Secret
    env values are sealed with the key in ``PATH.key`` and dropped when a job ends
    (``sealing.py``): ``Job.request`` has them while the job may still run, then ``<secret>``."""

    def __init__(self, path: str, *, log_limit: int = 100_000, line_limit: int = 16384) -> None:
        if log_limit < 0:
            raise StateError(f"log limit must be 0 or more, not {log_limit}")
        if line_limit <= len(CUT.encode()):
            raise StateError(f"line limit must be more than {len(CUT)} bytes, not {line_limit}")
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
        now = time.time()
        try:  # strict JSON (no NaN): what PostgreSQL's json type takes too
            body = json.dumps(self._sealer.seal(request), sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise StateError(f"job request cannot be stored: {exc}") from None
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
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(
        self,
        *,
        owner: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[Job]:
        where, args = _filters(owner=owner, states=states)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        return self._select(where, args, "id DESC LIMIT ?", _count(limit, "limit"))

    def queued(self) -> list[Job]:
        return self._select(*_filters(states=["queued"]), "id")

    def unfinished(self) -> list[Job]:
        return self._select(*_filters(states=ACTIVE), "id")

    def expired(self, finished_before: float) -> list[Job]:
        where, args = _filters(states=TERMINAL)
        return self._select([*where, "finished < ?"], [*args, finished_before], "id")

    def _select(self, where: list[str], args: list[Any], order: str, *more: Any) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs{_where(where)} ORDER BY {order}"
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
        _check_state(state)
        expected = sorted({_check_state(s) for s in expect})
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
            if state in TERMINAL:  # it will not run again: its secrets go, even sealed
                hidden = json.dumps(sealing.hide(json.loads(body)), sort_keys=True)
                if hidden != body:
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

    def counts(self) -> dict[str, int]:
        result = dict.fromkeys(STATES, 0)
        with self._conn() as conn:
            for state, n in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
                result[state] = n
        return result

    def durations(self, *, limit: int = 1000) -> list[tuple[str, float]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT state, finished - started FROM jobs WHERE finished IS NOT NULL AND "
                "started IS NOT NULL ORDER BY finished DESC LIMIT ?",
                (_count(limit, "limit"),),
            ).fetchall()
        return [(state, max(0.0, seconds)) for state, seconds in rows]

    # -- events -----------------------------------------------------------------------------

    def add_event(self, job_id: int, kind: str, detail: str | None = None) -> Event:
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
        rows = [(_check_stream(stream), self._cut(text)) for stream, text in lines]
        now = time.time()
        with self._tx(durable=False) as conn:
            row = conn.execute(
                "SELECT log_seq, log_dropped FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")
            seq, dropped = row
            if not rows:
                return seq
            if not dropped:
                kept = rows[: max(0, self.log_limit - seq)]
                conn.executemany(
                    "INSERT INTO logs (job_id, seq, time, stream, text) VALUES (?, ?, ?, ?, ?)",
                    [(job_id, seq + i, now, s, t) for i, (s, t) in enumerate(kept, 1)],
                )
                seq += len(kept)
                if len(kept) < len(rows):  # the bound is reached: the marker is the last line
                    dropped = len(rows) - len(kept)
                    seq += 1
                    conn.execute(
                        "INSERT INTO logs (job_id, seq, time, stream, text) "
                        "VALUES (?, ?, ?, 'system', ?)",
                        (job_id, seq, now, TRUNCATED.format(dropped=dropped)),
                    )
            else:
                dropped += len(rows)
                conn.execute(
                    "UPDATE logs SET text = ? WHERE job_id = ? AND seq = ?",
                    (TRUNCATED.format(dropped=dropped), job_id, seq),
                )
            conn.execute(
                "UPDATE jobs SET log_seq = ?, log_dropped = ? WHERE id = ?",
                (seq, dropped, job_id),
            )
        return seq

    def _cut(self, text: str) -> str:
        """The line as stored: valid UTF-8 (lone surrogates replaced), at most ``line_limit``
        bytes, a cut one ending in ``CUT``."""
        data = text.encode("utf-8", "replace")
        if len(data) <= self.line_limit:
            return data.decode("utf-8")
        keep = data[: self.line_limit - len(CUT.encode())]
        return keep.decode("utf-8", "ignore") + CUT  # "ignore": a char split by the cut goes

    def logs(
        self,
        job_id: int,
        *,
        after: int = 0,
        streams: Iterable[str] | None = None,
        tail: int | None = None,
        limit: int = 10000,
    ) -> list[LogLine]:
        where = ["job_id = ?", "seq > ?"]
        args: list[Any] = [job_id, after]
        if streams is not None:
            chosen = sorted({_check_stream(s) for s in streams})
            if not chosen:
                return []
            where.append(f"stream IN ({', '.join('?' * len(chosen))})")
            args.extend(chosen)
        sql = f"SELECT job_id, seq, time, stream, text FROM logs{_where(where)}"
        if tail is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT ?) AS last"
            args.append(_count(tail, "tail"))
        sql += " ORDER BY seq LIMIT ?"
        args.append(_count(limit, "limit"))
        with self._conn() as conn:
            return [LogLine(*row) for row in conn.execute(sql, args)]

    def _job(self, row: Sequence[Any]) -> Job:
        return _job(row, self._sealer.unseal(json.loads(row[3]), row[0]))


# -- helpers ------------------------------------------------------------------------------------


def _job(row: Sequence[Any], request: dict[str, Any]) -> Job:
    (job_id, owner, owner_name, _, state, created, started, finished, exit_code, reason,
     host, cell_id, log_seq, log_dropped) = row  # fmt: skip
    return Job(
        id=job_id,
        owner=owner,
        owner_name=owner_name,
        request=request,
        state=state,
        created=created,
        started=started,
        finished=finished,
        exit_code=exit_code,
        reason=reason,
        host=host,
        cell_id=cell_id,
        log_lines=log_seq,
        log_truncated=log_dropped > 0,
    )


def _filters(
    *, owner: str | None = None, states: Iterable[str] | None = None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if owner is not None:
        where.append("owner = ?")
        args.append(owner)
    if states is not None:
        chosen = sorted({_check_state(s) for s in states})
        if not chosen:
            where.append("0 = 1")  # an empty choice selects nothing (not everything)
        else:
            where.append(f"state IN ({', '.join('?' * len(chosen))})")
            args.extend(chosen)
    return where, args


def _where(clauses: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def _check_state(state: str) -> str:
    if state not in STATES:
        raise StateError(f"unknown job state {state!r} (one of {', '.join(STATES)})")
    return state


def _check_stream(stream: str) -> str:
    if stream not in STREAMS:
        raise StateError(f"unknown log stream {stream!r} (one of {', '.join(STREAMS)})")
    return stream


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"{what} must be a whole number, 0 or more, not {value!r}")
    return value
