#!/usr/bin/env python3
"""Scale-out benchmark (issue 13): real ``nixcell serve`` workers on one real PostgreSQL.

  .venv/bin/python bench/bench_scaleout.py [--jobs 300] [--repeat 3] [--idle 30] [--quick]

The script starts its own PostgreSQL (``tests/integration/pgserver.py``'s ``PgServer``: Debian's
binaries, loopback, random port) and, per run, 1..3 workers (each its own state dir, unix socket
and host name, one shared ``store_key`` file, concurrency 8) on a fresh database, beside one
``nixcell serve`` on its default SQLite store. Rows, all in one run so the machine's other load
lands on every column alike:

- trivial jobs/s: ``--jobs`` ``true`` jobs submitted by ``--clients`` threads spread over the
  workers' sockets, from the first submit to the last job's ``finished`` (as the API reports
  it); the configurations alternate within each of ``--repeat`` rounds, medians reported;
- CPU per job over each burst: the workers' own, their cells' (reaped children), PostgreSQL's
  (postmaster and backends, from /proc), the harness's, and the machine's busy share of all
  cores (/proc/stat), so the table says what bounds the curve;
- submit -> running latency p50/p99 from each job's events (``queued`` to ``running``), idle
  (one job at a time), SQLite and PostgreSQL (1 and 3 workers) in alternation.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
from bench_jobs import TRUE, Daemon, latencies  # noqa: E402 - bench/ is not a package
from tests.integration.pgserver import PgServer, binaries  # noqa: E402
from timing import pct  # noqa: E402

from nixcell.jobs.client import Client  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
ACTIVE = "state=queued&state=preparing&state=running"


class Setup:
    """One configuration under test: ``n`` PostgreSQL workers on a fresh database, or
    (``pg`` None) one daemon on its own SQLite store."""

    def __init__(self, pg: PgServer | None, n: int, key: str) -> None:
        self.pg, self.db = pg, None
        self.daemons: list[Daemon] = []
        self.names = [f"w{i}" for i in range(1, n + 1)]
        try:
            if pg is None:
                self.daemons.append(Daemon("[server]\nconcurrency = 8\n"))
            else:
                self.db = pg.create_db()
                for name in self.names:
                    self.daemons.append(Daemon(_worker_config(pg.dsn(self.db), key, name)))
        except BaseException:
            self.stop()
            raise

    @property
    def label(self) -> str:
        return "SQLite, 1 daemon" if self.pg is None else f"PostgreSQL, {len(self.daemons)} w"

    def warm(self) -> None:
        """Two jobs on each worker (pinned): every host resolves ``bash`` and fills its plan
        cache, and holds the closure, so the closure hint sends no job waiting for another."""
        ids = []
        for d, name in zip(self.daemons, self.names, strict=False):
            pin = {"on_host": name} if self.pg is not None else {}
            ids += [d.submit({**TRUE, **pin}) for _ in range(2)]
        wait_done(self.daemons[0], ids)
        if self.pg is not None:
            time.sleep(1.5)  # a heartbeat (1 s) publishes each host's closures

    def stop(self) -> None:
        for d in self.daemons:
            d.stop()
        if self.pg is not None and self.db is not None:
            self.pg.drop_db(self.db)


def _worker_config(dsn: str, key: str, name: str) -> str:
    return (
        f'[server]\nstore = "{dsn}"\nstore_key = "{key}"\nhost_name = "{name}"\nconcurrency = 8\n'
    )


def listed(d: Daemon, query: str = "") -> list[dict[str, Any]]:
    """Jobs of the whole cluster (``all_hosts``: a host alone lists its own and its queue)."""
    return d.client.call("GET", f"/api/v1/jobs?all_hosts=1&limit=1000&{query}")["jobs"]


def wait_done(d: Daemon, ids: list[int], every: float = 0.1) -> list[dict[str, Any]]:
    """Every job of ``ids`` once none is active, from one list call per ``every`` seconds."""
    wanted = set(ids)
    while {j["id"] for j in listed(d, ACTIVE)} & wanted:
        time.sleep(every)
    return [j for j in listed(d) if j["id"] in wanted]


class Meter:
    """CPU seconds so far of the setup's workers (own, reaped cells), of PostgreSQL (postmaster
    with its reaped and live backends), of this process, and of the whole machine (busy ticks
    of /proc/stat)."""

    def __init__(self, setup: Setup, pg: PgServer | None) -> None:
        self.setup = setup
        self.postmaster = _postmaster(pg) if setup.pg is not None and pg else None

    def read(self) -> dict[str, float]:
        own = cells = 0.0
        for d in self.setup.daemons:
            a, b = d.cpu()
            own, cells = own + a, cells + b
        times = os.times()
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        total = sum(fields[:8])
        busy = total - fields[3] - fields[4]
        return {
            "workers": own,
            "cells": cells,
            "postgres": _tree_cpu(self.postmaster) if self.postmaster else 0.0,
            "client": times.user + times.system,
            "machine": busy / TICK,
            "ticks": total / TICK,
        }


def _postmaster(pg: PgServer) -> int:
    return int(Path(pg.data, "postmaster.pid").read_text().split()[0])


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _tree_cpu(postmaster: int) -> float:
    """The postmaster's utime+stime+cutime+cstime plus its live children's utime+stime: a
    backend that exits moves from the second sum into the first, so the total only grows."""
    top = _stat(postmaster)
    if top is None:
        return 0.0
    ticks = sum(int(x) for x in top[11:15])
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (fields := _stat(pid)) and fields[1] == str(postmaster):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / TICK


def burst(setup: Setup, meter: Meter, jobs: int, clients: int) -> dict[str, Any]:
    """``jobs`` ``true`` jobs from ``clients`` threads, thread i on worker i % n."""
    ids: list[int] = []
    lock = threading.Lock()
    share = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]

    def submitter(i: int, count: int) -> None:
        d = setup.daemons[i % len(setup.daemons)]
        client = Client(f"unix:{d.socket}")
        for _ in range(count):
            job_id = d.submit(TRUE, client)
            with lock:
                ids.append(job_id)

    threads = [threading.Thread(target=submitter, args=(i, n)) for i, n in enumerate(share)]
    before = meter.read()
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.time() - start
    done = wait_done(setup.daemons[0], ids, every=0.25)
    after = meter.read()
    bad = [j for j in done if j["state"] != "succeeded"]
    if bad or len(done) != jobs:
        raise RuntimeError(f"{len(bad)} of {len(done)} jobs did not succeed: {bad[:1]}")
    last = max(j["finished"] for j in done)
    cpu = {k: after[k] - before[k] for k in after}
    hosts: dict[str, int] = {}
    for j in done:
        hosts[str(j.get("host"))] = hosts.get(str(j.get("host")), 0) + 1
    return {
        "rate": jobs / (last - start),
        "submits": jobs / submitted,
        "ms": {k: 1000 * cpu[k] / jobs for k in ("workers", "cells", "postgres", "client")},
        "busy": cpu["machine"] / cpu["ticks"],
        "ours": sum(cpu[k] for k in ("workers", "cells", "postgres", "client")) / cpu["ticks"],
        "hosts": hosts,
    }


def idle_latency(setups: list[Setup], runs: int) -> dict[str, tuple[list[float], list[float]]]:
    """One job at a time on each setup in turn, ``runs`` rounds: (queued -> running, preparing
    -> running) seconds per setup, from each job's stored events."""
    ids: dict[str, list[int]] = {s.label: [] for s in setups}
    for _ in range(runs):
        for s in setups:
            d = s.daemons[0]
            job_id = d.submit(TRUE)
            ids[s.label].append(job_id)
            wait_done(d, [job_id], every=0.02)
    return {s.label: latencies(s.daemons[0], ids[s.label]) for s in setups}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--clients", type=int, default=6, help="submitting threads")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the burst rows")
    parser.add_argument("--idle", type=int, default=30, help="jobs one at a time (latency)")
    parser.add_argument("--workers", default="1,2,3", help="PostgreSQL worker counts")
    parser.add_argument("--only", choices=["burst", "latency"])
    parser.add_argument("--quick", action="store_true", help="60 jobs, 1 round, 10 idle")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.repeat, args.idle = 60, 1, 10
    counts = [int(n) for n in args.workers.split(",")]
    bindir = binaries()
    if bindir is None:
        sys.exit("needs PostgreSQL (initdb, pg_ctl under /usr/lib/postgresql/*/bin): run ./setup")
    pg = PgServer(bindir)
    keydir = tempfile.mkdtemp(prefix="nixcell-bench-key-", dir="/tmp")
    key = f"{keydir}/store.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secrets.token_bytes(32))
    os.close(fd)
    load = [os.getloadavg()[0]]
    rows: list[tuple[str, str]] = []
    try:
        pg.init()
        pg.start()
        if args.only in (None, "latency"):
            rows += latency_rows(pg, key, args.idle)
        if args.only in (None, "burst"):
            rows += burst_rows(pg, key, counts, args)
    finally:
        pg.cleanup()
        shutil.rmtree(keydir, ignore_errors=True)
    load.append(os.getloadavg()[0])
    print(
        f"\n{os.uname().nodename}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"load average {load[0]:.1f} at start, {load[1]:.1f} at end"
    )
    print("| row | result |\n|-|-|")
    for name, value in rows:
        print(f"| {name} | {value} |")


