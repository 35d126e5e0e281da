#!/usr/bin/env python3
"""Closures on a worker (issue 13): how long a host with a Nix root of its own takes to have a
job's closure, by each way it can get one, side by side in one run (medians).

  .venv/bin/python bench/bench_closures.py [--repeat 5] [--packages bash coreutils]

Every sample resolves the packages (``nix.resolve.resolve``, the engine's own call: nix-build
with ``--store ROOT``, ``nix-store -qR``, the validity check) into a FRESH empty root, except the
warm row. Rows, alternating within each round:

- warm: the machine's store, the resolution cached (what every later job of a host pays);
- copied: ``nix copy --to ROOT`` of the set's paths from the machine's store first, then the
  env built in the root (a host that already holds the paths);
- signed cache: nothing in the root; nix fetches every path from a signed ``file://`` cache
  served over HTTP on loopback (static narinfos, uncompressed NARs), then builds the env;
- submitting host: nothing in the root; nix fetches from a live ``hostcache.HostCache`` (the
  routes a cluster host serves at ``/nix-cache/``: narinfos made and signed per request, NARs
  from ``nix-store --dump``) under uvicorn on loopback, with the cluster's password via netrc.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.integration.nixcache import make_key, new_root, nix_copy, offline_paths  # noqa: E402


def _closure_paths(packages: list[str]) -> list[str]:
    """The set's paths a job of ``packages`` needs (and the builder, busybox; dash for sh)."""
    import subprocess

    wanted = [*packages, "busybox", "dash"]
    tops = [p for p in offline_paths() if any(p[44:].startswith(n + "-") for n in wanted)]
    out = subprocess.run(["nix-store", "-qR", *tops], capture_output=True, text=True, check=True)
    return sorted(set(out.stdout.split()))


def _serve_static(directory: Path) -> tuple[str, object]:
    import http.server

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: Quiet(*a, directory=str(directory), **k)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def _serve_host_cache(state: Path) -> tuple[str, object, object]:
    import secrets

    import uvicorn
    from starlette.applications import Starlette

    from nixcell.jobs.hostcache import HostCache

    key = secrets.token_bytes(32)
    config = SimpleNamespace(cache_url="http://127.0.0.1/nix-cache", nix_root=None,
                             state_dir=str(state))  # fmt: skip
    cache = HostCache(config, key)
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=cache.routes()), host="127.0.0.1",
                                           port=0, log_level="warning"))  # fmt: skip
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/nix-cache"
    cache.serve_at(url)  # (its password is this address's)
    fetcher = HostCache(SimpleNamespace(cache_url=None, nix_root=None, state_dir=str(state)), key)
    return url, fetcher, server  # (another host of the cluster fetches: the same store_key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--packages", nargs="+", default=["bash", "coreutils"])
    args = parser.parse_args()

    from nixcell.nix.resolve import JOB_CACHES, resolve

    work = Path(tempfile.mkdtemp(prefix="nixcell-bench-closures-", dir="/tmp"))
    from nixcell import paths as nixcell_paths

    os.environ["NIXCELL_OFFLINE_DIR"] = str(nixcell_paths.offline_dir())  # (the machine's set)
    os.environ["NIXCELL_HOME"] = str(work / "home")  # the bench's own resolve cache
    paths = _closure_paths(args.packages)
    sk, pk = make_key(work, "nixcell-bench-cache-1")
    nix_copy(paths, f"file://{work}/cache?compression=none&secret-key={sk}")
    static_url, static = _serve_static(work / "cache")
    live_url, live, server = _serve_host_cache(work / "state")
    (work / "state").mkdir()
    roots: list[str] = []

    def fresh(env: dict[str, str]) -> None:
        roots.append(new_root())
        for name in ("NIXCELL_NIX_ROOT", "NIXCELL_SUBSTITUTERS", "NIXCELL_TRUSTED_PUBLIC_KEYS"):
            os.environ.pop(name, None)
        os.environ.update({"NIXCELL_NIX_ROOT": roots[-1], **env})

    def warm() -> None:
        for name in ("NIXCELL_NIX_ROOT", "NIXCELL_SUBSTITUTERS", "NIXCELL_TRUSTED_PUBLIC_KEYS"):
            os.environ.pop(name, None)
        resolve(args.packages)

    def copied() -> None:
        fresh({})
        nix_copy(paths, roots[-1], "--no-check-sigs")
        resolve(args.packages)

    def signed_cache() -> None:
        fresh({"NIXCELL_SUBSTITUTERS": static_url, "NIXCELL_TRUSTED_PUBLIC_KEYS": pk})
        resolve(args.packages)

    def submitting_host() -> None:
        fresh({})
        token = JOB_CACHES.set(live.for_job(SimpleNamespace(via_cache=live_url)))
        try:
            resolve(args.packages)
        finally:
            JOB_CACHES.reset(token)

    rows = {"warm (machine store, cached)": warm, "copied (nix copy, then build)": copied,
            "signed cache (HTTP, static)": signed_cache,
            "submitting host (hostcache, live)": submitting_host}  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for fn in rows.values():  # one warm-up each (the live cache's servable set, nix's own)
            fn()
        for _ in range(args.repeat):
            for name, fn in rows.items():
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    finally:
        server.should_exit = True  # type: ignore[attr-defined]
        static.shutdown()  # type: ignore[attr-defined]
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    size = sum(_size(p) for p in paths) / (1 << 20)
    print(f"packages {' '.join(args.packages)}: {len(paths)} store paths, {size:.1f} MiB; "
          f"medians of {args.repeat}, one run")  # fmt: skip
    base = statistics.median(samples["copied (nix copy, then build)"])
    print(f"{'how the closure arrives':38} {'median':>9} {'vs copied':>10}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:38} {median * 1000:7.0f} ms {median / base:9.2f}x")
    return 0


def _size(path: str) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


if __name__ == "__main__":
    sys.exit(main())
