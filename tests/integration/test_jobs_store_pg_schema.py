"""PgStore's schema migrations, its connection errors (never the password), NOTIFY and
LISTEN across dropped connections, on a real PostgreSQL."""

from __future__ import annotations

import os
import queue

import psycopg
import pytest
from tests.storecontract.contract_races import together
from tests.storecontract.postgres import pg_make_store  # noqa: F401 - the fixture

from nixcell.errors import StateError
from nixcell.jobs import pgschema
from nixcell.jobs.pgstore import PgStore

KEY = os.urandom(32)
TABLES = {
    "jobs", "events", "logs", "hosts", "uploads", "artifacts", "cancels", "schema_version",
    "host_roles",
}  # fmt: skip


def _rows(dsn: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def test_an_empty_database_is_migrated_to_the_current_version(pg_dsn: str) -> None:
    assert _rows(pg_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
    PgStore(pg_dsn, key=KEY).close()
    tables = {t for (t,) in _rows(pg_dsn, "SELECT tablename FROM pg_tables WHERE "
                                          "schemaname = 'public'")}  # fmt: skip
    assert tables == TABLES
    assert _rows(pg_dsn, "SELECT version FROM schema_version") == [(pgschema.SCHEMA_VERSION,)]
    indexes = {i for (i,) in _rows(pg_dsn, "SELECT indexname FROM pg_indexes WHERE "
                                           "tablename = 'jobs'")}  # fmt: skip
    assert {"jobs_state", "jobs_owner", "jobs_finished", "jobs_queued_target",
            "jobs_active_host"} <= indexes  # fmt: skip
    PgStore(pg_dsn, key=KEY).close()  # opening again changes nothing
    assert _rows(pg_dsn, "SELECT version FROM schema_version") == [(pgschema.SCHEMA_VERSION,)]


def test_a_newer_schema_is_refused_and_left_alone(pg_dsn: str) -> None:
    store = PgStore(pg_dsn, key=KEY)
    store.create("u", "u", {})
    store.close()
    newer = pgschema.SCHEMA_VERSION + 1
    _rows(pg_dsn, "UPDATE schema_version SET version = %s", newer)
    with pytest.raises(StateError) as err:
        PgStore(pg_dsn, key=KEY)
    message = str(err.value)
    assert "\n" not in message and f"version {newer}" in message
    assert f"up to {pgschema.SCHEMA_VERSION}" in message and "newer nixcell" in message
    assert _rows(pg_dsn, "SELECT version FROM schema_version") == [(newer,)]
    assert _rows(pg_dsn, "SELECT count(*) FROM jobs") == [(1,)]


def test_hosts_starting_at_once_migrate_once(pg_dsn: str) -> None:
    def open_one(_: int) -> int:
        conn = psycopg.connect(pg_dsn)
        try:
            return pgschema.migrate(conn)
        finally:
            conn.close()

    found = together(6, open_one)
    assert sorted(found) == [0] + [pgschema.SCHEMA_VERSION] * 5  # one migrated, five saw it done
    stores = together(4, lambda _: PgStore(pg_dsn, key=KEY))
    assert all(isinstance(s, PgStore) for s in stores)
    for s in stores:
        s.close()
    assert _rows(pg_dsn, "SELECT version FROM schema_version") == [(pgschema.SCHEMA_VERSION,)]


def _dsn_with(pg_server, password: str, **parts: str) -> str:
    port = parts.get("port", str(pg_server.port))
    return f"postgresql://nixcell:{password}@127.0.0.1:{port}/{parts.get('db', 'postgres')}"


def test_connection_errors_are_one_line_without_the_password(pg_server, pg_dsn) -> None:
    secret = "pw-Zq8Tt1-not-shown"
    cases = {
        "a wrong password": _dsn_with(pg_server, secret),
        "no server on the port": _dsn_with(pg_server, secret, port="1"),
        "an unreadable port": _dsn_with(pg_server, secret, port="notaport"),
        "an unknown option": f"host=127.0.0.1 password={secret} bogus_option=1",
        "a missing database": _dsn_with(pg_server, pg_server.password, db="no_such_db"),
        "a DSN libpq quotes back": f"postgresql://nixcell:{secret}@[::1:5432/x",
        "a quoted password": f"host=127.0.0.1 port=1 password='{secret}' sslmode=bogus",
    }
    for what, dsn in cases.items():
        with pytest.raises(StateError) as err:
            PgStore(dsn, key=KEY)
        message = str(err.value)
        assert secret not in message and pg_server.password not in message, what
        assert "\n" not in message and message.startswith("job store "), what
        assert err.value.__cause__ is None and err.value.__suppress_context__, what


def test_a_server_restart_costs_a_store_no_more_than_the_calls_while_it_is_down(
    pg_server, pg_dsn
) -> None:
    store = PgStore(pg_dsn, key=KEY)
    job = store.create("u", "u", {})
    pg_server.stop()
    try:
        with pytest.raises(StateError) as err:
            store.get(job.id)
        assert pg_server.password not in str(err.value) and "\n" not in str(err.value)
    finally:
        pg_server.start()
    assert store.get(job.id) == job  # a fresh connection: no error left over
    assert store.create("u", "u", {}).id == job.id + 1
    store.close()


def test_a_terminated_backend_is_replaced_in_the_pool(pg_server, pg_dsn) -> None:
    store = PgStore(pg_dsn, key=KEY)
    with store._conn() as conn:
        pid = conn.info.backend_pid
    assert pg_server.terminate(pid)
    results = [store.create("u", "u", {}).id for _ in range(3)]  # pinged or replaced
    assert results == [1, 2, 3]
    store.close()


def _listen(store: PgStore) -> tuple[queue.Queue, object]:
    got: queue.Queue = queue.Queue()
    handle = store.listen(lambda kind, rest: got.put((kind, rest)))
    return got, handle


def _next(got: queue.Queue) -> tuple[str, str]:
    return got.get(timeout=30)  # a bound for a lost notification, not a timing claim


def test_changes_notify_listeners_of_other_stores(make_store) -> None:
    a, b = make_store(), make_store()
    got, _ = _listen(b)
    job = a.create("u", "u", {}, target="h2")
    assert [_next(got), _next(got)] == [("q", f"{job.id} h2"), ("e", f"{job.id} 1 -")]
    a.claim("h2")
    assert _next(got) == ("e", f"{job.id} 2 h2")
    assert a.append_logs(job.id, [("stdout", "x"), ("stdout", "y")]) == 2
    assert _next(got) == ("l", f"{job.id} 2")
    a.request_cancel(job.id, "by u")
    assert _next(got) == ("c", f"{job.id}")
    a.add_event(job.id, "attach", "by u")
    assert _next(got) == ("e", f"{job.id} 3 h2")
    assert got.empty()


def test_a_rolled_back_change_notifies_nothing(make_store) -> None:
    a = make_store()
    got, _ = _listen(a)
    with pytest.raises(StateError, match="no job 77"):
        a.add_event(77, "attach")
    with pytest.raises(RuntimeError), a._tx() as conn:
        conn.execute("SELECT pg_notify('nixcell', 'e 1 1 -')")
        raise RuntimeError("rolled back")
    job = a.create("u", "u", {})  # the first notification that arrives is this one's
    assert _next(got) == ("q", f"{job.id} -")


def test_listen_reconnects_after_its_connection_is_terminated(pg_server, make_store) -> None:
    store = make_store()
    got, handle = _listen(store)
    first = handle.backend_pid()
    assert pg_server.terminate(first)
    assert _next(got) == ("r", "")  # told to read again: it may have missed some
    assert handle.backend_pid() != first and handle.reconnects == 1
    job = store.create("u", "u", {})
    assert _next(got) == ("q", f"{job.id} -")
    handle.stop()


def test_listen_outlives_a_server_restart(pg_server, make_store) -> None:
    store = make_store()
    got, _ = _listen(store)
    pg_server.stop()
    pg_server.start()
    assert _next(got) == ("r", "")
    job = store.create("u", "u", {})
    assert _next(got) == ("q", f"{job.id} -")


def test_a_listener_callback_that_fails_does_not_end_listening(make_store) -> None:
    store = make_store()
    got: queue.Queue = queue.Queue()

    def callback(kind: str, rest: str) -> None:
        got.put((kind, rest))
        raise ValueError("a bug in the service")

    store.listen(callback)
    store.create("u", "u", {})
    store.create("u", "u", {})
    assert [_next(got)[0] for _ in range(4)] == ["q", "e", "q", "e"]
