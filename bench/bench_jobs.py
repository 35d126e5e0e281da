#!/usr/bin/env python3
"""Job service benchmark: a real ``nixcell serve`` on a unix socket (see docs/benchmarks.md).

  .venv/bin/python bench/bench_jobs.py [--jobs 300] [--clients 8] [--lines 200000]

Rows, each against a fresh daemon on a temp state dir:
- trivial jobs sustained: ``--jobs`` ``true`` jobs submitted as fast as ``--clients`` client
  threads can over the unix socket, daemon concurrency 8 and the server's default; jobs/s from
  the first submit to the last job's ``finished``; beside ``nixcell run -p bash -- true`` in a
  loop (one after the other, and ``--clients`` loops side by side) for scale;
- submit -> running latency p50/p99 from each job's events (``queued`` to ``running``): idle
  (one job at a time) and under the load above; also ``preparing`` -> ``running`` (the cell's
  start, without the queue wait);
- log lines/s from one job printing ``--lines`` lines to a following client (SSE), every line
  counted and checked in order;
- the daemon's RSS with 100 queued and 8 running ``sleep`` jobs (and idle, before them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

NIXCELL = str(Path(sys.executable).with_name("nixcell"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import pct  # noqa: E402 - bench/ is not a package

from nixcell.jobs.client import Client  # noqa: E402

TRUE = {"packages": ["bash"], "command": ["true"]}
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}


class Watch(threading.Thread):
    """The daemon's event stream (``/api/v1/events``), read from before a burst: the time each
    job reached a terminal state, with no polling load on the daemon."""

    def __init__(self, socket: str) -> None:
        super().__init__(daemon=True)
        self.client = Client(f"unix:{socket}", timeout=None)
        self.ended: dict[int, tuple[str, float]] = {}
        self.ready = threading.Event()
        self.changed = threading.Condition()
        self.broken: str | None = None

    def run(self) -> None:
        try:
            response = self.client.open(
                "GET", "/api/v1/events", headers={"Accept": "text/event-stream"}, timeout=None
            )
            self.ready.set()
            for raw in response:
                line = raw.decode()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event.get("state") in TERMINAL:
                        with self.changed:
                            self.ended[event["job"]] = (event["state"], time.time())
                            self.changed.notify_all()
        except Exception as exc:  # reported by wait()
            self.broken = str(exc)
        self.broken = self.broken or "the event stream ended"
        self.ready.set()
        with self.changed:
            self.changed.notify_all()

    def wait(self, ids: list[int]) -> None:
        with self.changed:
            while not all(i in self.ended for i in ids):
                if self.broken:
                    raise RuntimeError(f"events: {self.broken}")
                self.changed.wait(1)


class Daemon:
    """``nixcell serve`` on its own state dir and socket; ``stop`` is SIGTERM."""

    def __init__(self, config: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nixcell-bench-jobs-", dir="/tmp"))
        self.socket = str(self.root / "run" / "nixcell.sock")
        (self.root / "server.toml").write_text(config)
        argv = [NIXCELL, "serve", "--config", str(self.root / "server.toml")]
        argv += ["--state-dir", str(self.root / "state"), "--listen", f"unix:{self.socket}"]
        self.log = open(self.root / "daemon.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log)
        self.client = Client(f"unix:{self.socket}")
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.call("GET", "/api/v1/whoami")
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.root / "daemon.log").read_text()[-2000:]) from None
                time.sleep(0.05)

    def submit(self, request: dict[str, Any], client: Client | None = None) -> int:
        return (client or self.client).call("POST", "/api/v1/jobs", request)["job"]["id"]

    def show(self, job_id: int) -> dict[str, Any]:
        return self.client.call("GET", f"/api/v1/jobs/{job_id}")

    def wait_all(self, ids: list[int]) -> list[dict[str, Any]]:
        """Every job of ``ids`` once all are terminal (a poll of the unfinished ones)."""
        wanted = set(ids)
        while True:
            active = "state=queued&state=preparing&state=running&limit=1000"
            busy = {j["id"] for j in self.client.call("GET", f"/api/v1/jobs?{active}")["jobs"]}
            if not busy & wanted:
                return [self.show(i)["job"] for i in ids]
            time.sleep(0.25)

    def watch(self) -> Watch:
        return Watch(self.socket)

    def rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def cpu(self) -> tuple[float, float]:
        """(the daemon's own CPU seconds, its reaped children's: the cells)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        own = (int(fields[11]) + int(fields[12])) / tick
        return own, (int(fields[13]) + int(fields[14])) / tick

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def latencies(d: Daemon, ids: list[int]) -> tuple[list[float], list[float]]:
    """(queued -> running, preparing -> running) seconds of each job, from its events."""
    waits, starts = [], []
    for job_id in ids:
        times = {e["state"]: e["time"] for e in d.show(job_id)["events"] if e["kind"] == "state"}
        if "running" in times:
            waits.append(times["running"] - times["queued"])
            starts.append(times["running"] - times["preparing"])
    return waits, starts


def burst(d: Daemon, jobs: int, clients: int) -> tuple[float, list[int], float, tuple]:
    """(jobs/s first submit -> last finish, ids, submits/s, daemon and cells CPU ms per job)
    of ``jobs`` ``true`` jobs."""
    ids: list[int] = []
    lock = threading.Lock()
    share = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]

    def submitter(count: int) -> None:
        client = Client(f"unix:{d.socket}")
        for _ in range(count):
            job_id = d.submit(TRUE, client)
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in share]
    watch = d.watch()
    watch.start()
    watch.ready.wait()
    cpu = d.cpu()
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.time() - start
    watch.wait(ids)
    own, cells = (1000 * (b - a) / jobs for a, b in zip(cpu, d.cpu(), strict=True))
    done = d.wait_all(sorted(ids))
    bad = [j for j in done if j["state"] != "succeeded"]
    if bad:
        raise RuntimeError(f"{len(bad)} jobs did not succeed: {bad[0]}")
    last = max(j["finished"] for j in done)
    return jobs / (last - start), sorted(ids), jobs / submitted, (own, cells)


