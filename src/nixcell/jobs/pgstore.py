"""The job store of a cluster: PostgreSQL behind ``store.JobStore`` (issue 13), plus the cluster
methods of ``store.ClusterStore`` (``pgcluster.py``).

Same semantics as ``SqliteStore`` (the shared parts are ``storeparts.py``: checks, the request's
sealing, line cutting, the log bound) with these differences: job, event and log times come from
the database's clock (hosts with skewed clocks agree); log text is stored as UTF-8 ``BYTEA`` (a
NUL in a line is kept); every change NOTIFYs channel ``nixcell`` in its own transaction.

Durability: PostgreSQL commits with the server's ``synchronous_commit`` (on by default) for jobs,
transitions and events; log appends use ``synchronous_commit = off`` for their transaction (as
SQLite's NORMAL: a server crash may take the last lines, never a job).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from nixcell.errors import StateError
from nixcell.jobs import pgroles, pgschema, sealing, storeparts
from nixcell.jobs.model import ACTIVE, TERMINAL, Event, Job, LogLine
from nixcell.jobs.pgcluster import CHANNEL, ClusterMethods, notify
from nixcell.jobs.pgconn import Pool, once_more
from nixcell.jobs.storeparts import (
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

NOW = "extract(epoch FROM clock_timestamp())::float8"  # the database's clock, unix seconds


class PgStore(ClusterMethods, SharedReads):
    """``JobStore`` (and ``ClusterStore``) in a PostgreSQL database. ``key``: the 32-byte
    sealing key of secret env values (every host of a cluster needs the same one)."""

    cluster = True
    MARK = "%s"

    def __init__(
        self,
        dsn: str,
        *,
        log_limit: int = 100_000,
        line_limit: int = 16384,
        key: bytes,
        pool_size: int = 8,
        host: str | None = None,
    ) -> None:
        """``host``: the host this store serves; a host role (``pgroles``) must be its own."""
        check_limits(log_limit, line_limit)
        if not isinstance(key, bytes) or len(key) != 32:
            raise StateError("the job store's sealing key must be 32 bytes")
        self.log_limit = log_limit
        self.line_limit = line_limit
        self._sealer = sealing.Sealer(key)
        self.pool = Pool(dsn, size=pool_size)
        self.shown = self.pool.shown  # the DSN without its password, for messages
        self._listeners: list[Any] = []
        conn = self.pool.connect()
        try:
            pgschema.migrate(conn, self.shown)
            pgroles.check_host(conn, host, self.shown)
            conn.commit()
        except Exception as exc:
            if isinstance(exc, StateError):
                raise
            if "permission denied" in str(exc) or "must be owner" in str(exc):
                raise StateError(
                    f"job store {self.shown}: its schema is older than this nixcell's and this "
                    "role may not change it: run `nixcell store migrate --store URI` as the "
                    "database's owner"
                ) from None
            raise self.pool.error("cannot migrate", exc) from None
        finally:
            conn.close()

    # -- connections ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _conn(self) -> Iterator[Any]:
        """A pooled psycopg connection in one transaction, committed at the end."""
        with self.pool.transaction() as conn:
            yield conn

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = True) -> Iterator[Any]:
        """One write transaction; not ``durable``: its commit does not wait for the WAL flush."""
        with self.pool.transaction() as conn:
            if not durable:
                conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
            yield conn

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        self.pool.close()

    # -- jobs -------------------------------------------------------------------------------

    def create(
        self,
        owner: str,
        owner_name: str,
        request: dict[str, Any],
        *,
        target: str | None = None,
        closure_key: str | None = None,
        retries: int = 0,
        submit_key: str | None = None,
    ) -> Job:
        """As ``JobStore.create``; ``target``: only that host takes it (None: any host);
        ``closure_key``: the closure hint; ``retries``: re-runs allowed after a lost host.
        ``submit_key``: the submit's own random key — asked again with the same key (the first
        answer was lost with the connection) it returns the job the first ask made, never a
        second one."""
        check_text(owner, "job owner")
        check_text(owner_name, "job owner name")
        check_text(target, "target host")
        check_text(closure_key, "closure key")
        check_text(submit_key, "submit key")
        count(retries, "retries")
        body = encode_request(self._sealer, request)
        with self._tx() as conn:
            row = conn.execute(
                f"WITH j AS (INSERT INTO jobs (owner, owner_name, request, state, created, "
                f"event_seq, target, closure_key, retries, submit_key) VALUES (%s, %s, %s, "
                f"'queued', {NOW}, 1, %s, %s, %s, %s) ON CONFLICT (submit_key) DO NOTHING "
                f"RETURNING *), "
                f"e AS (INSERT INTO events (job_id, seq, time, kind, state) "
                f"SELECT id, 1, created, 'state', 'queued' FROM j) SELECT {JOB_COLUMNS} FROM j",
                (owner, owner_name, body, target, closure_key, retries, submit_key),
            ).fetchone()
            if row is None:  # this submit's first ask made it
                row = conn.execute(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE submit_key = %s AND owner = %s",
                    (submit_key, owner),
                ).fetchone()
                if row is None:
                    raise StateError("a job with this submit key exists already")
                return self._job(row)
            notify(conn, f"q {row[0]} {target or '-'}", f"e {row[0]} 1 -")
        return self._job(row)

    def get(self, job_id: int) -> Job | None:
        with self._conn() as conn:
            return self._get(conn, job_id)

    def _get(self, conn: Any, job_id: int) -> Job | None:
        row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(
        self,
        *,
        owner: str | None = None,
        states: Iterable[str] | None = None,
        limit: int = 100,
        before: int | None = None,
        host: str | None = None,
    ) -> list[Job]:
        """As ``JobStore.list``; ``host``: only the jobs that host claimed and the queued ones
        it may take."""
        clauses, args = filters(owner=owner, states=states, mark="%s")
        if host is not None:
            clauses.append("(host = %s OR (state = 'queued' AND (target IS NULL OR target = %s)))")
            args += [host, host]
        if before is not None:
            clauses.append("id < %s")
            args.append(before)
        return self._select(clauses, args, "id DESC LIMIT %s", count(limit, "limit"))

    def queued(self) -> list[Job]:
        return self._select(*filters(states=["queued"], mark="%s"), "id")

    def unfinished(self, host: str | None = None) -> list[Job]:
        """As ``JobStore.unfinished``; ``host``: only that host's (what a restarted host finds
        left of its own; the others' are its peers' to run, or ``reap_lost``'s)."""
        clauses, args = filters(states=ACTIVE, mark="%s")
        if host is not None:
            clauses.append("host = %s")
            args.append(host)
        return self._select(clauses, args, "id")

    def expired(self, finished_before: float) -> list[Job]:
        clauses, args = filters(states=TERMINAL, mark="%s")
        return self._select([*clauses, "finished < %s"], [*args, finished_before], "id")

    def _select(self, clauses: list[str], args: list[Any], order: str, *more: Any) -> list[Job]:
        sql = f"SELECT {JOB_COLUMNS} FROM jobs{where(clauses)} ORDER BY {order}"
        with self._conn() as conn:
            return [self._job(row) for row in conn.execute(sql, [*args, *more]).fetchall()]

    def transition(
        self,
        job_id: int,
        state: str,
        *,
        expect: Iterable[str],
        reason: str | None = None,
        exit_code: int | None = None,
        cell_id: str | None = None,
        host: str | None = None,
    ) -> Job | None:
        """As ``JobStore.transition``; ``host``: the job must be claimed by that host (a host
        moves only jobs it claimed)."""
        check_state(state)
        check_text(reason, "job reason")
        check_text(cell_id, "cell id")
        expected = sorted({check_state(s) for s in expect})
        if not expected:
            return None
        sets = ["state = %s", "event_seq = event_seq + 1"]
        args: list[Any] = [state]
        if state == "running":
            sets.append("started = now.t")
        if state in TERMINAL:
            sets.append("finished = now.t")
        if state == "queued":  # back in the queue: any host may claim it again
            sets += ["host = NULL", "started = NULL", "cell_id = NULL"]
        for column, value in (("reason", reason), ("exit_code", exit_code), ("cell_id", cell_id)):
            if value is not None:
                sets.append(f"{column} = %s")
                args.append(value)
        mine = ""
        if host is not None:
            mine = " AND host = %s"
            args_tail: list[Any] = [job_id, expected, host]
        else:
            args_tail = [job_id, expected]
        with self._tx() as conn:
            row = conn.execute(
                f"WITH now AS (SELECT {NOW} AS t) UPDATE jobs SET {', '.join(sets)} FROM now "
                f"WHERE id = %s AND state = ANY(%s){mine} "
                f"RETURNING {JOB_COLUMNS}, now.t, event_seq",
                [*args, *args_tail],
            ).fetchone()
            if row is None:
                return None
            if state == "queued":
                target = conn.execute("SELECT target FROM jobs WHERE id = %s", (job_id,)).fetchone()
                notify(conn, f"q {job_id} {(target and target[0]) or '-'}")
            return self.record(conn, row, state, reason)

    def record(self, conn: Any, row: Sequence[Any], state: str, detail: str | None) -> Job:
        """After an UPDATE that moved a job (``row``: JOB_COLUMNS, time, event_seq): its state
        event, its secrets dropped when it will not run again, and the NOTIFY."""
        *columns, now, seq = row
        body = columns[3]
        hidden = hidden_body(body) if state in TERMINAL else None
        if hidden is not None:
            conn.execute("UPDATE jobs SET request = %s WHERE id = %s", (hidden, columns[0]))
            columns[3] = hidden
        conn.execute(
            "WITH e AS (INSERT INTO events (job_id, seq, time, kind, state, detail) "
            "VALUES (%s, %s, %s, 'state', %s, %s)) SELECT pg_notify(%s, %s)",
            (
                columns[0],
                seq,
                now,
                state,
                detail,
                CHANNEL,
                f"e {columns[0]} {seq} {columns[10] or '-'}",
            ),
        )
        return self._job(columns)

    def delete(self, job_id: int) -> None:
        with self._tx(durable=False) as conn:
            row = conn.execute(
                "SELECT state FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if row is None:
                return
            if row[0] not in TERMINAL:
                raise StateError(f"job {job_id} is {row[0]}: only finished jobs are deleted")
            conn.execute("DELETE FROM jobs WHERE id = %s", (job_id,))  # the rest cascades

    # -- events -----------------------------------------------------------------------------

    def add_event(self, job_id: int, kind: str, detail: str | None = None) -> Event:
        check_text(kind, "event kind")
        check_text(detail, "event detail")
        with self._tx() as conn:
            row = conn.execute(
                f"WITH now AS (SELECT {NOW} AS t) UPDATE jobs SET event_seq = event_seq + 1 "
                "FROM now WHERE id = %s RETURNING event_seq, now.t, host",
                (job_id,),
            ).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")
            seq, now, host = row
            conn.execute(
                "WITH e AS (INSERT INTO events (job_id, seq, time, kind, detail) "
                "VALUES (%s, %s, %s, %s, %s)) SELECT pg_notify(%s, %s)",
                (job_id, seq, now, kind, detail, CHANNEL, f"e {job_id} {seq} {host or '-'}"),
            )
        return Event(job_id=job_id, seq=seq, time=now, kind=kind, detail=detail)

    def events(self, job_id: int, *, after: int = 0) -> list[Event]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT job_id, seq, time, kind, state, detail FROM events "
                "WHERE job_id = %s AND seq > %s ORDER BY seq",
                (job_id, after),
            ).fetchall()
        return [Event(*row) for row in rows]

    # -- logs -------------------------------------------------------------------------------

    def append_logs(self, job_id: int, lines: Sequence[tuple[str, str]]) -> int:
        rows = [(check_stream(stream), cut(text, self.line_limit)) for stream, text in lines]
        with self._tx(durable=False) as conn:
            row = conn.execute(
                f"SELECT log_seq, log_dropped, {NOW} FROM jobs WHERE id = %s FOR UPDATE",
                (job_id,),
            ).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")
            plan = plan_logs(row[0], row[1], rows, self.log_limit)
            if not rows:
                return plan.seq
            conn.execute(
                "WITH ins AS (INSERT INTO logs (job_id, seq, time, stream, text) "
                "SELECT %(id)s, s, %(t)s, st, tx "
                "FROM unnest(%(seqs)s::int[], %(streams)s::text[], %(texts)s::bytea[]) "
                "AS x(s, st, tx)), "
                "m AS (UPDATE logs SET text = %(marker)s::bytea "
                "WHERE job_id = %(id)s AND seq = %(seq)s AND %(marker)s::bytea IS NOT NULL), "
                "u AS (UPDATE jobs SET log_seq = %(seq)s, log_dropped = %(dropped)s "
                "WHERE id = %(id)s) "
                "SELECT pg_notify('nixcell', %(note)s)",
                {
                    "id": job_id,
                    "t": row[2],
                    "seqs": [seq for seq, _, _ in plan.rows],
                    "streams": [s for _, s, _ in plan.rows],
                    "texts": [t.encode() for _, _, t in plan.rows],
                    "marker": plan.marker.encode() if plan.marker is not None else None,
                    "seq": plan.seq,
                    "dropped": plan.dropped,
                    "note": f"l {job_id} {plan.seq}",
                },
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
        clauses = ["job_id = %s", "seq > %s"]
        args: list[Any] = [job_id, after]
        if streams is not None:
            chosen = sorted({check_stream(s) for s in streams})
            if not chosen:
                return []
            clauses.append("stream = ANY(%s)")
            args.append(chosen)
        sql = f"SELECT job_id, seq, time, stream, text FROM logs{where(clauses)}"
        if tail is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT %s) AS last"
            args.append(count(tail, "tail"))
        sql += " ORDER BY seq LIMIT %s"
        args.append(count(limit, "limit"))
        with self._conn() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [LogLine(j, seq, t, s, bytes(text).decode("utf-8")) for j, seq, t, s, text in rows]

    def _job(self, row: Sequence[Any]) -> Job:
        return storeparts.job(row, self._sealer.unseal(json.loads(row[3]), row[0]))


_READS = (
    "get", "list", "queued", "unfinished", "expired", "counts", "durations", "events", "logs",
    "hosts", "get_artifacts",
)  # fmt: skip
for _name in _READS:
    setattr(PgStore, _name, once_more(getattr(PgStore, _name)))
