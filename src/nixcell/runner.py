"""The pipeline: spec -> closure -> plan -> cell -> cleanup, with teardown guaranteed.

``run``/``run_async`` take a CellSpec; ``execute``/``execute_async`` take a ready Plan (the CLI's
fast path loads one from its cache). Whatever happens — normal exit, error, timeout, Ctrl-C — the
cell's processes, cgroups and fds are gone when these return or raise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from nixcell.errors import CommandNotFoundError, NixcellError  # noqa: F401 - re-exported
from nixcell.sandbox.launch import CellLaunch
from nixcell.sandbox.seccache import seccomp_program
from nixcell.verdict import OOM_EXIT, TIMEOUT_EXIT, verdict  # noqa: F401 - re-exported

TYPE_CHECKING = False  # not `import typing`: it costs CLI start-up time

if TYPE_CHECKING:
    from typing import IO

    from nixcell.debugtrace import Summary
    from nixcell.nix.closure import Closure
    from nixcell.plan import Plan
    from nixcell.sandbox.bwrap import CellProcess
    from nixcell.sandbox.cgroups import CellCgroup
    from nixcell.sandbox.holder import CellNamespaces
    from nixcell.sandbox.nonet import NoNetwork
    from nixcell.spec import CellSpec


@dataclass(frozen=True)
class RunResult:
    """What a cell did. ``message`` is the one line nixcell adds (timeout, out of memory)."""

    exit_code: int
    duration: float
    cell_id: str
    timed_out: bool = False
    oom_killed: bool = False
    stdout: bytes | None = None
    stderr: bytes | None = None
    message: str | None = None
    network_summary: str | None = None  # "3 requests denied: …" when the proxy refused any
    learned_policy: str | None = None  # --learn: a policy TOML allowing what the cell used
    no_network: NoNetwork | None = None  # the command failed after trying the network
    access: Summary | None = None  # --debug: the failed file and network calls (debugtrace.py)


def new_cell_id() -> str:
    return f"{os.getpid()}-{os.urandom(5).hex()}"


def prepare(
    spec: CellSpec,
    *,
    progress: Callable[[str], None] | None = None,
    volumes: tuple[str, ...] = (),
) -> tuple[Plan, Closure]:
    """Resolve the closure (cached), look at the host, and plan. No cell is started.

    ``volumes``: paths the cell's namespaces hold as bounded volumes (``execute_async``'s
    ``namespaces``)."""
    from nixcell import host
    from nixcell.errors import UnknownPackageError
    from nixcell.nix.resolve import resolve
    from nixcell.plan import plan
    from nixcell.spec import ENV_TOOL, SH_PACKAGE

    proxied: tuple = ()
    if spec.network is not None:  # a bad policy or CA file fails before any nix build
        from nixcell.net.session import build_policy

        proxied = build_policy(spec.network.model_dump()).proxied_cidrs()
        if spec.network.upstream_ca:
            from nixcell.net.tls import upstream_context

            upstream_context(spec.network.upstream_ca)
    from nixcell.nix.storeroot import nix_root
    from nixcell.planstore import check_root_mode

    check_root_mode(spec.store, nix_root(), spec)  # (before anything is built in the root)
    packages = spec.closure_packages()
    tools = spec.closure_tools()
    frozen = None
    if spec.store_dir is not None:  # a copy store mode: an isolated copy needs no nix
        from nixcell.nix import storecopy

        frozen = storecopy.frozen_for(spec, packages, tools)
    try:
        if frozen is not None:
            closure = frozen
        else:
            closure = resolve(packages, spec.nixpkgs, progress=progress, tools=tools)
    except UnknownPackageError as exc:
        added = [p for p in packages[len(spec.packages) :] if p == SH_PACKAGE]
        added += [p for p in tools.values() if p == ENV_TOOL]
        what = next((p for p in added if f"'{p}'" in exc.message), None)
        if what is not None:
            use = "/bin/sh" if what == SH_PACKAGE else "/usr/bin/env"
            raise UnknownPackageError(
                f"the package set has no {what}, which nixcell adds for {use}: rebuild "
                "the offline set with `nixcell offline build`, or pass --no-sh",
                detail=f"{exc.message}\n{exc.detail or ''}",
            ) from None
        raise
    copy = None
    if spec.store_dir is not None:
        copy = storecopy.made_for(spec, packages, tools, closure, frozen, progress)
    facts = host.gather(spec, volumes, copy)
    return plan(spec, closure, facts, proxied), closure


def check_command(plan: Plan) -> None:
    """Fail early, in one line, when the command or ``--cwd`` does not exist in the cell."""
    from nixcell import preflight

    preflight.check(plan)


def _make_cgroup(plan: Plan, cell_id: str) -> CellCgroup | None:
    if not plan.limits.needs_cgroup:
        return None
    from nixcell.sandbox.cgroups import CgroupLimits, create_cell_cgroup

    lim = plan.limits
    return create_cell_cgroup(
        cell_id, CgroupLimits(memory=lim.memory, pids=lim.pids, cpus=lim.cpus)
    )


def _spawn(
    plan: Plan,
    cell_id: str,
    program: bytes,
    cgroup: CellCgroup | None,
    launch: CellLaunch,
    streams: tuple[object, object, object] | list[object],
    pass_fds: tuple[int, ...] | list[int] = (),
    ctty_path: str | None = None,
) -> CellProcess:
    """Start bwrap for the plan, through its namespaces and as its own uid (``launch``)."""
    from nixcell.sandbox import bwrap

    stdin, stdout, stderr = streams
    return bwrap.spawn(
        plan,
        cell_id=cell_id,
        seccomp_program=program,
        cgroup=cgroup,
        stdin=stdin,  # type: ignore[arg-type]
        stdout=stdout,  # type: ignore[arg-type]
        stderr=stderr,  # type: ignore[arg-type]
        launcher=launch.launcher(),
        extra_fds=pass_fds,
        user=launch.user(),
        ctty_path=ctty_path,
    )


def _finish(
    plan: Plan,
    cell: CellProcess,
    returncode: int,
    started: float,
    timed_out: bool,
    out: bytes | None,
    err: bytes | None,
) -> RunResult:
    from nixcell.sandbox.bwrap import exit_code_of

    oom = False
    if cell.cgroup is not None and plan.limits.memory is not None:
        oom = cell.cgroup.oom_kills() > 0
    lim = plan.limits
    code, message = verdict(exit_code_of(returncode), timed_out, oom, lim.timeout, lim.memory)
    return RunResult(
        exit_code=code,
        duration=time.monotonic() - started,
        cell_id=cell.cell_id,
        timed_out=timed_out,
        oom_killed=oom,
        stdout=out,
        stderr=err,
        message=message,
    )


def _with_no_network(
    plan: Plan, result: RunResult, cell: CellProcess, session: object | None
) -> RunResult:
    """The failed command's attempt at the network, if it made one (sandbox/nonet.py)."""
    if result.exit_code == 0 or plan.host_network:  # (on the host's network: nothing to hint)
        return result
    from nixcell.sandbox import nonet

    audit = getattr(session, "audit", None)
    found = nonet.detect(
        result.exit_code,
        cell.probe,
        networked=session is not None,
        denied=getattr(audit, "denied", ()),
    )
    return dataclasses.replace(result, no_network=found) if found is not None else result


