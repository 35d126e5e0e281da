"""Review of issue 13's host cache (outside reviewer, part c): turning the cache off. An admin
who removes ``cache_url`` and sends SIGHUP (the documented way to change the config) sees the
reload succeed and new jobs stop naming the cache, yet the host goes on serving its store."""

from __future__ import annotations

import signal

import pytest
from tests.integration.clusterrig import cluster, wait_until  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import basic, closure, password, path_of, raw_get

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash"]))
    yield root
    remove_root(root)


def test_sighup_without_cache_url_stops_serving_the_store(cluster, seeded) -> None:  # noqa: F811
    """Expected: after a reload that drops ``cache_url`` the host serves nothing at
    ``/nix-cache/`` (or the reload says the change needs a restart). Found: the routes and
    the HostCache were made at start and keep serving every closure path."""
    c = cluster(0)
    w1 = c.add("w1", root=seeded, cache=False, serve_cache=True)
    secret = password(c.key, c["w1"])
    auth = {"Authorization": basic("nixcell", secret), "Host": f"127.0.0.1:{w1.port}"}
    target = f"/nix-cache/{path_of('bash')[11:43]}.narinfo"
    assert raw_get(w1.port, target, auth)[0] == 200
    off = "".join(ln for ln in w1.config_text.splitlines(True) if not ln.startswith("cache_url"))
    w1.write_config(off)
    w1.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP: config reloaded" in w1.log()), w1.log()[-2000:]
    job = c.submit("w1", {"packages": ["bash"], "command": ["true"]})
    assert job["request"]["via_cache"] is None  # the reload took: jobs no longer name the cache
    status, body = raw_get(w1.port, target, auth)
    assert status == 404 and b"StorePath" not in body, (
        "cache_url removed and reloaded, but /nix-cache/ still serves the store",
        status,
        body[:80],
    )
