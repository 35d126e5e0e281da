"""Hosts with their own database roles (issue 13, security): row-level security holds a host to
the jobs it claimed, against a real PostgreSQL, attacked from several sides: through PgStore's
own methods, through raw SQL as the host's role, and through real daemons.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import psycopg
import pytest
from tests.conftest import NIXCELL
from tests.integration.clusterrig import cluster, wait_until  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture

from nixcell.errors import StateError
from nixcell.jobs.model import ACTIVE
from nixcell.jobs.pgstore import PgStore

pytestmark = [pytest.mark.integration]

KEY = secrets.token_bytes(32)
REFUSALS = ("row-level security", "permission denied", "never change", "changes only")
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}


def _add_host(admin: str, name: str, passfile: str) -> str:
    """``nixcell store add-host`` (the real CLI); the host's store URI it prints."""
    out = subprocess.run(
        [NIXCELL, "store", "add-host", name, "--store", admin, "--passfile", passfile],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 2, out.stdout
    uri = out.stdout.split('store = "', 1)[1].split('"', 1)[0]
    with open(passfile, encoding="utf-8") as f:
        secret = f.read().strip().rsplit(":", 1)[1]
    assert secret not in out.stdout + out.stderr  # the password only in the passfile
    assert os.stat(passfile).st_mode & 0o777 == 0o600
    return uri


@pytest.fixture
def roles(pg_server, pg_dsn, tmp_path):
    """Migrated database with hosts w1 and w2: (admin URI, {host: URI})."""
    out = subprocess.run(
        [NIXCELL, "store", "migrate", "--store", pg_dsn], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    passfile = str(tmp_path / "pgpass")
    uris = {name: _add_host(pg_dsn, name, passfile) for name in ("w1", "w2")}
    yield pg_dsn, uris
    for name in ("w1", "w2"):  # roles are cluster-wide: leave none behind
        pg_server.admin(f'DROP OWNED BY "nixcell_host_{name}"', dbname=pg_dsn.rsplit("/", 1)[1])
        pg_server.admin(f'DROP ROLE IF EXISTS "nixcell_host_{name}"')


def _sql(uri: str, statement: str, *args: object) -> int:
    with psycopg.connect(uri, autocommit=True) as conn:
        return conn.execute(statement, args or None).rowcount


def test_a_host_changes_only_jobs_it_claimed(roles) -> None:
    _, uri = roles
    s1, s2 = PgStore(uri["w1"], key=KEY, host="w1"), PgStore(uri["w2"], key=KEY, host="w2")
    try:
        s1.heartbeat("w1", concurrency=1, running=0)
        s2.heartbeat("w2", concurrency=1, running=0)
        mine = s1.create("uid:1", "alice", {"command": ["true"]}, target="w1")
        queued = s2.create("uid:1", "alice", {"command": ["true"]}, target="w1")
        claimed = s1.claim("w1")
        assert claimed is not None and claimed.id == mine.id and claimed.host == "w1"
        # through the store's own methods: w2 cannot move, end, log into or cancel-take it
        assert s2.transition(mine.id, "error", expect=ACTIVE, reason="stolen") is None
        with pytest.raises(StateError):
            s2.append_logs(mine.id, [("stdout", "forged")])
        with pytest.raises(StateError):
            s2.put_artifacts(mine.id, b"forged")
        with pytest.raises(StateError):  # claiming as another host is refused by the database
            s2.claim("w1")
        s2.request_cancel(mine.id, "asked")  # asking is anyone's right
        assert s2.take_cancels("w1") == []  # taking it is w1's
        assert s1.take_cancels("w1") == [(mine.id, "asked")]
        # through raw SQL as w2's role
        for statement in (
            "UPDATE jobs SET state = 'error' WHERE id = %s",
            "UPDATE jobs SET host = 'w2' WHERE id = %s",
            "DELETE FROM jobs WHERE id = %s",
            "DELETE FROM cancels WHERE job_id = %s",
        ):
            assert _sql(uri["w2"], statement, mine.id) == 0, statement
        for statement, args in (
            ("INSERT INTO logs (job_id, seq, time, stream, text) VALUES (%s, 99, 0, 'stdout', "
             "'x')", (mine.id,)),
            ("INSERT INTO events (job_id, seq, time, kind) VALUES (%s, 99, 0, 'x')", (mine.id,)),
            ("INSERT INTO hosts (name, seen, started, concurrency, running) VALUES "
             "('w1', 0, 0, 1, 0)", ()),
            ("UPDATE hosts SET seen = 0 WHERE name = %s", ("w1",)),
            ("UPDATE jobs SET request = '{}' WHERE id = %s", (queued.id,)),
            ("UPDATE jobs SET owner = 'uid:0' WHERE id = %s", (queued.id,)),
            ("UPDATE jobs SET target = 'w2' WHERE id = %s", (queued.id,)),
            ("INSERT INTO jobs (owner, owner_name, request, state, created, host) VALUES "
             "('u', 'u', '{}', 'running', 0, 'w1')", ()),
            ("CREATE TABLE x (y int)", ()),
            ("UPDATE schema_version SET version = 99", ()),
        ):  # fmt: skip
            try:
                changed = _sql(uri["w2"], statement, *args)
            except psycopg.Error as exc:  # refused for the right reason, not a typo's
                assert any(why in str(exc) for why in REFUSALS), (statement, str(exc))
                continue
            assert changed == 0, statement
        again = s1.get(mine.id)
        assert (again.state, again.host, again.log_lines) == ("preparing", "w1", 0)
        assert s1.get(queued.id).request == {"command": ["true"]}
        # w1 itself moves its own job as ever
        assert s1.transition(mine.id, "running", expect=("preparing",), host="w1") is not None
    finally:
        s1.close()
        s2.close()


def test_a_lost_hosts_jobs_are_ended_by_another_host_only_once_it_is_lost(roles) -> None:
    _, uri = roles
    s1, s2 = PgStore(uri["w1"], key=KEY, host="w1"), PgStore(uri["w2"], key=KEY, host="w2")
    try:
        s1.heartbeat("w1", concurrency=1, running=1)
        job = s1.create("uid:1", "alice", {"command": ["true"]})
        assert s1.claim("w1").id == job.id
        assert s2.reap_lost(60) == []  # w1 beats: nothing to reap
        assert _sql(uri["w2"], "UPDATE jobs SET state = 'error' WHERE id = %s", job.id) == 0
        time.sleep(3.5)  # past LOST_AFTER by the database's clock
        [lost] = s2.reap_lost(3.0)
        assert (lost.id, lost.state, lost.reason) == (job.id, "error", "host lost")
    finally:
        s1.close()
        s2.close()


def test_a_role_is_its_own_host_or_refused_at_start(roles, pg_server, pg_dsn) -> None:
    _, uri = roles
    with pytest.raises(StateError, match="host 'w2''s, not 'w1'"):
        PgStore(uri["w2"], key=KEY, host="w1")
    stranger = f"stranger_{secrets.token_hex(3)}"
    pg_server.admin(f"CREATE ROLE {stranger} LOGIN PASSWORD 'pw-{stranger}'")
    try:
        db = pg_dsn.rsplit("/", 1)[1]
        pg_server.admin(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {stranger}", dbname=db)
        plain = f"postgresql://{stranger}:pw-{stranger}@127.0.0.1:{pg_server.port}/{db}"
        with pytest.raises(StateError, match="no host of the cluster") as caught:
            PgStore(plain, key=KEY, host="w1")
        assert f"pw-{stranger}" not in str(caught.value)
        pg_server.admin(f"DROP OWNED BY {stranger}", dbname=db)
    finally:
        pg_server.admin(f"DROP ROLE {stranger}")


def test_a_host_role_does_not_migrate_and_says_who_must(roles, pg_server, pg_dsn) -> None:
    _, uri = roles
    db = pg_dsn.rsplit("/", 1)[1]
    pg_server.admin("UPDATE schema_version SET version = 1", dbname=db)
    with pytest.raises(StateError, match="nixcell store migrate"):
        PgStore(uri["w1"], key=KEY, host="w1")


def test_daemons_with_their_own_roles_run_cancel_and_reap(cluster, roles) -> None:  # noqa: F811
    _, uri = roles
    c = cluster(0)
    for name in ("w1", "w2"):
        c.add(name, dsn=uri[name])
    jobs = [c.submit("w1", {"packages": ["bash"], "command": ["bash", "-c", f"exit {i}"],
                            "on_host": ("w1", "w2")[i % 2]}) for i in range(6)]  # fmt: skip
    for i, job in enumerate(jobs):
        done = c.wait("w2", job["id"], TERMINAL)
        assert (done["exit_code"], done["host"]) == (i, ("w1", "w2")[i % 2]), done
    sleeper = c.submit(
        "w1", {"packages": ["bash", "coreutils"], "command": ["sleep", "600"], "on_host": "w2"}
    )
    c.wait("w1", sleeper["id"], {"running"})
    assert c["w1"].cli("cancel", str(sleeper["id"])).returncode == 0
    assert c.job("w1", sleeper["id"])["state"] == "cancelled"
    held = c.submit(
        "w2", {"packages": ["bash", "coreutils"], "command": ["sleep", "600"], "on_host": "w1"}
    )
    c.wait("w2", held["id"], {"running"})
    c.kill("w1")
    lost = c.wait("w2", held["id"], TERMINAL, wait=60)
    assert (lost["state"], lost["reason"]) == ("error", "host lost"), lost
