"""A PostgreSQL server of the suite's own (issue 13): Debian's binaries (``./setup`` installs
``postgresql``), ``initdb`` into a temp dir, ``pg_ctl`` start/stop, loopback only.

PostgreSQL refuses to run as root, so as root the server runs as the dedicated system user
``nixcell-pg`` (created with ``useradd`` when missing) that owns the temp dir. It listens on
127.0.0.1 only, on a free random port, its unix socket in the temp dir; the superuser has a
password checked with SCRAM on TCP. ``fsync`` stays on: the tests check durability.

``pg_server`` (session) is the server; ``pg_dsn`` (function) is a fresh database per test,
dropped after it. ``PgServer.stop``/``start`` and ``terminate`` serve the reconnect tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

USER = "nixcell-pg"
SUPERUSER = "nixcell"


def binaries() -> str | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, or None."""
    found = [
        d
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.access(f"{d}/initdb", os.X_OK) and os.access(f"{d}/pg_ctl", os.X_OK)
    ]
    found.sort(key=lambda d: int(d.split("/")[-2]) if d.split("/")[-2].isdigit() else 0)
    return found[-1] if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) to run the server as: ``nixcell-pg`` as root (made when missing), else None
    (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--user-group", USER],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


class PgServer:
    def __init__(self, bindir: str) -> None:
        self.bindir = bindir
        self.top = tempfile.mkdtemp(prefix="suite-pg-", dir="/tmp")
        self.data = f"{self.top}/data"
        self.log = f"{self.top}/server.log"
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.ids = _run_as()
        if self.ids is not None:
            os.chown(self.top, *self.ids)
        os.chmod(self.top, 0o700)

    def _pg(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self.ids is not None:
            extra = {"user": self.ids[0], "group": self.ids[1], "extra_groups": []}
        return subprocess.run(
            [f"{self.bindir}/{tool}", *args],
            capture_output=True, text=True, cwd=self.top, check=check, timeout=120,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C", "HOME": self.top}, **extra,
        )  # fmt: skip

    def init(self) -> None:
        pwfile = f"{self.top}/pw"
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if self.ids is not None:
            os.chown(pwfile, *self.ids)
        os.chmod(pwfile, 0o600)
        self._pg(
            "initdb", "-D", self.data, "-U", SUPERUSER, f"--pwfile={pwfile}", "-E", "UTF8",
            "--locale=C", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
        )  # fmt: skip
        os.unlink(pwfile)

    def start(self) -> None:
        """Start (again) on a free port, or the port it had (a restart keeps DSNs valid)."""
        for _ in range(5):
            port = self.port or _free_port()
            with open(f"{self.data}/postgresql.auto.conf", "w") as f:
                f.write(
                    f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                    f"unix_socket_directories = '{self.top}'\nmax_connections = 200\n"
                    "fsync = on\nlog_min_messages = warning\n"
                )
            done = self._pg("pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log,
                            check=False)  # fmt: skip
            if done.returncode == 0:
                self.port = port
                return
            if self.port:  # a restart must get its port back
                time.sleep(0.5)
        raise RuntimeError(f"PostgreSQL did not start: {self.tail()}")

    def stop(self) -> None:
        self._pg("pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data, check=False)

    def tail(self) -> str:
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            return f.read()[-1500:]
        return "(no server log)"

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        return (
            f"postgresql://{SUPERUSER}:{password or self.password}@127.0.0.1:{self.port}/{dbname}"
        )

    def admin(self, sql: str, *args: Any, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (autocommit) and return its rows."""
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            cur = conn.execute(sql, args or None)
            return cur.fetchall() if cur.description else []

    def create_db(self) -> str:
        name = f"t_{secrets.token_hex(6)}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def drop_db(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def terminate(self, pid: int) -> bool:
        """pg_terminate_backend of one backend (a dropped connection), waiting until it is gone."""
        [(done,)] = self.admin("SELECT pg_terminate_backend(%s, 10000)", pid)
        return bool(done)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = binaries()
    if bindir is None:
        reason = "needs PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql/*/bin): run ./setup"
        print(f"skipped: {reason}")
        pytest.skip(reason)
    server = PgServer(bindir)
    try:
        server.init()
        server.start()
    except BaseException:
        server.cleanup()
        raise
    yield server
    server.cleanup()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh database of its own for this test, dropped after it."""
    if not _answers(pg_server):
        pg_server.start()  # a test stopped it and failed before starting it again
    name = pg_server.create_db()
    yield pg_server.dsn(name)
    if not _answers(pg_server):
        pg_server.start()
    pg_server.drop_db(name)


def _answers(server: PgServer) -> bool:
    done = server._pg("pg_isready", "-q", "-h", "127.0.0.1", "-p", str(server.port), check=False)
    return done.returncode == 0