def cli_loop(runs: int, parallel: int) -> float:
    """Runs/s of ``nixcell run -p bash -- true``, ``parallel`` loops side by side."""
    argv = [NIXCELL, "run", "-p", "bash", "--", "true"]
    subprocess.run(argv, check=True)  # warm-up: plan cache

    def loop(n: int) -> None:
        for _ in range(n):
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)

    each = runs // parallel
    threads = [threading.Thread(target=loop, args=(each,)) for _ in range(parallel)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return each * parallel / (time.perf_counter() - start)


def log_rate(d: Daemon, lines: int) -> tuple[float, int]:
    """(lines/s, lines received) of one job printing ``lines`` lines, to a following client."""
    command = ["bash", "-c", f"seq 1 {lines}"]
    job_id = d.submit({"packages": ["bash", "coreutils"], "command": command})
    follower = Client(f"unix:{d.socket}", timeout=None)
    seen = 0
    first = last = 0.0
    for kind, _, data in follower.events(f"/api/v1/jobs/{job_id}/logs?follow=1&stream=stdout"):
        if kind == "log":
            seen += 1
            if data["text"] != str(seen):
                raise RuntimeError(f"line {seen} is {data['text']!r}")
            last = time.perf_counter()
            if seen == 1:
                first = last
        elif kind == "state" and data["state"] in TERMINAL:
            break
    return (seen - 1) / (last - first) if seen > 1 else 0.0, seen


def rss(d: Daemon, clients: int) -> tuple[int, int]:
    """Daemon RSS KiB (idle, with 100 queued and ``clients`` running sleep jobs)."""
    idle = d.rss_kib()
    sleep = {"packages": ["bash", "coreutils"], "command": ["sleep", "600"]}
    ids = [d.submit(sleep) for _ in range(clients + 100)]
    while sum(1 for j in _listed(d) if j["state"] == "running") < clients:
        time.sleep(0.1)
    loaded = d.rss_kib()
    for job_id in reversed(ids):
        d.client.call("POST", f"/api/v1/jobs/{job_id}/cancel")
    return idle, loaded


def _listed(d: Daemon) -> list[dict[str, Any]]:
    return d.client.call("GET", "/api/v1/jobs?limit=1000")["jobs"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lines", type=int, default=200000)
    parser.add_argument("--idle", type=int, default=30, help="jobs one at a time (latency)")
    parser.add_argument("--only", choices=["burst", "latency", "logs", "rss", "cli"])
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    want = lambda name: args.only in (None, name)  # noqa: E731

    if want("cli"):
        rows.append(("`nixcell run -p bash -- true` loop, runs/s", f"{cli_loop(60, 1):.1f}"))
        rate = cli_loop(8 * 15, args.clients)
        rows.append((f"{args.clients} such loops side by side, runs/s", f"{rate:.1f}"))
    for concurrency in (8, None):
        if not (want("burst") or want("latency")):
            break
        config = f"[server]\nconcurrency = {concurrency}\n" if concurrency else ""
        label = f"concurrency {concurrency}" if concurrency else "server default concurrency"
        d = Daemon(config)
        try:
            d.wait_all([d.submit(TRUE) for _ in range(2)])  # warm-up: resolution, plan caches
            if want("latency") and concurrency == 8:
                idle_ids = []
                for _ in range(args.idle):
                    idle_ids.append(d.submit(TRUE))
                    d.wait_all(idle_ids[-1:])
                waits, starts = latencies(d, idle_ids)
                rows.append(("submit -> running, idle, p50 / p99 ms", _p(waits)))
                rows.append(("preparing -> running, idle, p50 / p99 ms", _p(starts)))
            rate, ids, submits, (own, cells) = burst(d, args.jobs, args.clients)
            rows.append(
                (
                    f"{args.jobs} `true` jobs, {args.clients} clients, {label}: jobs/s",
                    f"{rate:.1f} (submits/s {submits:.0f})",
                )
            )
            rows.append(
                (f"CPU ms per job ({label}): daemon / its cells", f"{own:.1f} / {cells:.1f}")
            )
            if want("latency"):
                waits, starts = latencies(d, ids)
                rows.append(
                    (f"submit -> running under that load ({label}), p50 / p99 ms", _p(waits))
                )
                rows.append(
                    (f"preparing -> running under that load ({label}), p50 / p99 ms", _p(starts))
                )
        finally:
            d.stop()
    if want("logs"):
        d = Daemon(f"[server]\nconcurrency = 8\nlog_limit = {args.lines + 1000}\n")
        try:
            rate, seen = log_rate(d, args.lines)
            rows.append((f"log lines/s to a follower ({seen} lines)", f"{rate:,.0f}"))
        finally:
            d.stop()
    if want("rss"):
        d = Daemon(f"[server]\nconcurrency = {args.clients}\n")
        try:
            d.wait_all([d.submit(TRUE)])
            idle, loaded = rss(d, args.clients)
            rows.append(("daemon RSS idle (after one job), MiB", f"{idle / 1024:.1f}"))
            rows.append(
                (f"daemon RSS, 100 queued + {args.clients} running, MiB", f"{loaded / 1024:.1f}")
            )
        finally:
            d.stop()
    print(f"\n{os.uname().nodename}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}")
    print("| row | result |\n|-|-|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def _p(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"{statistics.median(samples) * 1000:.1f} / {pct(samples, 0.99) * 1000:.1f}"


if __name__ == "__main__":
    main()
