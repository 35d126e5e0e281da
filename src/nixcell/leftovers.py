"""What a killed nixcell leaves behind, and sweeping it: at start (cheaply) and in ``nixcell gc``.

A ``kill -9`` of nixcell skips every ``finally``. The cell itself dies with it (bwrap's
``--die-with-parent``; the namespace helper is short-lived and the namespace lives only as long
as nixcell's fds), but cell cgroups stay on the host (``sandbox/cgroups.py`` ``sweep_stale``:
unlocked ones). A Docker cell's containers outlive a killed nixcell (Docker has no
die-with-parent): they are labelled with their owner and swept here (``sandbox/docker.py``);
so are a gVisor cell's runsc state (its ``--root`` is named after its owner) and bundle
(``sandbox/gvisor.py``), its sandbox being in its cgroup (killed by ``sweep_stale``) and
attached to a ``runsc run`` that dies with nixcell (PDEATHSIG).
A microVM's QEMU dies with nixcell (a parent-death signal); any that did not, named after a
dead owner, is killed here, its staging mounts going with it (``sandbox/microvm.py``).
MCP session workspaces leave nothing: they are volumes held by the server's fds
(``sandbox/holder.create_volume``), gone with the process.

``sweep_if_due`` runs on every start. It sweeps at once when a killed run left its marker
(``RunMarker``: a file ``flock``-ed for the run's lifetime), and otherwise at most once per
``SWEEP_EVERY`` seconds (for leftovers of runs that had no marker, e.g. API users); a warm run
pays one ``listdir`` and one ``stat``.
"""

from __future__ import annotations

import os
import time

from nixcell import paths
from nixcell.errors import NixcellError
from nixcell.quiet import suppress


def _log():  # logging is imported only when a sweep runs (not on warm runs)
    import logging

    return logging.getLogger(__name__)


SWEEP_EVERY = 60.0  # seconds between start-up sweeps
STAMP = "sweep.stamp"
RUNS = "runs"


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: fields after the last ')' are fixed.
    return int(data[data.rindex(b")") + 2 :].split()[19])


def owner_tag() -> str:
    """``<pid>-<start time>`` of this process: names a leftover after its owner."""
    return f"{os.getpid()}-{_start_time(os.getpid())}"


def sweep() -> dict[str, list[str]]:
    """Sweep every kind of leftover whose owner is dead; what was removed, by kind."""
    from nixcell.sandbox.cgroups import sweep_stale

    dead = _dead_markers()  # read first: whatever those runs left is swept below
    found: dict[str, list[str]] = {"cgroups": []}
    try:
        found["cgroups"] = sweep_stale()
    except (OSError, NixcellError) as exc:
        _log().warning("cannot sweep stale cgroups: %s", exc)
    if os.path.isdir("/run/systemd/system"):  # the systemd backend's units (sandbox/systemd.py)
        _sweep_units(found)
    try:  # Docker cells: containers and host directories of dead runs (one connect if none)
        from nixcell.sandbox.docker import sweep as sweep_docker

        found["docker"] = sweep_docker()
    except (OSError, NixcellError) as exc:
        _log().warning("cannot sweep docker cells: %s", exc)
    try:  # gVisor cells: runsc state and bundles of dead runs (after their cgroups, above)
        from nixcell.sandbox.gvisor import sweep as sweep_gvisor

        found["gvisor"] = sweep_gvisor()
    except (OSError, NixcellError) as exc:
        _log().warning("cannot sweep gvisor cells: %s", exc)
    try:  # microVMs: QEMUs named after a dead owner (their staging mounts die with them)
        from nixcell.sandbox.microvm import sweep as sweep_microvm

        found["microvm"] = sweep_microvm()
    except (OSError, NixcellError) as exc:
        _log().warning("cannot sweep microVM cells: %s", exc)
    for path in dead:
        with suppress(OSError):
            os.unlink(path)
    if any(found.values()):
        _log().info("swept leftovers of killed runs: %s", found)
    return found


def _sweep_units(found: dict[str, list[str]]) -> None:
    """Transient units of cells whose nixcell is gone (``kill -9``): stopped and cleared."""
    import subprocess

    from nixcell.sandbox.systemd import sweep_units

    try:
        units = sweep_units()
    except (OSError, NixcellError, subprocess.SubprocessError) as exc:
        _log().warning("cannot sweep stale systemd units: %s", exc)
        return
    if units:
        found["units"] = units


def _runs_dir() -> str:
    return os.path.join(paths.state_root(), RUNS)


class RunMarker:
    """While a run that leaves host state (cgroups, workspaces) is alive: a locked marker file.

    ``<state>/runs/<pid>-<start>`` is created and ``flock``-ed for the run's lifetime and removed
    at its end. A marker whose lock is free was left by a killed run: the next start sees it in
    one ``listdir`` and sweeps at once, instead of waiting for the periodic sweep.
    """

    def __init__(self) -> None:
        self.path: str | None = None
        self.fd: int | None = None

    def __enter__(self) -> RunMarker:
        import fcntl

        try:
            from nixcell.fsio import private_dir

            directory = private_dir(_runs_dir())
            path = os.path.join(directory, f"{owner_tag()}-{os.urandom(4).hex()}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.path, self.fd = path, fd
        except (OSError, NixcellError) as exc:
            _log().debug("no run marker: %s", exc)  # the periodic sweep still covers us
        return self

    def __exit__(self, *exc: object) -> None:
        if self.path is not None and self.fd is not None:
            with suppress(OSError):
                os.unlink(self.path)
            os.close(self.fd)


def _dead_markers() -> list[str]:
    """Markers of runs that were killed (their lock is free)."""
    try:
        names = os.listdir(_runs_dir())
    except OSError:
        return []
    if not names:
        return []
    import fcntl

    dead = []
    for name in names:
        path = os.path.join(_runs_dir(), name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            dead.append(path)
        except OSError:
            pass  # held: that run is alive
        finally:
            os.close(fd)
    return dead


def sweep_if_due(every: float = SWEEP_EVERY) -> dict[str, list[str]] | None:
    """``sweep`` when a killed run left a marker, or when the last sweep is ``every`` seconds
    old; otherwise (the warm path) only one ``listdir`` and one ``stat`` happen, and None."""
    dead = _dead_markers()
    stamp = os.path.join(paths.state_root(), STAMP)
    now = time.time()
    if not dead:
        try:
            if now - os.stat(stamp).st_mtime < every:
                return None
        except OSError:
            pass
    try:
        from nixcell.fsio import private_dir

        private_dir(paths.state_root())
        fd = os.open(stamp, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.utime(fd, (now, now))
        os.close(fd)
    except (OSError, NixcellError) as exc:
        _log().debug("no sweep stamp: %s", exc)
    return sweep()
