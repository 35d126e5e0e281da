#!/usr/bin/env python3
"""Project-mode benchmark: one run, side by side, medians (see docs/benchmarks.md).

  .venv/bin/python bench/bench_project.py [--runs 30]

Rows, timed in alternating rounds so their ratios hold on a busy machine:
- `nixcell run -p bash -- true` outside any project (the warm CLI, the baseline);
- `nixcell run -- true` inside a project whose nixcell.toml names bash, level standard with the
  network off (the same closure: the difference is the config layer plus the project's binds);
- the same project at level strict (no project binds: the config layer alone);
- the same project with its default network (open, through the proxy) next to
  `nixcell run -p bash --allow-host '*' -- true` (the same proxy without a project).
Then `nixcell shell` to its first prompt through a real pseudo-terminal, next to
`nixcell run -p bash -- bash -i` outside a project. No network is used (the proxy is started,
nothing is sent through it).
"""

from __future__ import annotations

import argparse
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NIXCELL = str(Path(sys.executable).with_name("nixcell"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pct  # noqa: E402 - bench/ is not a package

PROMPT = b"READY> "


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1000:.1f}"


def project(root: Path, level: str, network: str | None) -> Path:
    root.mkdir(parents=True)
    lines = [
        "[sandbox]",
        f'level = "{level}"',
        "[nix]",
        'packages = ["bash"]',
        "[cage]",
        'command = ["bash"]',
        f'env = {{ PS1 = "{PROMPT.decode()}" }}',
    ]
    if network is not None:
        lines += ["[sandbox.network]", f'mode = "{network}"']
    (root / "nixcell.toml").write_text("\n".join(lines) + "\n")
    return root


def runner(argv: list[str], cwd: Path):
    def run() -> None:
        subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL)

    return run


def first_prompt(argv: list[str], cwd: Path) -> float:
    """Seconds from spawning ``argv`` on a fresh pty to the prompt appearing on it."""
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(cwd)
        os.execv(argv[0], argv)
    seen = b""
    try:
        while PROMPT not in seen:
            ready, _, _ = select.select([fd], [], [], 20)
            if not ready:
                raise RuntimeError(f"no prompt from {argv}: {seen[-200:]!r}")
            seen += os.read(fd, 65536)
        elapsed = time.perf_counter() - start
        os.write(fd, b"exit\n")
        try:
            while os.read(fd, 65536):
                pass
        except OSError:
            pass
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nixcell-bench-") as tmp:
        base = Path(tmp)
        outside = base / "outside"
        outside.mkdir()
        quiet = project(base / "standard", "standard", "none")
        strict = project(base / "strict", "strict", None)
        opened = project(base / "open", "standard", None)
        rows = {
            "run -p bash -- true (no project)": runner(
                [NIXCELL, "run", "-p", "bash", "--", "true"], outside
            ),
            "project standard, network none: run -- true": runner(
                [NIXCELL, "run", "--", "true"], quiet
            ),
            "project strict: run -- true": runner([NIXCELL, "run", "--", "true"], strict),
        }
        samples = interleaved(rows, args.runs)
        base_ms = statistics.median(samples["run -p bash -- true (no project)"])
        print(f"{'row':52} {'p50 ms':>8} {'p90 ms':>8} {'+ms':>7}")
        for name, values in samples.items():
            extra = (statistics.median(values) - base_ms) * 1000
            print(f"{name:52} {ms(values):>8} {pct(values, 0.9) * 1000:8.1f} {extra:7.1f}")

        net_rows = {
            "run -p bash --allow-host '*' -- true (no project)": runner(
                [NIXCELL, "run", "-p", "bash", "--allow-host", "*", "--", "true"], outside
            ),
            "project standard, network open: run -- true": runner(
                [NIXCELL, "run", "--", "true"], opened
            ),
        }
        net = interleaved(net_rows, max(5, args.runs // 3))
        net_base = statistics.median(net["run -p bash --allow-host '*' -- true (no project)"])
        for name, values in net.items():
            extra = (statistics.median(values) - net_base) * 1000
            print(f"{name:52} {ms(values):>8} {pct(values, 0.9) * 1000:8.1f} {extra:7.1f}")

        shells = {
            "run -p bash -- bash -i (no project)": (
                [
                    NIXCELL,
                    "run",
                    "-p",
                    "bash",
                    "-e",
                    f"PS1={PROMPT.decode()}",
                    "--",
                    "bash",
                    "--norc",
                    "-i",
                ],
                outside,
            ),
            "project: nixcell shell": ([NIXCELL, "shell"], quiet),
        }
        prompts: dict[str, list[float]] = {name: [] for name in shells}
        for argv, cwd in shells.values():
            first_prompt(argv, cwd)  # warm-up: resolution and plan caches
        for _ in range(max(5, args.runs // 2)):
            for name, (argv, cwd) in shells.items():
                prompts[name].append(first_prompt(argv, cwd))
        for name, values in prompts.items():
            print(f"{name + ' -> first prompt':52} {ms(values):>8} {pct(values, 0.9) * 1000:8.1f}")


if __name__ == "__main__":
    main()
