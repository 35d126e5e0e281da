"""Review of issue 13's host cache (outside reviewer, part c): the netrc file a running host
gives a job's nix calls. A worker whose own substituter wants credentials (kept in nix's netrc
file, as docs/scale-out.md tells admins to) runs jobs submitted through a serving host w1.

w2, w3: empty Nix roots, their substituter is a loopback cache behind basic auth (its login in
a netrc file named by NIX_CONFIG, nix's standard way); w1 serves only bash's closure, so a
job needing coreutils must get it from the private cache."""

from __future__ import annotations

import json
import os
import tempfile

import pytest
from tests.integration.clusterrig import Workers, cluster  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import (
    TERMINAL,
    AuthCache,
    auth_cache,
    basic,
    closure,
    password,
)

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash"]))
    yield root
    remove_root(root)


@pytest.fixture
def private(nix_cache, monkeypatch):
    with tempfile.TemporaryDirectory(prefix="r13c-netrc-") as tmp:
        netrc = os.path.join(tmp, "netrc")
        fd = os.open(netrc, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, b"machine 127.0.0.1 login ops password r13c-private-secret\n")
        os.close(fd)
        with auth_cache(nix_cache.directory, "ops", "r13c-private-secret") as made:
            monkeypatch.setenv("NIX_CONFIG", f"netrc-file = {netrc}")  # the workers inherit it
            yield made, nix_cache.public_key


def _rig(cluster, seeded, private: tuple[AuthCache, str]) -> Workers:  # noqa: F811
    cache, key = private
    c = cluster(0)
    c.add("w1", root=seeded, cache=False, serve_cache=True)
    extra = f'substituters = ["{cache.url}"]\ntrusted_public_keys = ["{key}"]\n'
    c.add("w2", cache=False, extra=extra)
    c.add("w3", cache=False, extra=extra)
    return c


def _run(c: Workers, via: str, on: str) -> dict:
    job = c.submit(via, {"packages": ["coreutils"], "command": ["true"], "on_host": on})
    return c.wait(via, job["id"], TERMINAL)


def test_a_via_job_keeps_the_workers_own_netrc(cluster, seeded, private) -> None:  # noqa: F811
    """Expected: a job submitted through w1 and run on w2 gets coreutils from w2's private
    cache exactly as a job submitted through w3 does on w3. Found: the job's
    ``--option netrc-file STATE/cache.netrc`` replaces the host's netrc file for every transfer
    of that job, so the private cache gets no (or the cluster's) credentials and the job ends
    ``error`` whenever it came through a host with ``cache_url``."""
    c = _rig(cluster, seeded, private)
    control = _run(c, "w3", "w3")  # no via_cache: w3's nix uses the host's netrc
    assert control["state"] == "succeeded", control
    via = _run(c, "w1", "w2")
    assert via["request"]["via_cache"] == c["w1"].url + "/nix-cache"
    secret = password(c.key, c["w1"])
    for name in ("w1", "w2", "w3"):
        assert secret not in c[name].log()
    assert secret not in json.dumps(via)
    assert via["state"] == "succeeded", ("a via job lost the host's own netrc", via.get("reason"))


def test_the_cluster_password_reaches_no_other_cache(cluster, seeded, private) -> None:  # noqa: F811
    """Expected (docs: the netrc names "that cache's host alone, so no other cache ever
    receives it"): only w1's cache sees the cluster's password. Found: netrc entries are per
    host *name*, not per port or URL, so a job's nix sends ``nixcell:PASSWORD`` to every
    substituter (and every URL it fetches) on the same name as a submitting host's cache."""
    cache, _ = private
    c = _rig(cluster, seeded, private)
    _run(c, "w1", "w2")
    leaked = basic("nixcell", password(c.key, c["w1"]))
    assert leaked not in cache.seen, "the cluster's cache password was sent to a private cache"
