"""Hosts with their own database roles: each host may change only the jobs it claimed.

The database's owner (the admin: ``nixcell store migrate``) owns the tables; every host logs in
with a role of its own (``nixcell store add-host NAME``), a member of ``nixcell_hosts``, and
row-level security holds it to its part:

- a job is claimed only from the queue (``host`` NULL, ``queued``) and only as the host itself;
  a claimed job is changed only by its host — or, once that host is lost (no heartbeat for
  ``LOST_AFTER`` s by the database's clock), by the host that ends or re-queues it;
- events, log lines and artifacts are written only to such jobs; a host's heartbeat row is its
  own; cancel requests and uploads anyone may add;
- a job's owner, submit time, routing and retries never change, and its request changes only
  when its secrets are dropped at its end (a trigger, for every role).

Reading stays open to every host (any host serves any job's logs). The owner is not bound by
the policies (PostgreSQL exempts a table's owner), which is what a single-role set-up gets.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from nixcell.errors import StateError, UsageError

GROUP = "nixcell_hosts"
ROLE_PREFIX = "nixcell_host_"
LOST_AFTER = 3.0  # seconds: the least silence after which another host may end a host's jobs
TERMINAL_SQL = "('succeeded', 'failed', 'cancelled', 'timed_out', 'error')"
TABLES = ("jobs", "events", "logs", "hosts", "uploads", "artifacts", "cancels")
WRITABLE = ("jobs", "events", "logs", "uploads", "artifacts", "cancels")  # hosts: nixcell_beat
CLOSURES = 256  # closure keys a host row keeps (most recent first)

# Migration 2 (pgschema.MIGRATIONS): statements one by one (function bodies hold semicolons).
SECURE: tuple[str, ...] = (
    "CREATE TABLE host_roles (role TEXT PRIMARY KEY, host TEXT NOT NULL UNIQUE)",
    "CREATE FUNCTION nixcell_host() RETURNS text LANGUAGE sql STABLE SECURITY DEFINER "
    "SET search_path = pg_catalog, public AS "
    "$$ SELECT host FROM public.host_roles WHERE role = session_user $$",
    "CREATE FUNCTION nixcell_lost(h text) RETURNS boolean LANGUAGE sql STABLE SECURITY DEFINER "
    "SET search_path = pg_catalog, public AS "
    "$$ SELECT h IS NOT NULL AND coalesce((SELECT seen FROM public.hosts WHERE name = h), 0) "
    f"< extract(epoch FROM clock_timestamp()) - {LOST_AFTER} $$",
    "CREATE FUNCTION nixcell_may_write(j bigint) RETURNS boolean LANGUAGE sql STABLE "
    "SECURITY DEFINER SET search_path = pg_catalog, public AS "
    "$$ SELECT EXISTS (SELECT 1 FROM public.jobs WHERE id = j AND (host IS NULL "
    "OR host = public.nixcell_host() OR public.nixcell_lost(host))) $$",
    # events: its host's (or a lost host's) job any; an unclaimed job only the state it is in
    # (a cancel of a queued job, a re-queue), so nothing is forged into one nobody runs
    "CREATE FUNCTION nixcell_may_note(j bigint, k text, s text) RETURNS boolean LANGUAGE sql "
    "STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS "
    "$$ SELECT EXISTS (SELECT 1 FROM public.jobs WHERE id = j AND (host = public.nixcell_host() "
    "OR public.nixcell_lost(host) OR (host IS NULL AND k = 'state' AND s = state))) $$",
    "CREATE FUNCTION nixcell_runs(j bigint) RETURNS boolean LANGUAGE sql STABLE "
    "SECURITY DEFINER SET search_path = pg_catalog, public AS "
    "$$ SELECT EXISTS (SELECT 1 FROM public.jobs WHERE id = j AND host = public.nixcell_host() "
    "AND state IN ('preparing', 'running')) $$",
    f"""CREATE FUNCTION nixcell_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE kept public.jobs;
    BEGIN
        IF NEW.id IS DISTINCT FROM OLD.id OR NEW.owner IS DISTINCT FROM OLD.owner
           OR NEW.owner_name IS DISTINCT FROM OLD.owner_name
           OR NEW.created IS DISTINCT FROM OLD.created OR NEW.target IS DISTINCT FROM OLD.target
           OR NEW.retries IS DISTINCT FROM OLD.retries
           OR NEW.closure_key IS DISTINCT FROM OLD.closure_key
           OR NEW.submit_key IS DISTINCT FROM OLD.submit_key THEN
            RAISE EXCEPTION 'a job''s owner, submit time and routing never change';
        END IF;
        IF OLD.state IN {TERMINAL_SQL} THEN  -- finished: only its secrets may still go
            kept := NEW;
            kept.request := OLD.request;
            IF kept IS DISTINCT FROM OLD THEN
                RAISE EXCEPTION 'a finished job stays as it finished';
            END IF;
        END IF;
        IF NEW.request IS DISTINCT FROM OLD.request AND OLD.state NOT IN {TERMINAL_SQL} THEN
            RAISE EXCEPTION 'a job''s request changes only once it has ended';
        END IF;
        IF NEW.attempts < OLD.attempts OR NEW.attempts > OLD.attempts + 1
           OR (NEW.attempts = OLD.attempts + 1 AND NOT (OLD.state = 'queued'
               AND NEW.state = 'preparing')) THEN
            RAISE EXCEPTION 'a job''s attempts grow by one at a claim, never otherwise';
        END IF;
        IF NEW.target IS NOT NULL AND NEW.host IS NOT NULL AND NEW.host <> NEW.target THEN
            RAISE EXCEPTION 'a pinned job runs only on its host';
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER jobs_guard BEFORE UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION nixcell_guard()",
    # the heartbeat: a host writes only its own row, and only through this (a host role has no
    # write grant on hosts, so it cannot lock the table or a row and make a live host look lost)
    f"""CREATE FUNCTION nixcell_beat(h text, conc integer, run integer, closure text)
    RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    DECLARE me text := public.nixcell_host();
    BEGIN
        IF me IS NOT NULL AND me <> h THEN
            RAISE EXCEPTION 'a host beats only for itself';
        END IF;
        INSERT INTO public.hosts AS o (name, seen, started, concurrency, running, closures)
        VALUES (h, extract(epoch FROM clock_timestamp()), extract(epoch FROM clock_timestamp()),
                conc, run, CASE WHEN closure IS NULL THEN '{{}}'::text[] ELSE ARRAY[closure] END)
        ON CONFLICT (name) DO UPDATE SET seen = EXCLUDED.seen,
            concurrency = EXCLUDED.concurrency, running = EXCLUDED.running,
            closures = CASE WHEN closure IS NULL THEN o.closures ELSE
                (array_prepend(closure, array_remove(o.closures, closure)))[1:{CLOSURES}] END;
    END $$""",
    *(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY" for table in TABLES),
    *(
        f"CREATE POLICY {table}_read ON {table} FOR SELECT USING (true)"
        for table in TABLES
        if table != "uploads"
    ),
    # an upload's bytes are for the host that runs a job of it; the others may only ask
    # whether it exists (nixcell_has_upload, at a submit through another host)
    "CREATE FUNCTION nixcell_needs_upload(u text) RETURNS boolean LANGUAGE sql STABLE "
    "SECURITY DEFINER SET search_path = pg_catalog, public AS "
    "$$ SELECT EXISTS (SELECT 1 FROM public.jobs WHERE host = public.nixcell_host() "
    "AND state IN ('preparing', 'running') "
    "AND (request::jsonb) #>> '{workspace,upload}' = u) $$",
    "CREATE FUNCTION nixcell_has_upload(u text, o text) RETURNS boolean LANGUAGE sql STABLE "
    "SECURITY DEFINER SET search_path = pg_catalog, public AS "
    "$$ SELECT EXISTS (SELECT 1 FROM public.uploads WHERE id = u AND owner = o) $$",
    "CREATE POLICY uploads_read ON uploads FOR SELECT USING (nixcell_needs_upload(id))",
    "CREATE FUNCTION nixcell_expire_uploads(before float8) RETURNS integer LANGUAGE sql "
    "SECURITY DEFINER SET search_path = pg_catalog, public AS "
    "$$ WITH gone AS (DELETE FROM public.uploads WHERE created < least(before, "
    "extract(epoch FROM clock_timestamp()) - 3600) RETURNING 1) SELECT count(*)::int FROM gone $$",
    "CREATE POLICY jobs_submit ON jobs FOR INSERT WITH CHECK (state = 'queued' AND host IS NULL)",
    "CREATE POLICY jobs_change ON jobs FOR UPDATE "
    "USING ((host IS NULL AND state = 'queued') OR host = nixcell_host() OR nixcell_lost(host)) "
    "WITH CHECK (host IS NULL OR host = nixcell_host() OR nixcell_lost(host))",
    f"CREATE POLICY jobs_remove ON jobs FOR DELETE USING (state IN {TERMINAL_SQL} AND "
    "(host IS NULL OR host = nixcell_host() OR nixcell_lost(host)))",
    # a new job's first event comes in the statement that makes the job (not yet visible to
    # nixcell_may_write); every job has its seq 1 already, so this admits no other
    "CREATE POLICY events_write ON events FOR INSERT WITH CHECK (nixcell_may_note(job_id, kind, "
    "state) OR (seq = 1 AND kind = 'state' AND state = 'queued'))",
    # log lines and artifacts come only from the host running the job
    "CREATE POLICY logs_write ON logs FOR INSERT WITH CHECK (nixcell_runs(job_id))",
    "CREATE POLICY logs_mark ON logs FOR UPDATE USING (nixcell_runs(job_id))",
    "CREATE POLICY uploads_add ON uploads FOR INSERT WITH CHECK (true)",
    "CREATE POLICY artifacts_put ON artifacts FOR INSERT WITH CHECK (nixcell_runs(job_id))",
    "CREATE POLICY artifacts_again ON artifacts FOR UPDATE USING (nixcell_runs(job_id))",
    "CREATE POLICY cancels_ask ON cancels FOR INSERT WITH CHECK (true)",
    "CREATE POLICY cancels_take ON cancels FOR DELETE USING (nixcell_may_write(job_id))",
)


