"""Enforced memory, pid and CPU limits for a cell, on cgroup v1 and v2.

A limit that cannot be enforced raises ``LimitUnavailableError`` before the cell starts: a cell
never runs weaker than asked. Where the cgroups go is decided in ``cgroupfs`` (see its docstring:
nested under nixcell's own cgroup on v1, a delegated ``nixcell-<cell>`` child on v2).

Clean-up: ``remove()`` kills what is left and removes the cell's directory in every hierarchy.
Each cell directory is held ``flock``-ed by the nixcell that created it, so ``sweep_stale`` can
tell a leftover of a killed nixcell (lock free, no tasks) from a cell that another nixcell has
created but not yet filled. On v1 a freezer cgroup is added when the freezer is mounted, so
``kill_all`` can freeze a fork loop before killing it; v2 has ``cgroup.kill``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from nixcell.errors import LimitUnavailableError, SandboxError, UsageError
from nixcell.sandbox.cgroupfs import (
    LEAF,
    V2_PREFIX,
    CgroupHost,
    describe_host,
    ensure_v1_parent,
    freeze,
    lock_dir,
    prepare_v2_base,
    read_oom_kills,
    read_pids,
    rmdir_if_empty,
    write_value,
)
from nixcell.units import format_size

__all__ = [
    "CellCgroup",
    "CgroupDir",
    "CgroupHost",
    "CgroupLimits",
    "create_cell_cgroup",
    "describe_host",
    "limit_writes",
    "list_cell_cgroups",
    "plan_cell_cgroup",
    "sweep_stale",
]

log = logging.getLogger(__name__)

FLAGS = {"memory": "--memory", "pids": "--pids", "cpu": "--cpus"}
MIN_MEMORY = 4 << 20
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000  # the kernel's floor for cfs_quota_us / cpu.max
_CELL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_POLL = 0.01


@dataclass(frozen=True)
class CgroupLimits:
    """What a cell may use; ``None`` means unlimited. Validated on construction."""

    memory: int | None = None  # bytes; swap beyond it is forbidden too
    pids: int | None = None
    cpus: float | None = None  # CFS quota in CPUs (1.5 = one and a half CPUs' time)

    def __post_init__(self) -> None:
        if self.memory is not None and (isinstance(self.memory, bool) or self.memory < MIN_MEMORY):
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


@dataclass(frozen=True)
class CgroupDir:
    """One directory of a cell in one hierarchy (several controllers when co-mounted or v2)."""

    path: Path
    version: str  # "v1" | "v2"
    controllers: tuple[str, ...]


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
        return [("memory.limit_in_bytes", value), *swap, ("memory.oom_control", "0")]
    if controller == "pids" and limits.pids is not None:
        return [("pids.max", str(limits.pids))]
    if controller == "cpu" and limits.cpus is not None:
        quota, period = cpu_quota(limits.cpus)
        if version == "v2":
            return [("cpu.max", f"{quota} {period}")]
        return [("cpu.cfs_period_us", str(period)), ("cpu.cfs_quota_us", str(quota))]
    return []


def plan_cell_cgroup(
    cell_id: str, limits: CgroupLimits, host: CgroupHost | None = None
) -> list[CgroupDir]:
    """The directories a cell will get (no writes): for ``--dry-run`` and ``create``."""
    if not _CELL_ID.match(cell_id):
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


def _flag(d: CgroupDir) -> str:
    return next((FLAGS[c] for c in d.controllers if c in FLAGS), "cgroup limits")


class CellCgroup:
    """A cell's cgroups across hierarchies; a context manager that ``remove()``s on exit."""

    def __init__(self, cell_id: str, limits: CgroupLimits) -> None:
        self.cell_id = cell_id
        self.limits = limits
        self._dirs: list[CgroupDir] = []  # created, in creation order
        self._fds: list[int] = []
        self._removed = False

    @property
    def paths(self) -> dict[str, Path]:
        return {c: d.path for d in self._dirs for c in d.controllers}

    @classmethod
    def materialize(cls, cell_id: str, dirs: list[CgroupDir], limits: CgroupLimits) -> CellCgroup:
        """Create ``dirs`` and write the limits; on any failure remove what was made."""
        cg = cls(cell_id, limits)
        try:
            for d in dirs:
                if not cg._make_dir(d):
                    continue
                for ctrl in d.controllers:
                    cg._write_limits(d, ctrl)
        except BaseException:
            try:
                cg.remove()
            except SandboxError as e:
                log.error("%s", e)
            raise
        return cg

    def _make_dir(self, d: CgroupDir) -> bool:
        for _ in range(5):
            try:
                self._prepare_parent(d)
                os.mkdir(d.path)
            except FileNotFoundError:
                continue  # a concurrent remove() took the v1 parent away: make it again
            except FileExistsError:
                self._reclaim_stale(d.path)
                continue
            except OSError as e:
                if d.controllers == ("freezer",):
                    log.debug("no freezer cgroup for the cell: %s", e)
                    return False
                raise LimitUnavailableError(
                    f"cannot enforce {_flag(d)}: cannot create {d.path}: {e.strerror}"
                ) from e
            fd = lock_dir(d.path, block=True)
            if fd is None:  # swept between mkdir and lock
                continue
            try:
                same = os.stat(d.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fds.append(fd)
            self._dirs.append(d)
            return True
        raise SandboxError(f"could not create cgroup {d.path}: it keeps changing under us")

    def _prepare_parent(self, d: CgroupDir) -> None:
        parent = d.path.parent
        if d.version == "v2":
            try:
                prepare_v2_base(parent, d.controllers)
            except OSError as e:
                raise LimitUnavailableError(
                    f"cannot enforce {_flag(d)}: cannot enable {' '.join(d.controllers)} in "
                    f"{parent}/cgroup.subtree_control: {e.strerror or e}"
                ) from e
            return
        ensure_v1_parent(parent, "memory" in d.controllers)

    def _reclaim_stale(self, path: Path) -> None:
        fd = lock_dir(path, block=False)
        if fd is None and not path.exists():
            return
        if fd is None or read_pids(path):
            if fd is not None:
                os.close(fd)
            raise SandboxError(f"cgroup {path} is in use by another cell with the same id")
        try:
            log.info("removing stale cgroup %s", path)
            os.rmdir(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)

    def _write_limits(self, d: CgroupDir, ctrl: str) -> None:
        has_file = lambda name: (d.path / name).exists()  # noqa: E731
        for name, value in limit_writes(ctrl, d.version, self.limits, has_file):
            try:
                write_value(d.path / name, value)
            except OSError as e:
                raise LimitUnavailableError(
                    f"cannot enforce {FLAGS.get(ctrl, ctrl)}: writing {value!r} to "
                    f"{d.path / name} failed: {e.strerror}"
                ) from e

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the cell in every hierarchy."""
        for d in self._dirs:
            try:
                write_value(d.path / "cgroup.procs", str(pid))
            except ProcessLookupError as e:
                raise SandboxError(f"cannot move pid {pid} into {d.path}: it has exited") from e
            except OSError as e:
                raise SandboxError(f"cannot move pid {pid} into {d.path}: {e.strerror}") from e

    def pids(self) -> list[int]:
        """Processes in the cell (any hierarchy); empty once it is gone."""
        return sorted({pid for d in self._dirs for pid in read_pids(d.path)})

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cell (0 when unknown or gone)."""
        d = next((d for d in self._dirs if "memory" in d.controllers), None)
        return read_oom_kills(d.path, d.version) if d else 0

    def kill_all(self) -> None:
        """SIGKILL every process in the cell, including ones that escaped its process tree."""
        if any(self._v2_kill(d) for d in self._dirs if d.version == "v2"):
            return
        fz = next((d for d in self._dirs if "freezer" in d.controllers or d.version == "v2"), None)
        frozen = False
        if fz is not None:
            try:
                frozen = freeze(fz.path, fz.version, True)
            except OSError as e:
                log.debug("cannot freeze %s: %s", fz.path, e)
        try:
            for _ in range(200):  # without a freezer, repeat to catch processes forked meanwhile
                pids = self.pids()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                if not pids or frozen:  # a frozen cgroup cannot fork: that list was complete
                    break
                time.sleep(_POLL)
        finally:
            if fz is not None:
                with contextlib.suppress(OSError):
                    freeze(fz.path, fz.version, False)

    @staticmethod
    def _v2_kill(d: CgroupDir) -> bool:
        try:
            write_value(d.path / "cgroup.kill", "1")
            return True
        except OSError:  # no cgroup.kill before Linux 5.14: freeze and kill one by one
            return False

    def _wait_empty(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.pids():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
        return True

    def remove(self) -> None:
        """Kill stragglers and remove the cell's directories everywhere; idempotent."""
        if self._removed:
            return
        if not self._wait_empty(0.25):
            log.info("cell %s: killing %d leftover process(es)", self.cell_id, len(self.pids()))
            self.kill_all()
            self._wait_empty(3.0)
        left: list[Path] = []
        deadline = time.monotonic() + 2.0
        for d in reversed(self._dirs):
            while True:
                try:
                    os.rmdir(d.path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                        left.append(d.path)
                        break
                    self.kill_all()
                    time.sleep(_POLL)
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        for parent in {d.path.parent for d in self._dirs if d.version == "v1"}:
            rmdir_if_empty(parent)
        self._removed = True
        if left:
            raise SandboxError(
                f"could not remove cgroup {left[0]}: processes {read_pids(left[0])} remain "
                "(stuck in the kernel?); `nixcell doctor` sweeps it once they are gone"
            )

    def __enter__(self) -> CellCgroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.remove()
        except SandboxError as e:
            if exc is None:
                raise
            log.error("%s", e)  # do not hide the error that got us here


def create_cell_cgroup(cell_id: str, limits: CgroupLimits) -> CellCgroup:
    """Create the cell's cgroups with ``limits`` enforced (``LimitUnavailableError`` if not)."""
    if not limits:
        raise ValueError("create_cell_cgroup needs at least one limit")
    return CellCgroup.materialize(cell_id, plan_cell_cgroup(cell_id, limits), limits)


def list_cell_cgroups(host: CgroupHost | None = None) -> list[Path]:
    """Every cell cgroup dir where this process would create one (live or stale)."""
    host = host or describe_host()
    found: list[Path] = []
    bases = {s.base: s.version for s in host.controllers.values() if s.usable and s.base}
    for base, version in bases.items():
        try:
            children = sorted(p for p in base.iterdir() if p.is_dir())
        except OSError:
            continue
        if version == "v2":
            children = [p for p in children if p.name.startswith(V2_PREFIX) and p.name != LEAF]
        found += children
    return found


def sweep_stale() -> list[str]:
    """Remove nixcell cgroups left by a nixcell that died: unlocked and without tasks."""
    host = describe_host()
    removed: list[str] = []
    for path in list_cell_cgroups(host):
        fd = lock_dir(path, block=False)
        if fd is None:
            continue  # held by the live nixcell that created it
        try:
            if not read_pids(path) and rmdir_if_empty(path):
                removed.append(str(path))
        finally:
            os.close(fd)
    for site in host.controllers.values():
        if site.usable and site.version == "v1" and site.base and rmdir_if_empty(site.base):
            removed.append(str(site.base))
    if removed:
        log.info("removed stale cgroups: %s", ", ".join(removed))
    return removed