def latency_rows(pg: PgServer, key: str, idle: int) -> list[tuple[str, str]]:
    setups: list[Setup] = []
    try:
        for store, n in ((None, 1), (pg, 1), (pg, 3)):
            setups.append(Setup(store, n, key))
            setups[-1].warm()
        found = idle_latency(setups, idle)
    finally:
        for s in setups:
            s.stop()
    rows = []
    for label, (waits, starts) in found.items():
        rows.append((f"submit -> running, idle, {label}: p50 / p99 ms", _p(waits)))
        rows.append((f"preparing -> running, idle, {label}: p50 / p99 ms", _p(starts)))
    return rows


def burst_rows(pg: PgServer, key: str, counts: list[int], args: Any) -> list[tuple[str, str]]:
    plan: list[tuple[PgServer | None, int]] = [(None, 1)] + [(pg, n) for n in counts]
    results: dict[str, list[dict[str, Any]]] = {}
    for round_ in range(args.repeat):
        for store, n in plan:
            setup = Setup(store, n, key)
            try:
                setup.warm()
                got = burst(setup, Meter(setup, pg), args.jobs, args.clients)
            finally:
                setup.stop()
            results.setdefault(setup.label, []).append(got)
            print(f"round {round_ + 1}: {setup.label}: {got['rate']:.1f} jobs/s", flush=True)
    rows = []
    medians: dict[str, float] = {}
    for label, runs in results.items():
        rates = [r["rate"] for r in runs]
        medians[label] = statistics.median(rates)
        each = ", ".join(f"{r:.1f}" for r in rates)
        submits = statistics.median(r["submits"] for r in runs)
        rows.append(
            (
                f"{args.jobs} `true` jobs, {args.clients} clients, {label}: jobs/s",
                f"**{medians[label]:.1f}** ({each}; submits/s {submits:.0f})",
            )
        )
        ms = {k: statistics.median(r["ms"][k] for r in runs) for k in runs[0]["ms"]}
        cost = ms["workers"] + ms["cells"] + ms["postgres"]
        busy = statistics.median(r["busy"] for r in runs)
        ours = statistics.median(r["ours"] for r in runs)
        rows.append(
            (
                f"CPU ms/job, {label}: workers / cells / postgres / harness",
                f"{ms['workers']:.1f} / {ms['cells']:.1f} / {ms['postgres']:.1f} / "
                f"{ms['client']:.1f}; machine {100 * busy:.0f}% busy (this bench "
                f"{100 * ours:.0f}%); "
                f"{os.cpu_count()}-core ceiling {1000 * (os.cpu_count() or 1) / cost:.0f} jobs/s",
            )
        )
        spread = runs[-1]["hosts"]
        if len(spread) > 1:
            rows.append((f"jobs per host, {label} (last round)", _spread(spread)))
    rows += curve(medians, counts)
    return rows