def role_of(host: str) -> str:
    """The database role of host ``host`` (a ``config.NAME``)."""
    from nixcell.jobs.config import NAME

    if not NAME.fullmatch(host) or len(ROLE_PREFIX + host) > 63:
        raise UsageError(f"host name {host!r}: letters, digits, '_', '.', '-' (at most 50)")
    return ROLE_PREFIX + host


def check_host(conn: Any, host: str | None, where: str) -> None:
    """At start: a host role must be ``host``'s own; any other role must own the tables."""
    mapped, owner = conn.execute(
        "SELECT nixcell_host(), (SELECT pg_get_userbyid(relowner) = current_user "
        "OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) "
        "FROM pg_class WHERE oid = 'public.jobs'::regclass)"
    ).fetchone()
    if mapped is not None and host is not None and mapped != host:
        raise StateError(
            f"job store {where}: this database role is host {mapped!r}'s, not {host!r} (host_name)"
        )
    if mapped is None and not owner:
        raise StateError(
            f"job store {where}: this database role is no host of the cluster "
            "(nixcell store add-host NAME makes one)"
        )


def add_host(conn: Any, host: str) -> tuple[str, str]:
    """Make (or give a new password to) ``host``'s role; (role, password). Run as a role that
    may create roles and owns the tables (the admin)."""
    from psycopg import sql

    role = role_of(host)
    password = secrets.token_urlsafe(24)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (GROUP,)).fetchone()
    if not exists:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(GROUP)))
    group = sql.Identifier(GROUP)
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in WRITABLE)
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(tables, group))
    conn.execute(sql.SQL("GRANT SELECT ON schema_version, host_roles, hosts TO {}").format(group))
    conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE jobs_id_seq TO {}").format(group))
    ident = sql.Identifier(role)
    # hashed here (SCRAM), so the clear password is in no statement a server may log
    hashed = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    verifier = sql.Literal(hashed.decode())
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(ident, verifier))
    else:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(ident, verifier, group)
        )
    conn.execute(
        "INSERT INTO host_roles (role, host) VALUES (%s, %s) ON CONFLICT (role) DO NOTHING",
        (role, host),
    )
    return role, password


def passfile_line(dsn_parts: dict[str, Any], role: str, password: str) -> str:
    """A libpq passfile line (``host:port:db:user:password``, ``:`` and ``\\`` escaped)."""

    def esc(text: object) -> str:
        return re.sub(r"([:\\])", r"\\\1", str(text))

    host = dsn_parts.get("host") or "localhost"
    port = dsn_parts.get("port") or "5432"
    db = dsn_parts.get("dbname") or "*"
    return ":".join(esc(x) for x in (host, port, db, role, password)) + "\n"
