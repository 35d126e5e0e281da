"""Review of issue 13's host cache (outside reviewer, part c): ``via_cache`` comes from the
database row. Whoever can insert a job (a host role; docs: a host role may "submit jobs in any
owner's name") names the cache a worker sends the cluster's password to. The password is
derived from ``store_key``, which the database does not hold (secrets are sealed with it
precisely so that database access is not enough): one row turns database access into read
access to every host's cache."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
from tests.integration.clusterrig import cluster, wait_until  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.review13c.rig import auth_cache, basic, password

pytestmark = [pytest.mark.integration, pytest.mark.root]


def test_a_via_cache_written_into_the_database_gets_no_password(cluster, tmp_path) -> None:  # noqa: F811
    """Expected: a worker sends the cluster's password only to a cluster host's cache (e.g. a
    ``cache_url`` the hosts' heartbeats announce, or a password bound to each cache URL).
    Found: a row naming any ``http://…/nix-cache`` makes the worker's nix send
    ``nixcell:PASSWORD`` there (a netrc entry for that host)."""
    c = cluster(0)
    c.add("w1", cache=False, serve_cache=True)  # a real cache, whose password must not leak
    c.add("w2", cache=False)
    with auth_cache(tmp_path, "x", "y") as evil:  # records what it is sent; serves nothing
        seed = c.submit("w2", {"packages": ["bash"], "command": ["true"], "on_host": "w2"})
        c.wait("w2", seed["id"], {"succeeded", "failed", "error"})
        with psycopg.connect(c.dsn, autocommit=True) as db:
            row = db.execute("SELECT owner, owner_name, request FROM jobs WHERE id = %s",
                             (seed["id"],)).fetchone()  # fmt: skip
            assert row is not None
            request = json.loads(row[2])
            request["via_cache"] = evil.url + "/nix-cache"
            request["packages"] = ["gnugrep"]  # (not in w2's root yet: nix asks the caches)
            new = db.execute(
                "INSERT INTO jobs (owner, owner_name, request, state, created, target) "
                "VALUES (%s, %s, %s, 'queued', %s, 'w2') RETURNING id",
                (row[0], row[1], json.dumps(request), time.time()),
            ).fetchone()[0]  # fmt: skip
            db.execute("SELECT pg_notify('nixcell', %s)", (f"q {new} w2",))
        c.wait("w2", new, {"succeeded", "failed", "error", "cancelled"})
        leaked = basic("nixcell", password(c.key, c["w1"]))
        assert leaked not in evil.seen, "a database row made a worker send the cluster password"