def curve(medians: dict[str, float], counts: list[int]) -> list[tuple[str, str]]:
    """Speed-up over one PostgreSQL worker and the first count that adds under 10 %."""
    rates = [medians[f"PostgreSQL, {n} w"] for n in counts]
    if not rates or not rates[0]:
        return []
    shape = " -> ".join(f"{n}: x{r / rates[0]:.2f}" for n, r in zip(counts, rates, strict=True))
    flat = next((counts[i] for i in range(1, len(rates)) if rates[i] < 1.1 * rates[i - 1]), None)
    where = (
        f"at {flat} workers (under +10 % over {counts[counts.index(flat) - 1]})"
        if flat
        else ("not within these counts")
    )
    sqlite = medians.get("SQLite, 1 daemon")
    vs = f"; SQLite single host x{sqlite / rates[0]:.2f} of 1 PostgreSQL worker" if sqlite else ""
    return [("curve, PostgreSQL workers (median jobs/s)", f"{shape}; flattens {where}{vs}")]


def _spread(hosts: dict[str, int]) -> str:
    return ", ".join(f"{h} {n}" for h, n in sorted(hosts.items()))


def _p(samples: list[float]) -> str:
    if not samples:
        return "-"
    return f"{statistics.median(samples) * 1000:.1f} / {pct(samples, 0.99) * 1000:.1f}"


if __name__ == "__main__":
    main()
