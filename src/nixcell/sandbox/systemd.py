"""The systemd backend: a cell as a transient service unit (``systemd-run``), hardened.

``systemdunit.py`` turns the plan into the unit's properties (or refusals); this module runs
it. ``systemd-run --wait --pipe`` hands the cell our stdio fds (no process of ours relays cell
data), the unit runs as the cell's own unprivileged host uid (``identity.py``: never host root),
in nixcell's lo-only network namespace when a policy gives a network (NetworkNamespacePath=),
with PrivateNetwork=yes otherwise. The exit status comes from the unit's own record
(``Result``, ``ExecMainCode``, ``ExecMainStatus``): an OOM kill is 137. Timeout and cancel stop
the unit (``systemctl kill``/``stop``); ``close`` stops it and clears its failed record, so
nothing of the cell is left; a killed nixcell's units are swept by ``nixcell gc``
(``sweep_units``: the unit's description names its owner process).

Only where systemd is PID 1 and nixcell runs as root (system units): elsewhere ``availability``
says why not. The unit is generated for systemd 252 (Debian 12) and newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess

from nixcell.errors import LimitUnavailableError, SandboxError
from nixcell.sandbox import systemdunit
from nixcell.sandbox.backends import Availability, BackendExit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.backends import CellIO

log = logging.getLogger(__name__)

MIN_VERSION = 252
RUN_DIR = "/run/nixcell/systemd"
_STATES = ("running", "degraded", "starting", "initializing", "maintenance", "stopping")
OWNER_PREFIX = "nixcell cell owner "


def systemd_version(text: str) -> int | None:
    """``systemctl --version``'s first line: "systemd 252 (252.39-1~deb12u2)"."""
    words = text.split()
    if len(words) >= 2 and words[0] == "systemd" and words[1].isdigit():
        return int(words[1])
    return None


def exit_of(show: dict[str, str]) -> BackendExit:
    """How the unit ended, from ``systemctl show -p Result,ExecMainCode,ExecMainStatus``.

    ExecMainCode is the waitid code: 1 exited (status = exit code), 2 killed, 3 dumped (status =
    signal). Result=oom-kill is the kernel's OOM killer inside the unit's memory limit: 137."""
    result = show.get("Result", "")
    code = show.get("ExecMainCode", "")
    status = show.get("ExecMainStatus", "")
    if result == "oom-kill":
        return BackendExit(137, oom=True)
    if result == "success" and status in ("", "0"):
        return BackendExit(0)
    if not status.isdigit():
        raise SandboxError(f"the systemd unit ended without an exit status (result {result})")
    if code == "1":
        return BackendExit(int(status) & 0xFF)
    if code in ("2", "3"):
        return BackendExit(128 + int(status))
    raise SandboxError(f"the systemd unit ended in an unknown way (code {code!r})")


