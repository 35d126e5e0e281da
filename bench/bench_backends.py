#!/usr/bin/env python3
"""Backends benchmark: each backend against its own bare tool, side by side, medians.

  .venv/bin/python bench/bench_backends.py [--runs 15] [--only gvisor,docker]

For every backend this host runs (the others print "not available: <reason>"),
``bench/backends/<name>.py`` gives the nixcell command
(`nixcell run --backend NAME -p … -- true`, and `python3 -c 'print(1)'`) and the bare tool
running the same thing the same way (bare `bwrap`, `runsc do`, `docker run` of the same image,
`qemu` with the same kernel and initramfs), timed in alternating rounds so their ratio holds on
a busy machine; then the host memory one running cell costs. No network is used.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, timed

ORDER = ("bwrap", "gvisor", "docker", "microvm")
PROGRAMS = {"true": ["true"], "print(1)": ["python3", "-c", "print(1)"]}


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    wanted = [n for n in ORDER if not args.only or n in args.only.split(",")]
    print("| backend | program | nixcell ms | bare ms | ratio | host MiB per cell |")
    print("|---|---|---|---|---|---|")
    for name in wanted:
        mod = importlib.import_module(f"backends.{name}")
        try:
            state = mod.setup()
        except mod.Skip as exc:  # type: ignore[attr-defined]
            print(f"| {name} | not available: {exc} | | | | |", flush=True)
            continue
        try:
            runs = max(3, args.runs // getattr(mod, "SLOW", 1))
            for label, program in PROGRAMS.items():
                try:
                    fns = {"nixcell": mod.nixcell(state, program), "bare": mod.bare(state, program)}
                except mod.Skip as exc:  # type: ignore[attr-defined]
                    print(f"| {name} | {label}: bare not available: {exc} | | | | |", flush=True)
                    continue
                got = interleaved(fns, runs)
                ratio = statistics.median(got["nixcell"]) / statistics.median(got["bare"])
                mem = mod.memory(state) if label == "true" else None
                shown = f"{mem:.0f}" if mem is not None else ""
                print(
                    f"| {name} | {label} | {ms(got['nixcell'])} | {ms(got['bare'])} | "
                    f"{ratio:.2f}x | {shown} |",
                    flush=True,
                )
        finally:
            mod.teardown(state)
    floor = timed(lambda: subprocess.run([sys.executable, "-IS", "-c", "pass"], check=True), 15)
    print(f"\nfloor: `python -IS -c pass` (the start of any Python CLI) {ms(floor)} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
