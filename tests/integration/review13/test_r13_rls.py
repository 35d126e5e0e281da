"""Review of issue 13 (outside reviewer): a host role (``nixcell store add-host``) attacking jobs
it did not claim, through raw SQL as that role. Each test asserts what the issue promises ("a
host can update only jobs it claimed"); a failing test is a finding."""

from __future__ import annotations

import contextlib
import json
import time

import psycopg
import pytest
from tests.integration.test_scaleout_roles import KEY, _sql, roles  # noqa: F401 - fixture

from nixcell.jobs.pgstore import PgStore

pytestmark = [pytest.mark.integration]

EVIL = json.dumps({"command": ["sh", "-c", "echo pwned-by-w2"]})


def _try(uri: str, statement: str, *args: object) -> int:
    """Rows changed, or 0 when the database refused the statement."""
    try:
        return _sql(uri, statement, *args)
    except psycopg.Error:
        return 0


@pytest.fixture
def stores(roles):  # noqa: F811
    _, uri = roles
    s1, s2 = PgStore(uri["w1"], key=KEY, host="w1"), PgStore(uri["w2"], key=KEY, host="w2")
    s1.heartbeat("w1", concurrency=1, running=0)
    s2.heartbeat("w2", concurrency=1, running=0)
    yield s1, s2, uri
    s1.close()
    s2.close()


def test_a_host_cannot_rewrite_a_queued_jobs_request_and_put_it_back(stores) -> None:
    """w2 claims alice's job pinned to w1, "ends" it with a new request, re-queues it: w1 then
    runs w2's command as alice (with w1's credentials)."""
    s1, _, uri = stores
    job = s1.create("uid:1", "alice", {"command": ["true"]}, target="w1")
    steps = (
        "UPDATE jobs SET state = 'succeeded', host = 'w2', request = %s WHERE id = %s",
        "UPDATE jobs SET state = 'queued', host = NULL WHERE id = %s",
    )
    _try(uri["w2"], steps[0], EVIL, job.id)
    _try(uri["w2"], steps[1], job.id)
    claimed = s1.claim("w1")
    assert claimed is None or claimed.request == {"command": ["true"]}, claimed.request


def test_a_host_cannot_claim_a_job_pinned_to_another_host(stores) -> None:
    s1, _, uri = stores
    job = s1.create("uid:1", "alice", {"command": ["true"]}, target="w1")
    changed = _try(
        uri["w2"], "UPDATE jobs SET state = 'preparing', host = 'w2' WHERE id = %s", job.id
    )
    assert changed == 0 and s1.get(job.id).host is None


def test_a_host_cannot_delete_another_hosts_finished_job(stores) -> None:
    s1, _, uri = stores
    job = s1.create("uid:1", "alice", {"command": ["true"]})
    assert s1.claim("w1").id == job.id
    s1.transition(job.id, "succeeded", expect=["preparing"], host="w1", exit_code=0)
    assert _try(uri["w2"], "DELETE FROM jobs WHERE id = %s", job.id) == 0
    assert s1.get(job.id) is not None


def test_a_host_cannot_write_into_a_job_nobody_claimed(stores) -> None:
    """A queued job (or one cancelled while queued: host NULL) takes forged log lines, events
    and artifacts from any host."""
    s1, _, uri = stores
    queued = s1.create("uid:1", "alice", {"command": ["true"]}, target="w1")
    gone = s1.create("uid:1", "alice", {"command": ["true"]})
    s1.transition(gone.id, "cancelled", expect=["queued"], reason="cancelled by alice")
    forged = 0
    for job_id in (queued.id, gone.id):
        forged += _try(
            uri["w2"],
            "INSERT INTO logs (job_id, seq, time, stream, text) VALUES "
            "(%s, 1, 0, 'stdout', 'forged by w2')",
            job_id,
        )
        forged += _try(
            uri["w2"],
            "INSERT INTO events (job_id, seq, time, kind, detail) VALUES "
            "(%s, 50, 0, 'note', 'forged by w2')",
            job_id,
        )
        forged += _try(uri["w2"], "INSERT INTO artifacts (job_id, data) VALUES (%s, 'x')", job_id)
    assert forged == 0, [line.text for line in s1.logs(gone.id)]


