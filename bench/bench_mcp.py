#!/usr/bin/env python3
"""MCP server benchmark: what a client sees from `nixcell mcp` (see docs/benchmarks.md).

  .venv/bin/python bench/bench_mcp.py [--calls 300] [--starts 10]

The official MCP SDK client talks to `nixcell mcp` over stdio, as an agent's host would.
Rows, each timed at the client (request sent -> response parsed), p50 and p99:
  - ephemeral `run` of python `print(1)`: a fresh cell per call, default limits (512 MB, 256 pids,
    30 s: cgroups are created and removed every call);
  - a session call (python `x += 1`), once persistent sessions exist (nixcell.mcp.sessions);
  - server start to the first tools/list answer (process start, imports, initialize, the
    environments' warm resolution).
Warm caches: a first server run resolves the three preset environments. No network is used.
"""

from __future__ import annotations

import argparse
import importlib.util
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
NIXCELL = str(Path(sys.executable).with_name("nixcell"))


def params(workdir: str) -> StdioServerParameters:
    env = {"XDG_CONFIG_HOME": os.path.join(workdir, "xdg")}  # no user environments
    for key in ("NIXCELL_HOME", "NIXCELL_OFFLINE_DIR", "PYTHONDONTWRITEBYTECODE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return StdioServerParameters(command=NIXCELL, args=["mcp"], cwd=workdir, env=env)


def summary(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    p99 = statistics.quantiles(ms, n=100)[98] if len(ms) >= 100 else ms[-1]
    return statistics.median(ms), p99


CELL_MS: dict[str, list[float]] = {}  # the server's own duration_ms: the cell or session part


async def time_calls(client: Client, calls: int, arguments: dict[str, Any]) -> list[float]:
    samples = []
    cell = CELL_MS.setdefault(str(arguments), [])
    for _ in range(calls):
        start = time.perf_counter()
        result = await client.call_tool("run", arguments)
        samples.append(time.perf_counter() - start)
        assert not result.is_error, result.content[0].text  # type: ignore[union-attr]
        cell.append(result.structured_content["duration_ms"])  # type: ignore[index]
    return samples


async def calls_bench(workdir: str, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    async with Client(params(workdir)) as client:
        await client.list_tools()
        ephemeral = {"code": "print(1)", "env": "python"}
        await time_calls(client, 5, ephemeral)  # warm-up
        out["ephemeral run: python print(1)"] = await time_calls(client, calls, ephemeral)
        if importlib.util.find_spec("nixcell.mcp.sessions") is not None:
            await client.call_tool("run", {"code": "x = 0", "env": "python", "session": "b"})
            args = {"code": "x += 1", "env": "python", "session": "b"}
            await time_calls(client, 5, args)
            out["session call: python x += 1"] = await time_calls(client, calls, args)
            check = await client.call_tool(
                "run", {"code": "print(x)", "env": "python", "session": "b"}
            )
            assert check.structured_content["stdout"] == f"{calls + 5}\n", check  # type: ignore[index]
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
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src")], check=True)
    with tempfile.TemporaryDirectory(prefix="bench-mcp-") as workdir:
        os.mkdir(os.path.join(workdir, "xdg"))
        anyio.run(start_bench, workdir, 1)  # warm the resolution cache
        rows = anyio.run(calls_bench, workdir, args.calls)
        rows["server start -> first tools/list answer"] = anyio.run(
            start_bench, workdir, args.starts
        )
    print(f"\n{args.calls} calls, {args.starts} starts, {os.cpu_count()} cores\n")
    print("| measurement | n | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, samples in rows.items():
        p50, p99 = summary(samples)
        print(f"| {name} | {len(samples)} | {p50:.1f} | {p99:.1f} |")
    for arguments, cell in CELL_MS.items():
        print(f"server-side duration_ms p50 for {arguments}: {statistics.median(cell):.1f}")
    if "session call: python x += 1" not in rows:
        print("\nsession calls: skipped (nixcell.mcp.sessions is not there yet)")


if __name__ == "__main__":
    main()
