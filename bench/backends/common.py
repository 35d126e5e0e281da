"""Helpers the backend benchmark modules share: PSS of processes, a cell held running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NIXCELL = str(ROOT / ".venv" / "bin" / "nixcell")
PACKAGES = ["-p", "coreutils", "-p", "python3"]


class Skip(Exception):
    """This host cannot run the backend (the message says why)."""


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except OSError:
        return 0


def cmdline(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], {root}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def check(argv: list[str], **kw: object) -> None:
    done = subprocess.run(argv, capture_output=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {done.stderr.decode()[-300:]}")


def running_cell_mib(
    argv: list[str],
    ready: Callable[[int], bool],
    pids: Callable[[int], list[int]],
    settle: float = 0.5,
) -> float | None:
    """PSS (MiB) of one held cell: ``argv`` runs ``sleep``; ``settle`` s after ``ready(pid)``,
    the sum over the nixcell process and ``pids(pid)``. SIGINT then (nixcell tears it down)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not ready(proc.pid):
            if time.monotonic() > deadline or proc.poll() is not None:
                return None
            time.sleep(0.1)
        time.sleep(settle)
        return (pss_kib(proc.pid) + sum(pss_kib(p) for p in pids(proc.pid))) / 1024
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait()
