"""Several REAL ``nixcell serve`` workers sharing one PostgreSQL job store (scale-out tests).

    from tests.integration.clusterrig import cluster   # the fixture (with jobsd and pg's)

    def test_x(cluster):
        c = cluster(3)                       # workers w1, w2, w3 on one fresh database
        job = c.submit("w1", {...})          # through w1's unix socket (the API's JSON)
        c.wait("w2", job["id"], {"succeeded"})
        c.kill("w3")                          # SIGKILL; c.start("w3") brings it back

Each worker is a ``jobsd.Daemon`` (its own state dir, socket and log) whose server.toml names
the store, a host name and the sealing key every worker shares, and a Nix root of its own
(``nix_root``: it starts empty, so each worker receives the closures it runs from the session's
signed binary cache on loopback, ``nixcache.py``, and builds their envs in its own store).
Heartbeats are fast (0.2 s) and a host is lost after 3 s, so liveness tests take seconds.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from tests.integration.jobsd import Daemon

HEARTBEAT = "200ms"
HOST_TIMEOUT = "3s"


class Workers:
    def __init__(self, make: Any, dsn: str, key: str, cache: Any, roots: Any) -> None:
        self._make = make
        self.dsn = dsn
        self.key = key
        self.cache = cache
        self._roots = roots
        self.roots: dict[str, str] = {}  # host name -> its Nix root
        self.hosts: dict[str, Daemon] = {}

    def config(
        self,
        name: str,
        concurrency: int = 4,
        extra: str = "",
        dsn: str | None = None,
        root: bool | str = True,
        cache: bool = True,
    ) -> str:
        """``root``: True a new empty Nix root, a path that root, False the machine's store;
        ``cache``: the session's signed cache as the worker's substituter."""
        if root:
            self.roots.setdefault(name, root if isinstance(root, str) else self._roots())
        if root and not cache:
            extra += f'nix_root = "{self.roots[name]}"\n'
        elif root:
            extra += (
                f'nix_root = "{self.roots[name]}"\n'
                f'substituters = ["{self.cache.url}"]\n'
                f'trusted_public_keys = ["{self.cache.public_key}"]\n'
            )
        return (
            "[server]\n"
            f'store = "{dsn or self.dsn}"\n'
            f'store_key = "{self.key}"\n'
            f'host_name = "{name}"\n'
            f"concurrency = {concurrency}\n"
            f'heartbeat = "{HEARTBEAT}"\n'
            f'host_timeout = "{HOST_TIMEOUT}"\n'
            'closure_hint = "100ms"\n'
            'repo_schemes = ["https", "http", "file"]\n'
            f"{extra}"
        )

    def add(
        self,
        name: str,
        *,
        concurrency: int = 4,
        extra: str = "",
        start: bool = True,
        dsn: str | None = None,
        root: bool | str = True,
        cache: bool = True,
        serve_cache: bool = False,
    ) -> Daemon:
        """``serve_cache``: the worker listens on loopback TCP too and serves its store to the
        others there (``cache_url``): jobs submitted through it carry that address."""
        text = self.config(name, concurrency, extra, dsn, root, cache)
        daemon = self._make(config=text, start=False, tcp=serve_cache)
        if serve_cache:
            daemon.config_text = text + f'cache_url = "{daemon.url}/nix-cache"\n'
            daemon.write_config(daemon.config_text)
        self.hosts[name] = daemon
        return daemon.start() if start else daemon

    def __getitem__(self, name: str) -> Daemon:
        return self.hosts[name]

    def submit(self, via: str, request: dict[str, Any]) -> dict[str, Any]:
        return self.hosts[via].call("POST", "/api/v1/jobs", request)["job"]

    def job(self, via: str, job_id: int) -> dict[str, Any]:
        return self.hosts[via].call("GET", f"/api/v1/jobs/{job_id}")["job"]

    def wait(self, via: str, job_id: int, states: set[str], wait: float = 300) -> dict[str, Any]:
        return self.hosts[via].wait_state(job_id, states, wait)

    def kill(self, name: str) -> None:
        import signal

        self.hosts[name].stop(signal.SIGKILL)

    def start(self, name: str) -> Daemon:
        return self.hosts[name].start()


def wait_until(check: Any, wait: float = 120, every: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something true (a bound, not a timing assertion)."""
    deadline = time.monotonic() + wait
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


@pytest.fixture
def cluster(jobsd, pg_dsn, nix_cache, nix_roots):
    """``cluster(n) -> Workers`` with workers w1..wn started on a fresh database."""
    key_dir = Path(tempfile.mkdtemp(prefix="nixcell-cluster-key-", dir="/tmp"))
    key = str(key_dir / "store.key")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_bytes(32))
    os.close(fd)
    made: list[Workers] = []

    def make(n: int = 3, **kw: Any) -> Workers:
        workers = Workers(jobsd, pg_dsn, key, nix_cache, nix_roots)
        for i in range(1, n + 1):  # n=0: none yet (the test adds its own)
            workers.add(f"w{i}", **kw)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        for daemon in workers.hosts.values():
            daemon.stop()
    os.unlink(key)
    key_dir.rmdir()
