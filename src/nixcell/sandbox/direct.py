"""The CLI's warm-path executor: a cached plan's cell, started with ``fork``/``exec``.

It starts the same cell as ``runner.execute`` (same bwrap arguments, memfds, uid slot, held
namespaces, cgroups, timeout and teardown) but imports neither ``subprocess`` nor ``json``: the
child joins the cell's cgroups and switches to the cell's uid itself, where the normal path
runs a shell and ``nsenter`` for that, then becomes bwrap (or the namespace launcher). It
handles every plan without a network; ``supports`` says so, and the CLI gives the rest (and
anything needing a PTY) to the normal path.

Teardown is the normal path's: on a timeout, Ctrl-C or SIGTERM the cell's pid-1 is killed (its
whole pid namespace dies), then bwrap, then whatever is left in its cgroups; the cell's orphaned
pid-1 is reaped, the cgroups removed, the namespaces and the uid slot released.
"""

from __future__ import annotations

import os
import time

from nixcell.errors import CellFailedError, SandboxError
from nixcell.quiet import suppress
from nixcell.sandbox.bwrapio import (
    bwrap_path,
    end_watch,
    exit_code_of,
    memfd,
    open_nofollow,
    parse_info,
    switched_to,
)
from nixcell.sandbox.nonet import NetProbe, block_pipe

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nixcell.planview import PlanView
    from nixcell.sandbox.cgroups import CellCgroup

_SIGKILL, _SIGPIPE, _SIGXFSZ, _SIG_DFL = 9, 13, 25, 0
_SPAWN_FAILED = 127  # the child's exit status when it could not become bwrap
_STAGE_FAILED = 124  # ... when it could not build the cell's stage


class Outcome:
    """What the cell did: the fields of ``runner.RunResult`` the CLI reports."""

    def __init__(self, exit_code: int, message: str | None, cell_id: str, **more: object) -> None:
        self.exit_code = exit_code
        self.message = message
        self.cell_id = cell_id
        self.network_summary = None
        self.learned_policy = None
        self.no_network = None  # the failed command's attempt at the network (sandbox/nonet.py)
        self.__dict__.update(more)


def supports(plan: PlanView) -> bool:
    """Whether this executor runs the plan: it hands the cell this process's stdio as they are,
    so a cell with a network (the proxy) or a PTY of its own (``-i``) takes the normal one."""
    from nixcell.ttymode import wants_pty

    if wants_pty(getattr(plan, "tty", "never"), False, False):  # (no terminal: cli/fast.py)
        return False
    return plan.network is None and getattr(plan, "backend", "bwrap") == "bwrap"


def execute(plan: PlanView) -> Outcome:
    """Run the cell to completion with this process's stdin, stdout and stderr."""
    from nixcell import preflight
    from nixcell.sandbox.launch import CellLaunch
    from nixcell.sandbox.seccache import seccomp_program

    if not supports(plan):
        raise SandboxError("internal: the warm executor runs no cell with a network")
    preflight.check(plan)  # type: ignore[arg-type]
    program = seccomp_program(plan.seccomp_profiles)
    cell_id = f"{os.getpid()}-{os.urandom(5).hex()}"
    launch = CellLaunch(plan)  # type: ignore[arg-type]
    try:
        setup = launch.stage_in_child()  # a root-run cell's binds: staged by bwrap's own process
        if setup is None:
            launch.hold_own()
    except BaseException:
        launch.close()
        raise
    cell = _Cell(cell_id)
    try:
        if plan.limits.needs_cgroup:
            from nixcell.sandbox.cgroups import CgroupLimits, create_cell_cgroup

            lim = plan.limits
            limits = CgroupLimits(memory=lim.memory, pids=lim.pids, cpus=lim.cpus)
            cell.cgroup = create_cell_cgroup(cell_id, limits)
        cell.start(plan, program, launch.launcher(), launch.user(), setup)
        if setup is not None:  # the child holds the stage now: the bind sources' fds can go
            launch.use(None)
        timed_out = not cell.wait(plan.limits.timeout)
        if timed_out:
            cell.kill()
        return _outcome(plan, cell, timed_out)
    except BaseException:
        cell.kill()
        raise
    finally:
        cell.cleanup()
        launch.close()  # last: the uid slot is free only once nothing of the cell is left


