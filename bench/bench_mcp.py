#!/usr/bin/env python3
"""MCP server benchmark: what a client sees from `nixcell mcp` (see docs/benchmarks.md).

  .venv/bin/python bench/bench_mcp.py [--calls 300] [--starts 10] [--gap-ms 100] [--install-peers]

The official MCP SDK client talks to every server over stdio, as an agent's host would.
Rows, each timed at the client (request sent -> response parsed), p50 and p99:
  - ephemeral `run` of python `print(1)`: from the pool of pre-started cells (the default), and
    with `--pool 0` (a fresh cell per call); default limits (512 MB, 256 pids, 30 s);
  - the same `print(1)` through MCP servers with no sandbox at all (bench/mcp_peers.py:
    mcp-python-interpreter, mcp-server-code-runner), when installed (`--install-peers`);
  - a session call (python `x += 1`);
  - server start to the first tools/list answer (process start, imports, initialize, the
    environments' warm resolution).
All servers are open at once and called in turn, one call each per round, with `--gap-ms`
between any two calls (an agent's calls are seconds apart; the gap also keeps one server's
background work, such as nixcell refilling its pool, out of the next server's measured call):
the machine's noise hits every row alike, and the ratios come from one run. `--gap-ms 0`
shows back-to-back calls, which outrun the pool's refill.
Warm caches: a first server run resolves the three preset environments. No network is used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from mcp_peers import install, output_of, peers  # noqa: E402

NIXCELL = str(Path(sys.executable).with_name("nixcell"))


def params(workdir: str, *args: str) -> StdioServerParameters:
    env = {"XDG_CONFIG_HOME": os.path.join(workdir, "xdg")}  # no user environments
    for key in ("NIXCELL_HOME", "NIXCELL_OFFLINE_DIR", "PYTHONDONTWRITEBYTECODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return StdioServerParameters(command=NIXCELL, args=["mcp", *args], cwd=workdir, env=env)


def summary(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    p99 = statistics.quantiles(ms, n=100)[98] if len(ms) >= 100 else ms[-1]
    return statistics.median(ms), p99


CELL_MS: dict[str, list[float]] = {}  # the server's own duration_ms: the cell or session part


async def time_call(client: Client, tool: str, arguments: dict[str, Any], key: str) -> float:
    start = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    elapsed = time.perf_counter() - start
    text = output_of(result)
    assert not result.is_error and "1" in text, text[:500]
    if result.structured_content and "duration_ms" in result.structured_content:
        CELL_MS.setdefault(key, []).append(result.structured_content["duration_ms"])
    return elapsed


async def calls_bench(workdir: str, calls: int, gap: float) -> dict[str, list[float]]:
    """Every server open at once, called in turn: one call each per round."""
    print_one = {"code": "print(1)", "env": "python"}
    servers = [
        ("nixcell mcp: ephemeral run, pooled cell", params(workdir), "run", print_one),
        (
            "nixcell mcp --pool 0: ephemeral run, fresh cell",
            params(workdir, "--pool", "0"),
            "run",
            print_one,
        ),
        (
            "nixcell mcp: session call (x += 1)",
            params(workdir),
            "run",
            {"code": "x = x + 1 if 'x' in dir() else 1; print(1)", "env": "python", "session": "b"},
        ),
    ]
    found, missing = peers(workdir, "print(1)")
    servers += [(p.name, p.params, p.tool, p.arguments) for p in found]
    for line in missing:
        print(line)
    out: dict[str, list[float]] = {name: [] for name, *_ in servers}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(Client(s[1])) for s in servers]
        for client in clients:
            await client.list_tools()  # environments prepared, pools filled (below)
        await anyio.sleep(3)
        for round_ in range(calls + 5):  # 5 warm-up rounds
            for (name, _, tool, arguments), client in zip(servers, clients, strict=True):
                await anyio.sleep(gap)
                elapsed = await time_call(client, tool, arguments, name)
                if round_ >= 5:
                    out[name].append(elapsed)
    return out


async def start_bench(workdir: str, starts: int) -> list[float]:
    samples = []
    for _ in range(starts):
        start = time.perf_counter()
        async with Client(params(workdir)) as client:
            await client.list_tools()
            samples.append(time.perf_counter() - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--gap-ms", type=float, default=100.0)
    parser.add_argument("--install-peers", action="store_true")
    args = parser.parse_args()
    if args.install_peers:
        install()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as workdir:
        os.mkdir(os.path.join(workdir, "xdg"))
        anyio.run(start_bench, workdir, 1)  # warm the resolution cache
        rows = anyio.run(calls_bench, workdir, args.calls, args.gap_ms / 1000)
        rows["nixcell mcp: server start -> first tools/list answer"] = anyio.run(
            start_bench, workdir, args.starts
        )
    print(
        f"\n{args.calls} rounds, gap {args.gap_ms:g} ms, {args.starts} starts, "
        f"{os.cpu_count()} cores\n"
    )
    print("| measurement (python `print(1)`) | n | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, samples in rows.items():
        p50, p99 = summary(samples)
        print(f"| {name} | {len(samples)} | {p50:.1f} | {p99:.1f} |")
    for name, cell in CELL_MS.items():
        print(f"server-side duration_ms p50, {name}: {statistics.median(cell):.1f}")
    runner = rows.get("mcp-server-code-runner")
    if runner:
        base = summary(runner)[0]
        for name in [n for n in rows if n.startswith("nixcell mcp") and "start" not in n]:
            print(f"p50 ratio {name} / mcp-server-code-runner: {summary(rows[name])[0] / base:.2f}")


if __name__ == "__main__":
    main()
