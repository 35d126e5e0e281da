"""Review of issue 13's host cache (outside reviewer, part c): cache_url as the docs write it.
docs/scale-out.md names the cache by the host's DNS name (``http://build-1:7878/nix-cache``)
and listens on ``0.0.0.0:7878``; the API's Gate answers a TCP request only when ``Host`` names
the listener (its address, a ``listen`` name of that port, localhost names). Nothing checks
that ``cache_url`` is one of those, nor that its path is ``/nix-cache`` (the routes' only
path). Here the machine's hostname resolves to loopback, so the probe talks to loopback only."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from tests.integration.clusterrig import Workers, cluster  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import TERMINAL, basic, closure, password, raw_get

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash", "coreutils", "busybox", "dash", "gnugrep"]))
    yield root
    remove_root(root)


def _loopback_name() -> str:
    name = socket.gethostname()
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(name, None)}
    except OSError:
        pytest.skip("the hostname does not resolve")
    if not addresses or not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        pytest.skip("the hostname does not resolve to loopback only (the probe stays on it)")
    if name.lower() in ("localhost", "127.0.0.1"):
        pytest.skip("the hostname is a name the Gate always accepts")
    return name


def _serving_at(cluster, seeded, url_of) -> Workers:  # noqa: F811
    c = cluster(0)
    w1 = c.add("w1", root=seeded, cache=False, serve_cache=True, start=False)
    w1.config_text = w1.config_text.replace(f'cache_url = "{w1.url}/nix-cache"', url_of(w1))
    w1.write_config(w1.config_text)
    w1.start()
    c.add("w2", cache=False)
    return c


def _run(c: Workers) -> dict:
    job = c.submit("w1", {"packages": ["bash"], "command": ["true"], "on_host": "w2"})
    return c.wait("w1", job["id"], TERMINAL)


def test_a_cache_url_by_host_name_is_answered_or_refused_at_start(cluster, seeded) -> None:  # noqa: F811
    """Expected: the job fetches from ``http://HOSTNAME:PORT/nix-cache`` (the Gate accepts the
    cache's own name), or ``nixcell serve`` refuses a cache_url its listeners would not answer.
    Found: the daemon starts, every fetch is ``421 wrong Host`` and the job ends ``error``
    saying "no binary cache gave it"."""
    name = _loopback_name()
    c = _serving_at(cluster, seeded, lambda d: f'cache_url = "http://{name}:{d.port}/nix-cache"')
    w1 = c["w1"]
    secret = password(c.key, c["w1"])
    auth = {"Authorization": basic("nixcell", secret), "Host": f"{name}:{w1.port}"}
    status, body = raw_get(w1.port, "/nix-cache/nix-cache-info", auth)  # what w2's nix is told
    done = _run(c)
    assert done["state"] == "succeeded", (status, body, done.get("reason"))


def test_a_cache_url_path_other_than_nix_cache_is_refused(cluster, seeded) -> None:  # noqa: F811
    """Expected: ``cache_url = "http://H:P/cache"`` refused at start (the cache is served at
    ``/nix-cache`` only). Found: accepted; jobs name a cache that answers 404 to everything."""
    with pytest.raises(AssertionError) as refused:  # (jobsd: "nixcell serve exited 2: …")
        _serving_at(cluster, seeded, lambda d: f'cache_url = "{d.url}/cache"')
    assert "cache_url: must be http(s)://HOST[:PORT]/nix-cache" in str(refused.value)
    assert "Traceback" not in str(refused.value)
