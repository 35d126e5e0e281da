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

import errno
import os
import time
from pathlib import Path
from types import TracebackType

from nixcell.errors import LimitUnavailableError, SandboxError
from nixcell.quiet import LazyLogger, suppress
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
from nixcell.sandbox.cgrouplimits import (
    FLAGS,
    CgroupDir,
    CgroupLimits,
    flag_of,
    limit_writes,
    plan_cell_cgroup,
)

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

log = LazyLogger(__name__)  # (logging is imported only when something is logged)

_POLL = 0.01
_SIGKILL = 9  # not `signal.SIGKILL`: nothing else on the warm path imports `signal`


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
                    f"cannot enforce {flag_of(d)}: cannot create {d.path}: {e.strerror}"
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
                    f"cannot enforce {flag_of(d)}: cannot enable {' '.join(d.controllers)} in "
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

    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` of every hierarchy: a process writing 0 there joins the cell."""
        return [d.path / "cgroup.procs" for d in self._dirs]

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
                    with suppress(ProcessLookupError):
                        os.kill(pid, _SIGKILL)
                if not pids or frozen:  # a frozen cgroup cannot fork: that list was complete
                    break
                time.sleep(_POLL)
        finally:
            if fz is not None:
                with suppress(OSError):
                    freeze(fz.path, fz.version, False)

    @staticmethod
    def _v2_kill(d: CgroupDir) -> bool:
        try:
            write_value(d.path / "cgroup.kill", "1")
            return True
        except OSError:  # no cgroup.kill before Linux 5.14: freeze and kill one by one
            return False

    def wait_empty(self, timeout: float) -> bool:
        """True once no process is left in the cell (within ``timeout`` seconds)."""
        return self._wait_empty(timeout)

    def _wait_empty(self, timeout: float) -> bool:
        """Wait for the cell's processes to leave; a cell that has just ended is usually empty
        within a millisecond (its killed processes are still being released): poll from
        0.25 ms up, not a flat 10 ms that every call paid (on the event loop, for MCP)."""
        deadline = time.monotonic() + timeout
        delay = _POLL / 40
        while self.pids():
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, _POLL)
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
    """Remove nixcell cgroups left by a nixcell that died: the unlocked ones.

    Each live cell's dir is held ``flock``-ed by its nixcell from before any process joins it,
    so an unlocked dir that still has processes is a leftover too (its owner was killed before
    its cell was): those processes are killed first, then the dir is removed.
    """
    host = describe_host()
    removed: list[str] = []
    for path in list_cell_cgroups(host):
        fd = lock_dir(path, block=False)
        if fd is None:
            continue  # held by the live nixcell that created it
        try:
            if read_pids(path):
                _kill_orphaned(path)
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


def _kill_orphaned(path: Path) -> None:
    """SIGKILL what is left in an orphaned cell cgroup (``cgroup.kill`` where v2 has it)."""
    with suppress(OSError):
        write_value(path / "cgroup.kill", "1")
    for _ in range(100):
        pids = read_pids(path)
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, _SIGKILL)
        time.sleep(_POLL)
    log.warning("cgroup %s: processes %s survive SIGKILL", path, read_pids(path))