def test_a_host_cannot_rerun_or_rewrite_a_finished_job_of_a_stopped_host(stores) -> None:
    """Once w1 stops heartbeating (3 s by the database's clock), w2 may change *every* job w1
    ever ran, finished ones too: re-queue a succeeded job, forge its exit code."""
    s1, _, uri = stores
    job = s1.create("uid:1", "alice", {"command": ["true"]})
    assert s1.claim("w1").id == job.id
    s1.transition(job.id, "succeeded", expect=["preparing"], host="w1", exit_code=0)
    time.sleep(3.5)
    changed = _try(uri["w2"], "UPDATE jobs SET exit_code = 99 WHERE id = %s", job.id)
    changed += _try(
        uri["w2"], "UPDATE jobs SET state = 'queued', host = NULL WHERE id = %s", job.id
    )
    again = s1.get(job.id)
    assert changed == 0 and (again.state, again.exit_code) == ("succeeded", 0), again


def test_a_host_cannot_reset_its_attempts_past_retry(stores) -> None:
    s1, s2, uri = stores
    job = s1.create("uid:1", "alice", {"command": ["true"]}, retries=1)
    assert s2.claim("w2").id == job.id
    assert _try(uri["w2"], "UPDATE jobs SET attempts = 0 WHERE id = %s", job.id) == 0


def test_a_host_cannot_take_or_read_another_owners_upload(stores) -> None:
    s1, _, uri = stores
    s1.put_upload("up-alice", "uid:1", b"alice's workspace tar")
    with psycopg.connect(uri["w2"], autocommit=True) as conn:
        seen = conn.execute("SELECT data FROM uploads WHERE id = 'up-alice'").fetchall()
    removed = _try(uri["w2"], "DELETE FROM uploads WHERE id = 'up-alice'")
    assert (seen, removed) == ([], 0), (seen, removed)


def test_security_definer_functions_with_odd_arguments(stores) -> None:
    """They answer booleans/NULL and never raise or let a caller choose a role (held)."""
    _, _, uri = stores
    with psycopg.connect(uri["w2"], autocommit=True) as conn:
        row = conn.execute(
            "SELECT nixcell_host(), nixcell_lost(NULL), nixcell_lost(''), "
            "nixcell_lost(repeat('x', 100000)), nixcell_may_write(NULL), "
            "nixcell_may_write(-1), nixcell_may_write(9223372036854775807)"
        ).fetchone()
        conn.execute("CREATE TEMP TABLE host_roles (role text, host text)")
        conn.execute("INSERT INTO pg_temp.host_roles VALUES (session_user, 'w1')")
        conn.execute("CREATE TEMP TABLE hosts (name text, seen float8)")
        mapped = conn.execute("SELECT nixcell_host()").fetchone()[0]
    assert row == ("w2", False, True, True, False, False, False), row
    assert mapped == "w2"


def test_a_host_cannot_make_a_live_host_look_lost_by_locking_hosts(stores) -> None:
    """w1 heartbeats every 0.2 s. w2's role holds ``LOCK TABLE hosts`` (it has UPDATE on it, and
    LOCK checks only table privileges): w1's heartbeats block, and 3.5 s later, in the same
    transaction, row-level security lets w2 end w1's running job."""
    import threading

    s1, _, uri = stores
    job = s1.create("uid:1", "alice", {"command": ["true"]})
    assert s1.claim("w1").id == job.id
    s1.transition(job.id, "running", expect=["preparing"], host="w1")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(0.2):
            with contextlib.suppress(Exception):
                s1.heartbeat("w1", concurrency=1, running=1)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        with psycopg.connect(uri["w2"]) as conn:
            try:
                conn.execute("LOCK TABLE hosts IN EXCLUSIVE MODE")
                time.sleep(3.5)
                stolen = conn.execute(
                    "UPDATE jobs SET state = 'error', reason = 'host lost' WHERE host = 'w1' "
                    "AND state = 'running'"
                ).rowcount
                conn.commit()
            except psycopg.Error:
                stolen = 0
    finally:
        stop.set()
        beater.join(10)
    assert stolen == 0 and s1.get(job.id).state == "running", s1.get(job.id)
