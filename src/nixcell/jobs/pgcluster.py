"""The cluster methods of ``PgStore`` (``store.ClusterStore``): claiming, heartbeats, lost hosts,
cancel requests, uploads, artifacts, and LISTEN/NOTIFY.

A claim is one transaction: the next queued job this host may run by the cluster-wide fairness
rule, locked ``FOR UPDATE SKIP LOCKED`` (hosts claiming at once take different jobs and never
wait on each other), moved to ``preparing`` by the same statement. With ``per_user`` set,
claims take one advisory transaction lock: two hosts counting an owner's running jobs at once
would otherwise both start one past the cap.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from nixcell.errors import StateError
from nixcell.jobs.model import Job
from nixcell.jobs.storeparts import JOB_COLUMNS, check_text, count

log = logging.getLogger(__name__)

CHANNEL = "nixcell"
CLAIM_LOCK = 0x6E6978636532  # pg_advisory_xact_lock key of claims under a per-user cap
CLOSURES = 256  # closure keys a host row keeps (most recent first)
_NOW = "extract(epoch FROM clock_timestamp())::float8"
_J_COLUMNS = ", ".join(f"j.{c.strip()}" for c in JOB_COLUMNS.split(","))


# A claim: the queued jobs this host may run (target, closure hint), fairness order (owners'
# preparing/running jobs anywhere, then id), the first not locked by another claimer. First
# tried on each owner's oldest eligible job only (an aggregate over the queue, then a join of a
# few rows); when those are all taken by concurrent claimers, on every eligible job.
_ELIGIBLE = (
    "j.state = 'queued' AND (j.target IS NULL OR j.target = %(host)s) "
    "AND NOT (j.closure_key IS NOT NULL AND j.created > now.t - %(prefer)s "
    "AND j.closure_key IN (SELECT k FROM theirs) AND j.closure_key NOT IN (SELECT k FROM mine))"
)
_CAP = "(%(cap)s::int IS NULL OR coalesce(b.n, 0) < %(cap)s::int)"
_FIRSTS = (
    f"firsts AS (SELECT j.owner, min(j.id) AS id FROM jobs j, now WHERE {_ELIGIBLE} "
    "GROUP BY j.owner), "
    "pick AS (SELECT j.id FROM jobs j JOIN firsts f ON f.id = j.id "
    f"LEFT JOIN busy b ON b.owner = f.owner WHERE j.state = 'queued' AND {_CAP} "
    "ORDER BY coalesce(b.n, 0), j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED)"
)
_EVERY = (
    "pick AS (SELECT j.id FROM jobs j CROSS JOIN now LEFT JOIN busy b ON b.owner = j.owner "
    f"WHERE {_ELIGIBLE} AND {_CAP} "
    "ORDER BY coalesce(b.n, 0), j.id LIMIT 1 FOR UPDATE OF j SKIP LOCKED)"
)


def _claim_sql(pick: str) -> str:
    return (
        f"WITH now AS MATERIALIZED (SELECT {_NOW} AS t), "
        "busy AS MATERIALIZED (SELECT owner, count(*) AS n FROM jobs "
        "WHERE state IN ('preparing', 'running') GROUP BY owner), "
        "theirs AS MATERIALIZED (SELECT DISTINCT unnest(closures) AS k FROM hosts, now "
        "WHERE name <> %(host)s AND seen >= now.t - %(live)s), "
        "mine AS MATERIALIZED (SELECT unnest(closures) AS k FROM hosts "
        f"WHERE name = %(host)s), {pick} "
        "UPDATE jobs j SET state = 'preparing', host = %(host)s, "
        "attempts = j.attempts + 1, event_seq = j.event_seq + 1 FROM pick, now "
        f"WHERE j.id = pick.id RETURNING {_J_COLUMNS}, now.t, j.event_seq"
    )


def notify(conn: Any, *payloads: str) -> None:
    """NOTIFY channel ``nixcell`` (in this order, one round trip); delivered when (and only
    if) the transaction commits."""
    conn.execute(
        "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) WITH ORDINALITY AS x(p, n) ORDER BY n",
        (CHANNEL, list(payloads)),
    )


class ClusterMethods:
    """Mixed into PgStore: expects its ``_tx``, ``_conn``, ``_job``, ``record`` and ``pool``."""

    pool: Any
    _listeners: list[Any]
    _tx: Callable[..., contextlib.AbstractContextManager[Any]]
    _conn: Callable[[], contextlib.AbstractContextManager[Any]]
    _job: Callable[[Sequence[Any]], Job]
    record: Callable[..., Job]

    def claim(
        self,
        host: str,
        *,
        per_user: int | None = None,
        prefer_after: float = 5.0,
        live_within: float = 30.0,
    ) -> Job | None:
        """Claim the next queued job ``host`` may run (its target is None or ``host``), now
        ``preparing`` on ``host``; None when there is none. Fairness across the cluster: the
        owner with the fewest preparing/running jobs first, then the smallest id; owners at
        ``per_user`` are skipped. Closure hint: a job whose closure key another host seen within
        ``live_within`` seconds has (and this one has not) waits ``prefer_after`` seconds from
        its creation for that host before this one takes it."""
        check_text(host, "host name")
        if per_user is not None:
            count(per_user, "per_user")
        args = {"host": host, "live": live_within, "cap": per_user, "prefer": prefer_after}
        with self._tx() as conn:
            if per_user is not None:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (CLAIM_LOCK,))
            row = conn.execute(_claim_sql(_FIRSTS), args).fetchone()
            if row is None:  # every owner's first job locked by another claimer, or none
                row = conn.execute(_claim_sql(_EVERY), args).fetchone()
            if row is None:
                return None
            return self.record(conn, row, "preparing", None)

    def heartbeat(
        self, host: str, *, concurrency: int, running: int, closure: str | None = None
    ) -> None:
        """Upsert the host's row, ``seen`` by the database's clock; ``closure``: a closure key
        it now has (kept among its last ``CLOSURES``)."""
        check_text(host, "host name")
        check_text(closure, "closure key")
        with self._tx() as conn:  # nixcell_beat: a host role may write only its own row
            conn.execute(
                "SELECT nixcell_beat(%s, %s::int, %s::int, %s::text)",
                (host, concurrency, running, closure),
            )

    def hosts(self) -> list[dict[str, Any]]:
        """Every host row with its age in seconds by the database's clock (``nixcell hosts``)."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT name, {_NOW} - seen, started, concurrency, running, closures "
                "FROM hosts ORDER BY name"
            ).fetchall()
        keys = ("name", "age", "started", "concurrency", "running", "closures")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def reap_lost(self, timeout: float) -> list[Job]:
        """Jobs in preparing/running whose host was last seen more than ``timeout`` seconds ago
        (or has no row): re-queued while ``attempts <= retries``, else ``error (host lost)``; a
        cancel requested meanwhile makes it ``cancelled``. Rows another transaction holds are
        left for the next round (their host is alive enough to be moving them)."""
        moved: list[Job] = []
        with self._tx() as conn:
            rows = conn.execute(
                f"SELECT j.id, j.host, j.attempts, j.retries, c.reason IS NOT NULL, c.reason "
                f"FROM jobs j LEFT JOIN hosts h ON h.name = j.host "
                "LEFT JOIN cancels c ON c.job_id = j.id "
                "WHERE j.state IN ('preparing', 'running') "
                f"AND (h.name IS NULL OR h.seen < {_NOW} - %s) "
                "ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
                (timeout,),
            ).fetchall()
            for job_id, host, attempts, retries, cancelled, why in rows:
                if cancelled:
                    moved.append(self._end(conn, job_id, "cancelled", why or "cancelled"))
                elif attempts <= retries:
                    moved.append(self._requeue(conn, job_id, f"requeued: host {host} lost"))
                else:
                    moved.append(self._end(conn, job_id, "error", "host lost"))
            if rows:
                conn.execute("DELETE FROM cancels WHERE job_id = ANY(%s)", ([r[0] for r in rows],))
        return moved

    def _end(self, conn: Any, job_id: int, state: str, reason: str) -> Job:
        row = conn.execute(
            f"WITH now AS (SELECT {_NOW} AS t) UPDATE jobs j SET state = %s, reason = %s, "
            "finished = now.t, event_seq = j.event_seq + 1 FROM now WHERE j.id = %s "
            f"RETURNING {_J_COLUMNS}, now.t, j.event_seq",
            (state, reason, job_id),
        ).fetchone()
        return self.record(conn, row, state, reason)

    def _requeue(self, conn: Any, job_id: int, detail: str) -> Job:
        row = conn.execute(
            f"WITH now AS (SELECT {_NOW} AS t) UPDATE jobs j SET state = 'queued', host = NULL, "
            "started = NULL, cell_id = NULL, exit_code = NULL, event_seq = j.event_seq + 1 "
            f"FROM now WHERE j.id = %s RETURNING {_J_COLUMNS}, now.t, j.event_seq, j.target",
            (job_id,),
        ).fetchone()
        notify(conn, f"q {job_id} {row[-1] or '-'}")
        return self.record(conn, row[:-1], "queued", detail)

    def request_cancel(self, job_id: int, reason: str) -> None:
        """Ask the host running the job to cancel it (NOTIFY ``c``); repeated asks keep the
        first reason."""
        check_text(reason, "cancel reason")
        with self._tx() as conn:
            row = conn.execute(
                f"INSERT INTO cancels (job_id, reason, requested) SELECT id, %s, {_NOW} "
                "FROM jobs WHERE id = %s ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
                (reason, job_id),
            ).fetchone()
            if (
                row is None
                and conn.execute("SELECT 1 FROM jobs WHERE id = %s", (job_id,)).fetchone() is None
            ):
                raise StateError(f"no job {job_id}")
            notify(conn, f"c {job_id}")

    def take_cancels(self, host: str) -> list[tuple[int, str]]:
        """The cancel requests of active jobs claimed by ``host``, taken (each given once)."""
        with self._tx() as conn:
            rows = conn.execute(
                "DELETE FROM cancels c USING jobs j WHERE c.job_id = j.id AND j.host = %s "
                "AND j.state IN ('preparing', 'running') RETURNING c.job_id, c.reason",
                (host,),
            ).fetchall()
        return sorted((job_id, reason or "cancelled") for job_id, reason in rows)

    # -- uploads and artifacts --------------------------------------------------------------

    def put_upload(self, upload_id: str, owner: str, data: bytes) -> None:
        check_text(upload_id, "upload id")
        check_text(owner, "upload owner")
        # a plain INSERT: a host may not read the row it adds (no RETURNING, no ON CONFLICT:
        # both need to see it); an id taken already is the primary key's one-line error
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO uploads (id, owner, created, data) VALUES (%s, %s, {_NOW}, %s)",
                (upload_id, owner, data),
            )

    def take_upload(self, upload_id: str, owner: str) -> bytes | None:
        """The upload's data (kept: several jobs, on several hosts, may use one upload, and a
        re-queued job needs it again; ``expire_uploads`` removes old ones); None when there is
        none of this owner's by that id."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT data FROM uploads WHERE id = %s AND owner = %s", (upload_id, owner)
            ).fetchone()
        return bytes(row[0]) if row else None

    def has_upload(self, upload_id: str, owner: str) -> bool:
        """Whether ``owner`` has this upload (a host may not read another's upload bytes)."""
        with self._conn() as conn:
            row = conn.execute("SELECT nixcell_has_upload(%s, %s)", (upload_id, owner)).fetchone()
        return bool(row and row[0])

    def expire_uploads(self, before: float) -> int:
        """Uploads made before ``before`` (unix time, the database's clock) removed; how many."""
        with self._tx() as conn:  # a function: a host role cannot see others' uploads
            row = conn.execute("SELECT nixcell_expire_uploads(%s::float8)", (before,)).fetchone()
        return int(row[0]) if row else 0

    def drop_upload(self, upload_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))

    def put_artifacts(self, job_id: int, data: bytes) -> None:
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO artifacts (job_id, data) SELECT id, %s FROM jobs WHERE id = %s "
                "ON CONFLICT (job_id) DO UPDATE SET data = EXCLUDED.data RETURNING job_id",
                (data, job_id),
            ).fetchone()
            if row is None:
                raise StateError(f"no job {job_id}")

    def get_artifacts(self, job_id: int) -> bytes | None:
        with self._conn() as conn:
            row = conn.execute("SELECT data FROM artifacts WHERE job_id = %s", (job_id,)).fetchone()
        return bytes(row[0]) if row else None

    # -- LISTEN -----------------------------------------------------------------------------

    def listen(self, callback: Callable[[str, str], None]) -> Listener:
        """Call ``callback(kind, rest)`` from a daemon thread for every NOTIFY (kind ``e``,
        ``l``, ``q`` or ``c``), and ``("r", "")`` after a reconnect (notifications may have been
        missed: read again). Listening has begun when this returns. (psycopg >= 3.2: its
        ``notifies(timeout=)`` lets the thread see ``stop``.)"""
        listener = Listener(self.pool, callback)
        self._listeners.append(listener)
        return listener