def _parse_show(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class SystemdBackend:
    name = "systemd"

    def availability(self) -> Availability:
        if not os.path.isdir("/run/systemd/system"):
            return Availability(False, "systemd is not PID 1 here (no /run/systemd/system)")
        if os.geteuid() != 0:
            return Availability(False, "needs root: cells are system units (systemd-run)")
        for tool in ("systemd-run", "systemctl"):
            if shutil.which(tool) is None:
                return Availability(False, f"{tool} is not installed")
        try:
            state = subprocess.run(
                ["systemctl", "is-system-running"], capture_output=True, text=True, timeout=10
            )
            version = subprocess.run(
                ["systemctl", "--version"], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Availability(False, f"systemctl did not answer: {exc}")
        answer = state.stdout.strip()
        if answer not in _STATES:
            return Availability(False, f"systemd does not run here ({answer or 'no answer'})")
        found = systemd_version(version.stdout)
        if found is None or found < MIN_VERSION:
            return Availability(False, f"systemd {found} is too old (need >= {MIN_VERSION})")
        return Availability(True, f"systemd {found}, {answer}")

    def refusals(self, plan: Plan) -> list[str]:
        resolved = _absolute(plan)
        refused = systemdunit.properties(resolved or plan)[1]
        if resolved is None:  # a missing command: the engine's check says so (exit 127)
            refused = [r for r in refused if r != systemdunit.NOT_ABSOLUTE]
        return refused

    def render(self, plan: Plan) -> dict[str, object]:
        plan = _absolute(plan) or plan
        props, _ = systemdunit.properties(plan)
        return {
            "unit": systemdunit.unit_name("<cell-id>"),
            "properties": [f"{k}={v}" for k, v in props],
            "argv": systemdunit.argv(plan, props, "<cell-id>", f"{OWNER_PREFIX}<owner>"),
            "notes": systemdunit.notes(plan),
        }

    def open(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> SystemdCell:
        if host_id is None:
            raise SandboxError("the systemd backend runs cells only as root (system units)")
        return SystemdCell(cell_id, host_id)


class SystemdCell:
    """One transient unit; ``close`` leaves neither the unit nor its files behind."""

    def __init__(self, cell_id: str, host_id: tuple[int, int]) -> None:
        self.cell_id = cell_id
        self.unit = systemdunit.unit_name(cell_id)
        self.host_id = host_id
        self.rundir = os.path.join(RUN_DIR, cell_id)
        self.proc: asyncio.subprocess.Process | None = None

    async def network(self) -> None:
        return None  # the engine's lo-only namespace with the proxy listener

    async def start(self, plan: Plan, io: CellIO) -> None:
        for fd in (io.stdin, io.stdout, io.stderr):
            if fd is not None and os.isatty(fd):
                raise LimitUnavailableError(
                    "the systemd backend does not give a cell a terminal (a unit cannot filter "
                    "TIOCSTI); redirect its input and output, or use --backend bwrap"
                )
        netns = "<netns>"
        net = getattr(io.session, "net", None)
        if plan.network is not None:
            if net is None or net.netns_fd is None:
                raise SandboxError("the systemd backend got no network namespace for the cell")
            netns = f"/proc/{os.getpid()}/fd/{net.netns_fd}"
        plan = _absolute(plan) or plan
        props, refused = systemdunit.properties(plan, self.host_id, self.rundir, netns)
        if refused:  # the engine checked the plan; its network may have added mounts
            raise LimitUnavailableError(f"the systemd backend cannot enforce {'; '.join(refused)}")
        self._write_files(plan)
        description = f"{OWNER_PREFIX}{_owner_tag()}"
        args = systemdunit.argv(plan, props, self.cell_id, description)
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=io.stdin if io.stdin is not None else devnull,
                stdout=io.stdout if io.stdout is not None else devnull,
                stderr=io.stderr if io.stderr is not None else devnull,
                start_new_session=True,
            )
        finally:
            os.close(devnull)

    def _write_files(self, plan: Plan) -> None:
        """The generated files, in a root-owned directory the cell sees only read-only binds of."""
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        os.mkdir(self.rundir, 0o755)
        data = os.path.join(self.rundir, "data")
        os.mkdir(data, 0o755)
        for index, text in systemdunit.data_files(plan, self.host_id).items():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(os.path.join(data, str(index)), flags, 0o644)
            with open(fd, "w", encoding="utf-8") as f:
                f.write(text)

    async def wait(self) -> BackendExit:
        if self.proc is None:
            raise SandboxError("the systemd unit was never started")
        if await self.proc.wait() == 0:
            return BackendExit(0)  # succeeded (a unit that succeeded may be unloaded already)
        # a failed unit stays loaded, with its record, until close() clears it
        out = await _systemctl("show", "-p", "Result,ExecMainCode,ExecMainStatus", self.unit)
        return exit_of(_parse_show(out))

    async def kill(self) -> None:
        await _systemctl("kill", "--signal=SIGKILL", self.unit, check=False)
        await _systemctl("stop", self.unit, check=False)

    async def close(self) -> None:
        await _systemctl("stop", self.unit, check=False)
        await _systemctl("reset-failed", self.unit, check=False)
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        _remove_rundir(self.rundir)


def _absolute(plan: Plan) -> Plan | None:
    """The plan with its program as the cell path execvp would run (systemd-run would look a
    bare name up on the host's PATH); None when the cell has no such program."""
    import dataclasses

    from nixcell.errors import CommandNotFoundError
    from nixcell.preflight import program_path

    if not plan.command:
        return None
    try:
        path = program_path(plan)
    except CommandNotFoundError:
        return None
    return dataclasses.replace(plan, command=(path, *plan.command[1:]))


def _owner_tag() -> str:
    from nixcell.leftovers import owner_tag

    return owner_tag()


def _remove_rundir(path: str) -> None:
    """Our own files only (the cell never had a writable view of them)."""
    data = os.path.join(path, "data")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(data):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(data, name))
        os.rmdir(data)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


async def _systemctl(*args: str, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "systemctl", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()[-1:] or ["failed"]
        raise SandboxError(f"systemctl {args[0]} {args[-1]}: {why[0]}")
    return out.decode(errors="replace")


def sweep_units() -> list[str]:
    """``nixcell gc``: stop the units of nixcell processes that are gone (``kill -9``)."""
    if not os.path.isdir("/run/systemd/system") or os.geteuid() != 0:
        return []
    from nixcell.leftovers import _start_time

    listed = subprocess.run(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "nixcell-*.service"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    swept = []
    for line in listed.stdout.splitlines():
        unit = (line.split() or [""])[0]
        if not unit.startswith("nixcell-") or not unit.endswith(".service"):
            continue
        shown = subprocess.run(
            ["systemctl", "show", "-p", "Description", "--value", unit],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        desc = shown.stdout.strip()
        if not desc.startswith(OWNER_PREFIX):
            continue
        pid, _, start = desc.removeprefix(OWNER_PREFIX).partition("-")
        if pid.isdigit() and str(_start_time(int(pid))) == start:
            continue  # its owner still runs
        for verb in ("stop", "reset-failed"):
            subprocess.run(["systemctl", verb, unit], capture_output=True, timeout=60)
        cell_id = unit.removeprefix("nixcell-").removesuffix(".service")
        if "/" not in cell_id and cell_id not in (".", ".."):
            _remove_rundir(os.path.join(RUN_DIR, cell_id))
        swept.append(unit)
    return swept


BACKEND = SystemdBackend()
