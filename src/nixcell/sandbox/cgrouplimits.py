"""What a cell's cgroups must enforce, as data: limits, the directories they need, the writes.

Pure functions of the limits and the probed host (``cgroupfs.describe_host``): no writes here,
so ``--dry-run`` and the unit tests see exactly what ``cgroups.CellCgroup`` will do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nixcell.errors import LimitUnavailableError, UsageError
from nixcell.quiet import Frozen
from nixcell.sandbox.cgroupfs import CgroupHost, describe_host

MONITOR_PROCESSES = 1
FLAGS = {"memory": "--memory", "pids": "--pids", "cpu": "--cpus"}
MIN_MEMORY = 4 << 20
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel's floor for cfs_quota_us / cpu.max
_ID_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")


class CgroupLimits(Frozen):
    """What a cell may use; ``None`` means unlimited. Validated on construction."""

    _fields = ("memory", "pids", "cpus")
    __slots__ = _fields
    memory: int | None  # bytes; swap beyond it is forbidden too
    pids: int | None
    cpus: float | None  # CFS quota in CPUs (1.5 = one and a half CPUs' time)

    def __init__(
        self, memory: int | None = None, pids: int | None = None, cpus: float | None = None
    ) -> None:
        self._set(memory=memory, pids=pids, cpus=cpus)
        if self.memory is not None and (isinstance(self.memory, bool) or self.memory < MIN_MEMORY):
            from nixcell.units import format_size  # (it imports `re`: only for this message)

            shown = format_size(self.memory) if self.memory > 0 else str(self.memory)
            raise UsageError(f"--memory {shown} is too small: at least {format_size(MIN_MEMORY)}")
        if self.pids is not None and (isinstance(self.pids, bool) or self.pids < 1):
            raise UsageError(f"--pids {self.pids} is invalid: at least 1")
        if self.cpus is not None and not self.cpus * CPU_PERIOD_US >= MIN_CPU_QUOTA_US:
            raise UsageError(f"--cpus {self.cpus:g} is invalid: at least 0.01")

    def controllers(self) -> tuple[str, ...]:
        wanted = (("memory", self.memory), ("pids", self.pids), ("cpu", self.cpus))
        return tuple(name for name, value in wanted if value is not None)

    def __bool__(self) -> bool:
        return bool(self.controllers())


class CgroupDir(Frozen):
    """One directory of a cell in one hierarchy (several controllers when co-mounted or v2)."""

    _fields = ("path", "version", "controllers")
    __slots__ = _fields
    path: Path
    version: str  # "v1" | "v2"
    controllers: tuple[str, ...]

    def __init__(self, path: Path, version: str, controllers: tuple[str, ...]) -> None:
        self._set(path=path, version=version, controllers=controllers)


def cpu_quota(cpus: float) -> tuple[int, int]:
    """(quota µs, period µs) for the CFS bandwidth controller."""
    return max(MIN_CPU_QUOTA_US, round(cpus * CPU_PERIOD_US)), CPU_PERIOD_US


def limit_writes(
    controller: str,
    version: str,
    limits: CgroupLimits,
    has_file: Callable[[str], bool] = lambda _: True,
) -> list[tuple[str, str]]:
    """The (file, content) writes, in order, that enforce ``limits`` for one controller.

    ``has_file`` says whether an optional file exists (swap accounting may be off)."""
    if controller == "memory" and limits.memory is not None:
        value = str(limits.memory)
        if version == "v2":
            swap = [("memory.swap.max", "0")] if has_file("memory.swap.max") else []
            return [("memory.max", value), *swap]
        # memsw caps memory+swap (it must stay >= the memory limit, hence second); without
        # swap accounting, swappiness 0 keeps the cell's anonymous memory out of swap.
        if has_file("memory.memsw.limit_in_bytes"):
            swap = [("memory.memsw.limit_in_bytes", value)]
        else:
            swap = [("memory.swappiness", "0")]
        # v1 charges TCP socket buffers only once this is set (v2 always does): without it a
        # cell under --memory 64M queued 2 GB in loopback TCP buffers of the host's kernel.
        tcp = [("memory.kmem.tcp.limit_in_bytes", value)]
        if not has_file("memory.kmem.tcp.limit_in_bytes"):
            tcp = []
        return [("memory.limit_in_bytes", value), *swap, *tcp, ("memory.oom_control", "0")]
    if controller == "pids" and limits.pids is not None:
        # bwrap's outer process (its monitor, outside the cell's pid namespace) starts inside
        # the cgroup too: one more than the cell's own processes.
        return [("pids.max", str(limits.pids + MONITOR_PROCESSES))]
    if controller == "cpu" and limits.cpus is not None:
        quota, period = cpu_quota(limits.cpus)
        if version == "v2":
            return [("cpu.max", f"{quota} {period}")]
        return [("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(quota))]
    return []


def valid_cell_id(cell_id: str) -> bool:
    """A cgroup directory name: an ASCII letter or digit, then up to 63 of those or ``_.-``
    (no ``/``, no ``..``, no newline; tested from every side in test_cgroups_formats.py)."""
    return (
        isinstance(cell_id, str)
        and 1 <= len(cell_id) <= 64
        and cell_id[0] in _ID_FIRST
        and _ID_REST.issuperset(cell_id)
    )


def plan_cell_cgroup(
    cell_id: str, limits: CgroupLimits, host: CgroupHost | None = None
) -> list[CgroupDir]:
    """The directories a cell will get (no writes): for ``--dry-run`` and ``create``."""
    if not valid_cell_id(cell_id):
        raise ValueError(f"invalid cell id for a cgroup name: {cell_id!r}")
    host = host or describe_host()
    dirs: dict[Path, CgroupDir] = {}

    def add(controller: str, version: str, path: Path) -> None:
        old = dirs.get(path)
        ctrls = (*old.controllers, controller) if old else (controller,)
        dirs[path] = CgroupDir(path, version, ctrls)

    for ctrl in limits.controllers():
        site = host.controllers.get(ctrl)
        if site is None or not site.usable or site.version is None:
            why = site.reason if site else f"the {ctrl} controller was not probed"
            raise LimitUnavailableError(f"cannot enforce {FLAGS[ctrl]}: {why}")
        add(ctrl, site.version, site.cell_dir(cell_id))
    freezer = host.controllers.get("freezer")
    if freezer and freezer.usable and freezer.version == "v1" and dirs:
        add("freezer", "v1", freezer.cell_dir(cell_id))
    return list(dirs.values())


def flag_of(d: CgroupDir) -> str:
    """The flag a user set for what ``d`` enforces, for error messages."""
    return next((FLAGS[c] for c in d.controllers if c in FLAGS), "cgroup limits")
