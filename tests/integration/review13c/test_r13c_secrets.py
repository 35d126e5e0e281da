"""Review of issue 13's host cache (outside reviewer, part c): the cluster's cache password
after a job fetched through it. It must be nowhere but the running host's 0600 netrc file:
not in any table, job JSON, event, log line or daemon log, and not readable by the job's cell
(which tries)."""

from __future__ import annotations

import json
import os
import stat

import psycopg
import pytest
from tests.integration.clusterrig import cluster  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import TERMINAL, closure, password

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash", "coreutils", "busybox", "dash", "gnugrep"]))
    yield root
    remove_root(root)


def test_the_cache_password_stays_in_the_netrc_file(cluster, seeded) -> None:  # noqa: F811
    c = cluster(0)
    c.add("w1", root=seeded, cache=False, serve_cache=True)
    w2 = c.add("w2", cache=False)
    netrc = os.path.join(w2.state_dir, "cache.netrc")
    probe = (f"cat {netrc} /proc/1/cmdline 2>&1; ls -la {w2.state_dir} 2>&1; "
             "cat /proc/*/cmdline 2>/dev/null | tr '\\0' ' '; env; echo done")  # fmt: skip
    job = c.submit("w1", {"packages": ["bash", "coreutils"], "command": ["bash", "-c", probe],
                          "on_host": "w2"})  # fmt: skip
    done = c.wait("w1", job["id"], TERMINAL)
    assert done["state"] == "succeeded", done
    secret = password(c.key, c["w1"])
    st = os.lstat(netrc)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    with open(netrc) as f:
        assert secret in f.read()  # (the probe looks in the right place)
    texts = [json.dumps(done), w2.log(), c["w1"].log()]
    for path in (f"/api/v1/jobs/{job['id']}/logs", f"/api/v1/jobs/{job['id']}/audit"):
        for host in ("w1", "w2"):
            _, _, body = c[host].request("GET", path)
            texts.append(body.decode(errors="replace"))
    lines = c["w2"].call("GET", f"/api/v1/jobs/{job['id']}/logs?stream=stdout")["lines"]
    assert any(x["text"] == "done" for x in lines)
    with psycopg.connect(c.dsn) as db:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        ]
        for table in tables:
            for (row,) in db.execute(f'SELECT t::text FROM "{table}" t'):
                texts.append(row)
    for text in texts:
        assert secret not in text and "machine 127.0.0.1 login" not in text