def _outcome(plan: PlanView, cell: _Cell, timed_out: bool) -> Outcome:
    from nixcell.verdict import verdict

    oom = False
    if cell.cgroup is not None and plan.limits.memory is not None:
        oom = cell.cgroup.oom_kills() > 0
    lim = plan.limits
    code, message = verdict(exit_code_of(cell.status), timed_out, oom, lim.timeout, lim.memory)
    outcome = Outcome(code, message, cell.cell_id, timed_out=timed_out, oom_killed=oom)
    if code != 0 and not plan.host_network:  # (on the host's network: nothing to hint)
        from nixcell.sandbox.nonet import detect

        outcome.no_network = detect(code, cell.probe)
    return outcome


class _Cell:
    """bwrap's process (``pid``), the cell's pid-1 (``child_pid``) and the cell's cgroups."""

    def __init__(self, cell_id: str) -> None:
        self.cell_id = cell_id
        self.cgroup: CellCgroup | None = None
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.child_pid: int | None = None
        self.status: int = 0  # bwrap's returncode, as subprocess gives it (-N: signal N)
        self.reaped = False
        self.probe: NetProbe | None = None  # the cell's network counters (sandbox/nonet.py)
        self.lent: list[tuple[int, int]] = []  # stdio pipes lent (stdioowner.py)

    def start(
        self,
        plan: PlanView,
        program: bytes,
        launcher: list[str] | None,
        user: tuple[int, int] | None,
        setup: Callable[[], None] | None = None,
    ) -> None:
        """Start bwrap and read its pid-1 (the cell runs inside its cgroups from the start).
        ``setup``: run in the forked child as root before it switches to ``user`` (the stage)."""
        if "net" not in plan.namespaces and not plan.host_network:  # (as bwrap.spawn)
            raise SandboxError("internal: a cell without a network must unshare the network")
        if plan.identity == "subordinate" and user is None and not launcher:
            raise SandboxError("internal: a root-run cell needs its own uid")
        if (plan.stage or plan.scratch is not None) and not (launcher or setup):
            raise SandboxError("internal: a cell with staged mounts needs its mount namespace")
        fds = {name: memfd("nixcell-data", data) for name, data in plan.files()}
        try:  # bind sources opened without following links (plan.MountOp.by_fd)
            for name, src in plan.paths():
                fds[name] = open_nofollow(src)
        except BaseException:
            for fd in fds.values():
                os.close(fd)
            raise
        fds["seccomp"] = memfd("nixcell-seccomp", program)
        info_r, info_w = os.pipe2(os.O_CLOEXEC)
        # the command waits until the cell's network counters are open (as bwrap.release)
        block_r, block_w = block_pipe()
        args = ["--info-fd", str(info_w), "--block-fd", str(block_r), *plan.bwrap_args(fds)]
        cut = len(args) - len(plan.command) - 1  # the command goes on bwrap's real argv
        args_fd = memfd("nixcell-args", b"\0".join(a.encode() for a in args[:cut]) + b"\0")
        argv = [*(launcher or ()), bwrap_path(), "--args", str(args_fd), *args[cut:]]
        procs = [str(p) for p in self.cgroup.procs_files()] if self.cgroup is not None else []
        try:
            self.pid = _spawn(argv, [*fds.values(), info_w, block_r, args_fd], procs, user, setup)
        except BaseException:
            os.close(block_w)
            raise
        finally:
            for fd in (*fds.values(), info_w, block_r, args_fd):
                os.close(fd)
        try:
            self.pidfd = os.pidfd_open(self.pid)
            chunks = []
            while chunk := os.read(info_r, 4096):
                chunks.append(chunk)
            self.child_pid = parse_info(b"".join(chunks))
            if self.child_pid is None:
                raise CellFailedError("bubblewrap failed before the cell started")
            self.probe = NetProbe.open(self.child_pid)
            owner = user or switched_to(launcher)
            if owner is not None and owner[0] != os.geteuid():  # a root-run cell: as bwrap.spawn
                from nixcell.sandbox.stdioowner import lend

                self.lent = lend([0, 1, 2])  # (this process's stdio is the cell's)
        except BaseException:
            self.kill()  # before the block fd closes: the command never starts
            raise
        finally:
            os.close(info_r)
            os.close(block_w)  # the command runs (or, after a failure, the cell is killed)

    def wait(self, timeout: float | None) -> bool:
        """Wait for bwrap to exit; False when ``timeout`` passed first."""
        if timeout is not None and not self._exited_within(timeout):
            return False
        self._reap(0)
        return True

    def _exited_within(self, seconds: float) -> bool:
        import select

        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        deadline = time.monotonic() + seconds
        while True:  # (poll itself resumes after a signal that raises nothing: PEP 475)
            left = deadline - time.monotonic()
            if left <= 0:
                return bool(poller.poll(0))
            if poller.poll(min(int(left * 1000) + 1, 2**31 - 1)):
                return True

    def _reap(self, flags: int) -> bool:
        if self.reaped or self.pid is None:
            return True
        pid, status = os.waitpid(self.pid, flags)
        if pid == 0:
            return False
        self.reaped = True
        self.status = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        return True

    def kill(self) -> None:
        """Kill every process of the cell: its pid-1, then bwrap, then what is in its cgroups."""
        if self.pid is not None and not self._reap(os.WNOHANG):
            if self.child_pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(self.child_pid, _SIGKILL)
                # bwrap reaps its child and exits by itself; killing it first would orphan the
                # child's zombie to the host's init, which may never reap it.
                with suppress(OSError):
                    self._exited_within(2)
            if not self._reap(os.WNOHANG):
                with suppress(ProcessLookupError):
                    os.kill(self.pid, _SIGKILL)
                self._reap(0)
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def cleanup(self) -> None:
        end_watch(self)
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self.reaped:
            from nixcell.sandbox.reap import reap

            reap(self.child_pid)  # the cell's pid-1, if it was orphaned to us
        if self.cgroup is not None:
            self.cgroup.remove()


