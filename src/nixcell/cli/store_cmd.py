"""``nixcell store``: the admin's side of a cluster's PostgreSQL job store (docs/scale-out.md).

``migrate`` brings the schema to this nixcell's version as the database's owner (hosts log in
with roles that may not change it); ``add-host`` gives a host its own role, held by row-level
security to the jobs it claims (``jobs/pgroles.py``), its password written to a libpq passfile
(0600) — never printed, never on a command line; ``hosts`` lists the hosts and their heartbeats.
"""

from __future__ import annotations

import click

STORE = click.option(
    "--store",
    "uri",
    required=True,
    metavar="postgresql://...",
    help="The database, as its owner (a libpq URI; a passfile= for the password).",
)


@click.group("store")
def store() -> None:
    """The cluster's PostgreSQL job store: schema, host roles, hosts."""


def _connect(uri: str):
    from nixcell.errors import UsageError
    from nixcell.jobs.config import is_postgres, store_problem
    from nixcell.jobs.pgconn import Pool

    if not is_postgres(uri) or store_problem(uri):
        raise UsageError("--store: a postgresql:// URI")
    pool = Pool(uri, size=1)
    return pool, pool.connect()


@store.command("migrate")
@STORE
def migrate(uri: str) -> int:
    """Apply the schema migrations this nixcell knows (a newer schema is refused)."""
    from nixcell.jobs import pgschema

    pool, conn = _connect(uri)
    try:
        found = pgschema.migrate(conn, pool.shown)
    except Exception as exc:
        raise _error(pool, "cannot migrate", exc) from None
    finally:
        conn.close()
    if found == pgschema.SCHEMA_VERSION:
        click.echo(f"{pool.shown}: schema version {found}, nothing to do")
    else:
        click.echo(f"{pool.shown}: schema version {found} -> {pgschema.SCHEMA_VERSION}")
    return 0


@store.command("add-host")
@click.argument("name")
@STORE
@click.option(
    "--passfile",
    required=True,
    metavar="FILE",
    help="The libpq passfile to add the host's password to (made 0600; give it to the host).",
)
def add_host(name: str, uri: str, passfile: str) -> int:
    """Give host NAME its own database role (a new password if it has one)."""
    import psycopg.conninfo

    from nixcell.jobs import pgroles, pgschema

    pool, conn = _connect(uri)
    try:
        pgschema.migrate(conn, pool.shown)
        role, password = pgroles.add_host(conn, name)
        conn.commit()
    except Exception as exc:
        raise _error(pool, f"cannot add host {name}", exc) from None
    finally:
        conn.close()
    parts = psycopg.conninfo.conninfo_to_dict(uri)
    _write_passfile(passfile, role, pgroles.passfile_line(parts, role, password))
    host = parts.get("host") or "localhost"
    port = f":{parts['port']}" if parts.get("port") else ""
    click.echo(f"host {name}: role {role}, password in {passfile}")
    click.echo(
        f'its [server] store = "postgresql://{role}@{host}{port}/{parts.get("dbname", "")}'
        f'?passfile={passfile}"'
    )
    return 0


@store.command("hosts")
@STORE
def hosts(uri: str) -> int:
    """The cluster's hosts: last heartbeat, concurrency, running jobs."""
    pool, conn = _connect(uri)
    try:
        rows = conn.execute(
            "SELECT name, extract(epoch FROM clock_timestamp())::float8 - seen, concurrency, "
            "running FROM hosts ORDER BY name"
        ).fetchall()
    except Exception as exc:
        raise _error(pool, "cannot list hosts", exc) from None
    finally:
        conn.close()
    click.echo(f"{'HOST':<20} {'SEEN':>10} {'SLOTS':>6} {'RUNNING':>8}")
    for name, age, slots, running in rows:
        click.echo(f"{name:<20} {age:>8.1f}s {slots:>6} {running:>8}")
    return 0


def _error(pool, what: str, exc: BaseException):
    from nixcell.errors import NixcellError

    if isinstance(exc, NixcellError):
        return exc
    return pool.error(what, exc)


def _write_passfile(path: str, role: str, line: str) -> None:
    """Add (or replace) ``role``'s line; the file is written whole and atomically, 0600, and
    a link at the path is refused, not followed."""
    import os

    from nixcell.errors import StateError
    from nixcell.fsio import write_atomic

    kept = []
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except OSError as exc:
        raise StateError(f"cannot use passfile {path}: {exc.strerror}") from None
    if fd is not None:
        with os.fdopen(fd, encoding="utf-8") as f:
            for old in f:
                fields = old.rstrip("\n").split(":")
                if len(fields) >= 5 and fields[3] == role:
                    continue
                kept.append(old if old.endswith("\n") else old + "\n")
    write_atomic(path, "".join([*kept, line]), mode=0o600, durable=True)
