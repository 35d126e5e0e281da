#!/usr/bin/env python3
"""Engine benchmark: one run, side by side, medians (see docs/benchmarks.md).

  .venv/bin/python bench/bench_engine.py [--runs 30] [--install-srt] [--install-firejail]

Rows: bare bwrap with the same mounts and namespaces as a nixcell cell; `nixcell run -p bash --
true` (warm cache, CLI); the in-process API (`nixcell.run`); Anthropic's `srt true` when installed
(`--install-srt` puts it under bench/.cache with npm); `firejail --noprofile --net=none true`
when installed (`--install-firejail`: the Debian package, with apt-get); `python -I -S -c pass`
(the interpreter's own start, the floor of any Python CLI); `docker run --rm` of an image built
from the same closure when a Docker daemon answers. The warm CLI, srt, firejail and the
interpreter floor are timed in alternating rounds, so their ratios hold on a busy machine. Then
100 concurrent cells on this machine, and the host-side memory each running cell costs besides
bwrap itself. Timings are wall-clock per command started from this harness. No network is used.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
NIXCELL = str(Path(sys.executable).with_name("nixcell"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, timed  # noqa: E402 - bench/ is not a package


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def bare_bwrap_runner(unprivileged: bool = False):
    """bwrap with exactly the plan's arguments (same mounts, namespaces, seccomp), no nixcell.

    ``unprivileged``: started as an unprivileged uid, as nixcell starts a root-run cell (bare
    bwrap as root maps the sandbox to host uid 0, which nixcell no longer does)."""
    from nixcell.runner import prepare, seccomp_program
    from nixcell.sandbox.bwrap import prepare_fds
    from nixcell.spec import make_spec

    plan, _ = prepare(make_spec(command=["true"], packages=["bash"]))
    program = seccomp_program(plan.seccomp_profiles)
    bwrap = shutil.which("bwrap")
    who: dict[str, object] = {}
    if unprivileged and os.geteuid() == 0:
        from nixcell.sandbox.identity import subordinate_range

        uid = subordinate_range().base + 4096  # a slot far from those of live cells
        who = {"user": uid, "group": uid, "extra_groups": [], "cwd": "/"}

    def run() -> None:
        named, fds = prepare_fds(plan, program)
        args = plan.bwrap_args(named)
        try:
            subprocess.run([bwrap, *args], pass_fds=fds, check=True, **who)  # type: ignore[arg-type]
        finally:
            for fd in fds:
                os.close(fd)

    return run


def srt_path(install: bool) -> str | None:
    local = CACHE / "node_modules" / ".bin" / "srt"
    if local.exists():
        return str(local)
    if shutil.which("srt"):
        return shutil.which("srt")
    if not install:
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "install", "--prefix", str(CACHE), "@anthropic-ai/sandbox-runtime"],
        check=True,
        capture_output=True,
    )
    return str(local) if local.exists() else None


def firejail_path(install: bool) -> str | None:
    """firejail, installed with apt-get when asked (it is a Debian package, setuid root)."""
    if shutil.which("firejail") or not install:
        return shutil.which("firejail")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "firejail"], env=env, check=True)
    return shutil.which("firejail")


def docker_runner():
    if shutil.which("docker") is None:
        return None, "docker not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return None, "no Docker daemon running"
    from nixcell.nix.resolve import resolve

    closure = resolve(["bash"], None)
    tar = subprocess.Popen(
        ["tar", "-C", "/", "-c", *[p.lstrip("/") for p in closure.paths]], stdout=subprocess.PIPE
    )
    subprocess.run(
        ["docker", "import", "-", "nixcell-bench:bash"],
        stdin=tar.stdout,
        check=True,
        capture_output=True,
    )
    tar.wait()
    argv = [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "nixcell-bench:bash",
        f"{closure.env}/bin/bash",
        "-c",
        "true",
    ]
    return (lambda: subprocess.run(argv, check=True, capture_output=True)), None


async def concurrent_cells(n: int) -> tuple[int, float]:
    from nixcell import CellSpec, run_async

    # Each cell echoes its own token: a result in the wrong place would show as a failure.
    specs = [
        CellSpec(command=["bash", "-c", 'echo "$TOKEN"'], packages=["bash"], env={"TOKEN": str(i)})
        for i in range(n)
    ]
    start = time.perf_counter()
    results = await asyncio.gather(
        *(run_async(spec, capture_output=True) for spec in specs), return_exceptions=True
    )
    ok = sum(
        1
        for i, r in enumerate(results)
        if not isinstance(r, BaseException) and r.exit_code == 0 and r.stdout == f"{i}\n".encode()
    )
    errors = {repr(r)[:120] for r in results if isinstance(r, BaseException)}
    for err in sorted(errors):
        print(f"  concurrent cell error: {err}", file=sys.stderr)
    return ok, time.perf_counter() - start


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def memory_per_cell(n: int) -> tuple[float, float]:
    """Host-side RSS growth of this process per running cell, and bwrap's own RSS per cell."""
    from nixcell import CellSpec, run_async

    spec = CellSpec(command=["sleep", "20"], packages=["coreutils"])
    await run_async(CellSpec(command=["true"], packages=["coreutils"]))  # warm imports
    before = rss_kib(os.getpid())
    tasks = [asyncio.ensure_future(run_async(spec, capture_output=True)) for _ in range(n)]
    await asyncio.sleep(2.0)
    during = rss_kib(os.getpid())
    kids = subprocess.run(
        ["pgrep", "-P", str(os.getpid()), "bwrap"], capture_output=True, text=True
    ).stdout.split()
    bwrap_rss = sum(rss_kib(int(p)) for p in kids) / max(len(kids), 1)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return (during - before) / n, bwrap_rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--install-srt", action="store_true")
    parser.add_argument("--install-firejail", action="store_true")
    parser.add_argument("--concurrency", type=int, default=100)
    args = parser.parse_args()
    from nixcell import CellSpec, run

    # Compiled bytecode, as an installed nixcell has (./setup runs compileall too): with
    # PYTHONDONTWRITEBYTECODE set and no .pyc, every CLI start would recompile its modules.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True)
    subprocess.run([NIXCELL, "run", "-p", "bash", "--", "true"], check=True)  # warm caches
    rows: list[tuple[str, str, str]] = []
    bare = timed(bare_bwrap_runner(), args.runs)
    rows.append(("bare bwrap (same mounts, namespaces, seccomp)", ms(bare), "1.00"))
    bare_u = timed(bare_bwrap_runner(unprivileged=True), args.runs)
    base_u = statistics.median(bare_u) / statistics.median(bare)
    name = "bare bwrap as an unprivileged uid (as nixcell starts cells)"
    rows.append((name, ms(bare_u), f"{base_u:.2f}"))
    srt = srt_path(args.install_srt)
    firejail = firejail_path(args.install_firejail)
    side: dict[str, object] = {
        "cli": lambda: subprocess.run([NIXCELL, "run", "-p", "bash", "--", "true"], check=True),
        "python": lambda: subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True),
    }
    if srt:
        side["srt"] = lambda: subprocess.run([srt, "true"], check=True, capture_output=True)
    if firejail:
        argv = [firejail, "--noprofile", "--net=none", "true"]
        side["firejail"] = lambda: subprocess.run(argv, check=True, capture_output=True)
    together = interleaved(side, args.runs)  # type: ignore[arg-type]
    cli = together["cli"]
    spec = CellSpec(command=["true"], packages=["bash"])
    api = timed(lambda: run(spec), args.runs)
    base = statistics.median(bare)

    def row(name: str, samples: list[float] | None, missing: str = "-") -> None:
        if samples:
            rows.append((name, ms(samples), f"{statistics.median(samples) / base:.2f}"))
        else:
            rows.append((name, missing, "-"))

    row("nixcell run -p bash -- true (CLI, warm)", cli)
    row("nixcell.run(spec) in-process", api)
    floor = together["python"]
    row("python -I -S -c pass (interpreter start)", floor)
    srt_samples = together.get("srt")
    row("srt true (sandbox-runtime)", srt_samples, "not installed (--install-srt)")
    firejail_samples = together.get("firejail")
    row(
        "firejail --noprofile --net=none true",
        firejail_samples,
        "not installed (--install-firejail)",
    )
    docker, why = docker_runner()
    if docker:
        samples = timed(docker, max(5, args.runs // 3))
        rows.append(
            (
                "docker run --rm (closure image)",
                ms(samples),
                f"{statistics.median(samples) / base:.2f}",
            )
        )
    else:
        rows.append(("docker run --rm", f"skipped: {why}", "-"))

    print(f"\nmedians over {args.runs} runs, {os.cpu_count()} cores\n")
    print("| command | median ms | ratio to bare bwrap |\n|---|---|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")
    warm = statistics.median(cli)
    if srt_samples:
        print(f"\nwarm CLI / srt = {warm / statistics.median(srt_samples):.3f} (target ≤ 0.1)")
    if firejail_samples:
        jail = statistics.median(firejail_samples)
        print(f"warm CLI / firejail = {warm / jail:.2f} (target ≤ 1.0)")
    print(f"warm CLI - interpreter start = {(warm - statistics.median(floor)) * 1000:.1f} ms")
    print(f"in-process / bare bwrap = {statistics.median(api) / base:.2f} (target ≤ 2)")
    unpriv = statistics.median(api) / statistics.median(bare_u)
    print(f"in-process / bare bwrap as an unprivileged uid = {unpriv:.2f}")
    ok, wall = asyncio.run(concurrent_cells(args.concurrency))
    print(f"{args.concurrency} concurrent cells: {ok} succeeded in {wall:.2f} s")
    host_kib, bwrap_mb = asyncio.run(memory_per_cell(20))
    print(
        f"host-side memory per running cell: {host_kib:.0f} KiB of nixcell RSS (bwrap itself: "
        f"{bwrap_mb:.2f} MB RSS per cell; target ≤ 5 MB besides bwrap)"
    )


if __name__ == "__main__":
    main()
