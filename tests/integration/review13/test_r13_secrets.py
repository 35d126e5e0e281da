"""Review of issue 13 (outside reviewer): secrets of a cluster (a job's secret env values, the
store's password, host roles' passwords) in the database, its log, and messages."""

from __future__ import annotations

import os
import subprocess

import psycopg
import pytest
from tests.conftest import NIXCELL
from tests.integration.clusterrig import cluster  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture

from nixcell.errors import StateError
from nixcell.jobs.pgstore import PgStore

pytestmark = [pytest.mark.integration]

SECRET = "r13-secret-9f3e1c77a0"
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}


def _dump(dsn: str) -> str:
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        for table in tables:
            for (row,) in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t"):
                out.append(row)
        out += [str(r) for r in conn.execute("SELECT query FROM pg_stat_activity")]
    return "\n".join(out)


def test_a_jobs_secret_env_is_nowhere_in_the_database_or_logs(cluster, pg_dsn, pg_server) -> None:  # noqa: F811
    c = cluster(2)
    job = c.submit(
        "w1",
        {
            "packages": ["coreutils"],
            "command": ["sleep", "2"],
            "on_host": "w2",
            "env": {"TOKEN": SECRET},
            "secret_env": ["TOKEN"],
        },
    )
    seen = [_dump(pg_dsn)]
    c.wait("w1", job["id"], {"running"}, wait=120)
    seen.append(_dump(pg_dsn))
    c.wait("w1", job["id"], TERMINAL, wait=120)
    seen.append(_dump(pg_dsn))
    pg_server.admin("CHECKPOINT")
    seen += [pg_server.tail(), c["w1"].log(), c["w2"].log()]
    for name in ("w1", "w2"):
        seen.append(str(c.job(name, job["id"])))
    assert not [s for s in seen if SECRET in s]


def test_add_host_never_sends_the_password_in_clear_sql(pg_server, pg_dsn, tmp_path) -> None:
    """With statement logging (a common audit setting) the server log must not get the host's
    password: libpq can hash it client side (PQencryptPasswordConn)."""
    db = pg_dsn.rsplit("/", 1)[1]
    pg_server.admin(f"ALTER DATABASE {db} SET log_statement = 'ddl'")
    passfile = str(tmp_path / "pgpass")
    done = subprocess.run(
        [NIXCELL, "store", "add-host", "r13h", "--store", pg_dsn, "--passfile", passfile],
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        assert done.returncode == 0, done.stderr
        with open(passfile) as f:
            password = f.read().strip().rsplit(":", 1)[1]
        with open(pg_server.log, errors="replace") as f:
            log = f.read()
        assert password not in log, [line for line in log.splitlines() if password in line]
    finally:
        pg_server.admin('DROP OWNED BY "nixcell_host_r13h"', dbname=db)
        pg_server.admin('DROP ROLE IF EXISTS "nixcell_host_r13h"')


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://u@127.0.0.1:1/db?password=PW%zzR13SECRET&sslmode=disable",
        "postgresql://u@127.0.0.1:1/db?sslmode=disable&password=PW%zzR13SECRET&application_name=x",
    ],
)
def test_store_errors_never_hold_a_query_password(uri: str) -> None:
    with pytest.raises(StateError) as caught:
        PgStore(uri, key=b"k" * 32)
    assert "R13SECRET" not in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://u@127.0.0.1:1/db?password=R13SECRET&x=a b",
        "postgresql://u@127.0.0.1:1/db?password=R13SECRET\t",
        "postgresql://u:R13SECRET@127.0.0.1:1/db ",
    ],
)
def test_serve_store_flag_errors_never_hold_the_password(uri: str, tmp_path) -> None:
    done = subprocess.run(
        [
            NIXCELL,
            "serve",
            "--store",
            uri,
            "--state-dir",
            str(tmp_path / "s"),
            "--listen",
            f"unix:{tmp_path}/s.sock",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode != 0
    assert "R13SECRET" not in done.stdout + done.stderr, done.stderr