class Listener:
    """One LISTEN connection and its thread; reconnects with backoff when it drops."""

    def __init__(self, pool: Any, callback: Callable[[str, str], None]) -> None:
        self._pool = pool
        self._callback = callback
        self._stop = threading.Event()
        self._conn = self._open()
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name="nixcell-listen", daemon=True)
        self._thread.start()

    def _open(self) -> Any:
        conn = self._pool.connect(autocommit=True)
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except Exception as exc:
            conn.close()
            raise self._pool.error("cannot listen", exc) from None
        return conn

    def backend_pid(self) -> int:
        """The server process of the current LISTEN connection (tests terminate it)."""
        return int(self._conn.info.backend_pid)

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            try:
                for note in self._conn.notifies(timeout=0.5):
                    kind, _, rest = note.payload.partition(" ")
                    self._deliver(kind, rest)
                delay = 0.05
            except Exception as exc:  # the connection dropped: reconnect, then say so
                if self._stop.is_set():
                    return
                log.warning("%s", self._pool.error("LISTEN connection lost", exc))
                with contextlib.suppress(Exception):
                    self._conn.close()
                while not self._stop.wait(delay):
                    try:
                        self._conn = self._open()
                        break
                    except StateError:
                        delay = min(delay * 2, 2.0)
                else:
                    return
                self.reconnects += 1
                self._deliver("r", "")

    def _deliver(self, kind: str, rest: str) -> None:
        try:
            self._callback(kind, rest)
        except Exception:  # the callback's bug must not end listening
            log.exception("job store LISTEN callback failed")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self._conn.close()