def _spawn(
    argv: list[str],
    pass_fds: list[int],
    procs: list[str],
    user: tuple | None,
    setup: Callable[[], None] | None = None,
) -> int:
    """fork and exec ``argv`` in its own process group, with an empty environment, in ``/``,
    with only stdio and ``pass_fds``: after joining the cgroups ``procs`` (as the invoking
    user, root included), running ``setup`` (still as that user) and switching to ``user``
    (uid, gid; no supplementary groups)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    keep = sorted({*pass_fds, err_w})
    try:
        pid = os.fork()
    except OSError as exc:  # (EAGAIN: out of processes) the normal path's one line
        os.close(err_r)
        os.close(err_w)
        raise SandboxError(f"cannot start bubblewrap: {exc}") from None
    if pid == 0:  # pragma: no cover - the child; it only ever leaves through exec or _exit
        code = _SPAWN_FAILED
        try:
            os.setpgid(0, 0)
            for path in procs:  # a failed join ends here: the cell never runs unlimited
                code = 125
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                os.write(fd, b"0\n")
                os.close(fd)
            code = _SPAWN_FAILED
            if setup is not None:  # a failure ends here, before bwrap: nothing half-staged runs
                code = _STAGE_FAILED
                setup()
                code = _SPAWN_FAILED
            if user is not None:
                os.setgroups([])
                os.setgid(user[1])
                os.setuid(user[0])
            os.chdir("/")
            low = 3
            for fd in keep:
                os.closerange(low, fd)
                low = fd + 1
            os.closerange(low, os.sysconf("SC_OPEN_MAX"))
            for fd in pass_fds:
                os.set_inheritable(fd, True)
            import _signal

            for signum in (_SIGPIPE, _SIGXFSZ):  # Python ignores them; the cell must not
                _signal.signal(signum, _SIG_DFL)
            os.execve(argv[0], argv, {})
        except BaseException as exc:
            if code in (_SPAWN_FAILED, _STAGE_FAILED):
                with suppress(BaseException):
                    os.write(err_w, b"%d %s" % (code, str(exc).encode(errors="replace")[:400]))
        finally:
            os._exit(code)
    os.close(err_w)
    try:
        why = os.read(err_r, 512)
    except BaseException:  # Ctrl-C, SIGTERM before the caller knows the pid: not left running
        with suppress(ProcessLookupError):
            os.kill(pid, _SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(err_r)
    if why:
        os.waitpid(pid, 0)
        code, _, text = why.decode(errors="replace").partition(" ")
        if code == str(_STAGE_FAILED):  # (SandboxError's own words: "cannot bind X ...")
            raise SandboxError(text)
        raise SandboxError(f"cannot start bubblewrap: {text}")
    return pid