def execute(
    plan: Plan,
    *,
    capture_output: bool = False,
    input: bytes | None = None,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    trace: bool = False,
) -> RunResult:
    """Run a planned cell to completion (blocking). ``trace``: under strace from outside, the
    failed calls summarised in ``access`` (``sandbox/tracer.py``; refused without strace)."""
    if plan.backend != "bwrap":
        from nixcell import backendrun

        return backendrun.execute(
            plan, capture_output=capture_output, input=input, stdin=stdin, stdout=stdout,
            stderr=stderr, trace=trace,
        )  # fmt: skip
    from nixcell.sandbox import bwrap, stdio

    if trace:
        from nixcell.sandbox.tracer import CellTracer

        tracer = CellTracer(plan)
    else:
        tracer = None
    check_command(plan)
    program = seccomp_program(plan.seccomp_profiles)
    cell_id = new_cell_id()
    if capture_output:
        stdout = stderr = subprocess.PIPE
    if input is not None:
        stdin = subprocess.PIPE
    session = proxy = None
    launch = CellLaunch(plan)
    try:
        if plan.network is not None:
            # The proxy runs in a thread that starts on the first connection (net/session.py).
            from nixcell.net import attach
            from nixcell.net.session import LazyProxy, prepare_cell_network

            attach.refuse_cell_writable(plan)
            session = prepare_cell_network(plan.network, cell_id, launch.holder_args())
            launch.use(session.net)
            plan = attach.with_network(plan, session)
            proxy = LazyProxy(session)
        else:
            launch.hold_own()
    except BaseException:
        if session is not None:
            session.release()
        launch.close()
        raise
    cgroup = None
    started = time.monotonic()
    cell = None
    term = None
    try:
        cgroup = _make_cgroup(plan, cell_id)
        term = stdio.wire(plan, (stdin, stdout, stderr), launch, input)
        io = term.streams if term is not None else (stdin, stdout, stderr)
        cell = _spawn(plan, cell_id, program, cgroup, launch, io, ctty_path=term and term.ctty_path)
        bwrap.finish_start(cell, tracer.attach if tracer is not None else None)
        timed_out = False
        out = err = None
        try:
            if term is not None:
                timed_out, out, err = term.wait(cell, plan.limits.timeout)
            elif capture_output or input is not None:
                out, err = cell.proc.communicate(input, timeout=plan.limits.timeout)
            else:
                cell.proc.wait(timeout=plan.limits.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            cell.kill()
            out, err = cell.proc.communicate()
        result = _finish(plan, cell, cell.proc.returncode, started, timed_out, out, err)
        if term is not None and term.escaped:
            result = dataclasses.replace(result, message="the cell was ended (~. typed)")
        if session is not None and proxy is not None:
            proxy.stop()
            session.release()
            result = attach.with_outcome(result, session)
        if tracer is not None:
            result = dataclasses.replace(result, access=tracer.finish())
        return _with_no_network(plan, result, cell, session)
    except BaseException:
        if cell is not None:
            cell.kill()
            with contextlib.suppress(Exception):
                cell.proc.communicate()
        raise
    finally:
        if term is not None:  # the host terminal's modes are back before anything is printed
            term.close()
        if tracer is not None:
            tracer.close()
        if cell is not None:
            cell.close_fds()
            cell.close_probe()
            cell.reap()
        if cgroup is not None:
            cgroup.remove()
        if proxy is not None:
            proxy.stop()
        if session is not None:
            session.release()
        launch.close()  # last: the uid slot is free only once nothing of the cell is left


def run(spec: CellSpec, **kwargs: object) -> RunResult:
    """Run a cell for this spec: the whole pipeline, in-process. See ``execute`` for kwargs."""
    plan, _ = prepare(spec)
    return execute(plan, **kwargs)  # type: ignore[arg-type]


# -- asyncio ---------------------------------------------------------------------------------


async def execute_async(
    plan: Plan,
    *,
    capture_output: bool = False,
    input: bytes | None = None,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    pass_fds: tuple[int, ...] | list[int] = (),
    namespaces: CellNamespaces | None = None,
    on_exit: Callable[[RunResult], object] | None = None,
    on_start: Callable[[CellProcess, object | None], None] | None = None,
    terminal: int | None = None,
) -> RunResult:
    """Run a planned cell without blocking the event loop; cancellation kills the cell.

    ``pass_fds`` are inherited by the cell's command under the same numbers (a front's private
    channel to an agent inside the cell, e.g. MCP sessions); they must not be CLOEXEC.
    ``namespaces``: held namespaces to start the cell inside (``holder.create_volume``: an MCP
    session's workspace, kept across the session's cells). ``on_start(cell, network session)``
    is called once the command runs (an MCP session watches its counters per call).
    ``on_exit`` gets the result once the cell has ended, before a teardown that then waits on
    the loop (a front answers first: MCP's pool); it still completes before this returns.
    ``terminal``: the slave of a pseudo-terminal the caller made and holds the master of (the
    job service's interactive jobs; never a terminal of the caller's own): the cell's stdin,
    stdout and stderr, and the controlling terminal of the command's session (``ctty.py``),
    whatever the plan's ``tty``. The caller may close its slave once ``on_start`` ran.
    """
    import asyncio

    if plan.backend != "bwrap":
        from nixcell import backendrun

        backendrun.refuse_unsupported(
            plan, pass_fds=pass_fds, namespaces=namespaces, terminal=terminal is not None
        )
        return await backendrun.execute_async(
            plan, capture_output=capture_output, input=input, stdin=stdin, stdout=stdout,
            stderr=stderr, on_exit=on_exit, on_start=on_start,
        )  # fmt: skip
    from nixcell.net import attach
    from nixcell.sandbox import aio, bwrap

    check_command(plan)
    ctty_path = None
    if terminal is not None:
        from nixcell.sandbox import pty

        if capture_output or input is not None or (stdin, stdout, stderr) != (None,) * 3:
            raise NixcellError("internal: a cell on a terminal has no other stdio")
        ctty_path = pty.given_slave(plan, terminal)
        stdin = stdout = stderr = terminal
    program = seccomp_program(plan.seccomp_profiles)
    cell_id = new_cell_id()
    if capture_output:
        stdout = stderr = subprocess.PIPE
    if input is not None:
        stdin = subprocess.PIPE
    session = None
    launch = CellLaunch(plan, namespaces)
    try:
        if plan.network is not None:
            attach.refuse_cell_writable(plan)
            plan, session = await attach.open_network(plan, cell_id, launch.holder_args())
            launch.use(session.net)  # type: ignore[attr-defined]
        else:
            launch.hold_own()
    except BaseException:
        launch.close()
        raise
    cgroup = None
    started = time.monotonic()
    cell = None
    info = bytearray()
    try:
        if terminal is not None and launch.identity is not None:  # a root-run cell's own tty
            os.fchown(terminal, launch.identity.uid, -1)
        cgroup = _make_cgroup(plan, cell_id)
        io = (stdin, stdout, stderr)
        cell = _spawn(plan, cell_id, program, cgroup, launch, io, pass_fds, ctty_path)
        await aio.read_fd(cell._fds[0], info)
        bwrap.release(cell, bytes(info))
        if on_start is not None:
            on_start(cell, session)
        proc = cell.proc
        readers = []
        for stream in (proc.stdout, proc.stderr):
            readers.append(asyncio.ensure_future(aio.read_fd(stream.fileno())) if stream else None)
        if input is not None and proc.stdin is not None:
            await asyncio.to_thread(aio.feed, proc.stdin, input)
        timed_out = False
        try:
            returncode = await asyncio.wait_for(aio.wait_exit(proc), plan.limits.timeout)
        except TimeoutError:
            timed_out = True
            cell.kill()
            returncode = await aio.wait_exit(proc)
        out, err = [await r if r is not None else None for r in readers]
        result = _finish(plan, cell, returncode, started, timed_out, out, err)
        if session is not None:
            await session.close()
            result = attach.with_outcome(result, session)
        result = _with_no_network(plan, result, cell, session)
        if on_exit is not None:
            on_exit(result)
        return result
    except BaseException:
        if cell is not None:
            if cell.child_pid is None and cell._fds:  # cancelled before bwrap named its pid-1
                cell.child_pid = aio.finish_info(cell._fds[0], bytes(info))
            cell.kill()
            with contextlib.suppress(Exception):
                cell.proc.wait(timeout=10)
        raise
    finally:
        if cell is not None:
            cell.close_fds()
            cell.close_probe()
            cell.reap()
            for stream in (cell.proc.stdin, cell.proc.stdout, cell.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        cancelled = await aio.until_empty(cgroup) if cgroup and on_exit else None
        if cgroup is not None:
            cgroup.remove()
        if session is not None:
            await session.close()
        launch.close()
        if cancelled is not None:
            raise cancelled  # only now: nothing of the cell is left


async def run_async(spec: CellSpec, **kwargs: object) -> RunResult:
    """``run`` for asyncio programs; a cold resolution runs in a worker thread."""
    import asyncio

    plan, _ = await asyncio.to_thread(prepare, spec)
    return await execute_async(plan, **kwargs)  # type: ignore[arg-type]
