"""Review of issue 13's host cache (outside reviewer, part c): jobs at once. The per-job caches
ride in a context variable; jobs resolving at the same time on one worker must not use each
other's. And the serving host's work per request is not bounded: each NAR is one
``nix-store --dump`` child for as long as its reader keeps the stream open."""

from __future__ import annotations

import http.client
import os

import pytest
from tests.integration.clusterrig import Workers, cluster, wait_until  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import TERMINAL, basic, closure, password, path_of

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash", "coreutils", "gnugrep", "dash", "busybox"]))
    yield root
    remove_root(root)


def _two(cluster, seeded) -> Workers:  # noqa: F811
    c = cluster(0)
    c.add("w1", root=seeded, cache=False, serve_cache=True)
    c.add("w2", cache=False, concurrency=4)
    return c


def _at_once(c: Workers, asks: list[tuple[str, str]]) -> list[tuple[str, dict]]:
    jobs = [(via, c.submit(via, {"packages": [pkg], "command": ["true"], "on_host": "w2"}))
            for via, pkg in asks]  # fmt: skip
    return [(via, c.wait(via, j["id"], TERMINAL)) for via, j in jobs]


def test_concurrent_jobs_never_use_each_others_cache(cluster, seeded) -> None:  # noqa: F811
    """A job through w1 (its cache) and two through w2 (none) resolve on w2 at once: the w2
    ones never get gnugrep, which only w1's cache has and the w1 job does not ask for."""
    c = _two(cluster, seeded)
    done = _at_once(c, [("w2", "gnugrep"), ("w1", "coreutils"), ("w2", "gnugrep")])
    for via, job in done:
        if via == "w2":
            assert job["state"] == "error", ("a job without a cache got one", job)
    assert not os.path.exists(c.roots["w2"] + path_of("gnugrep"))


def test_two_jobs_from_one_serving_host_fetch_at_once(cluster, seeded) -> None:  # noqa: F811
    """Expected: two jobs submitted through w1 and resolving on w2 at the same time both
    succeed. Found: the second ends ``error`` "nix evaluation failed: executing SQLite statement
    'insert or replace into NARs(...)' ... constraint failed (in ~/.cache/nix/
    binary-cache-v6.sqlite)": nix 2.8's narinfo disk cache, shared by every nix process of the
    uid, re-creates the cache's row per process (a new id), so concurrent substitutions from one
    cache URL break each other; or "creating symlink from ROOT/nix/var/nix/gcroots/profiles …:
    File exists" (two nix calls making a fresh root). Both are races of first use (a new cache
    URL, a new root): a new worker's first jobs from a serving host. Not every run loses them;
    once each is made (a warm-up job first) this mostly passes."""
    c = _two(cluster, seeded)
    done = _at_once(c, [("w1", "coreutils"), ("w1", "coreutils")])
    for _, job in done:
        assert job["state"] == "succeeded", job.get("reason", "")[:300]


def _dumps(pid: int) -> int:
    """``nix-store --dump`` processes whose parent is ``pid``."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid and b"--dump" in argv:
            count += 1
    return count


def test_parallel_nar_readers_are_bounded(cluster, seeded) -> None:  # noqa: F811
    """Expected: a bound on concurrent NAR dumps (here: at most 8 of 12 slow readers get a
    ``nix-store --dump`` at once; the rest wait or get 503). Found: one child per open stream,
    however many (a slow or stuck reader keeps its child, pipe and buffers)."""
    c = cluster(0)
    w1 = c.add("w1", root=seeded, cache=False, serve_cache=True)
    auth = basic("nixcell", password(c.key, c["w1"]))
    target = f"/nix-cache/nar/{path_of('coreutils')[11:43]}.nar"
    conns = []
    try:
        for _ in range(12):
            conn = http.client.HTTPConnection("127.0.0.1", w1.port, timeout=60)
            conn.request("GET", target, headers={"Authorization": auth})
            answer = conn.getresponse()
            if answer.status == 200:
                answer.read(1)  # a slow reader: one byte, then nothing
            conns.append(conn)
        assert w1.proc is not None
        most = wait_until(lambda: _dumps(w1.proc.pid) >= 12, wait=10)
        assert not most, f"{_dumps(w1.proc.pid)} nix-store --dump children for 12 slow readers"
    finally:
        for conn in conns:
            conn.close()
