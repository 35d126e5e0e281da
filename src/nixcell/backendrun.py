"""Running a planned cell on a backend other than bwrap (``sandbox/backends.py``'s seam).

The same guarantees as ``runner``'s bwrap path: the backend is checked first (it must be able
to run here and to enforce all of the plan, or nothing runs); the network session (policy,
credentials, audit, proxy) is the engine's, made before the cell starts; the timeout kills the
cell; whatever happens — exit, error, timeout, cancellation — the backend's ``close`` has
removed everything of the cell when this returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time

from nixcell.errors import LimitUnavailableError, NixcellError
from nixcell.sandbox import backends
from nixcell.verdict import verdict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nixcell.plan import Plan
    from nixcell.runner import RunResult


def refuse_unsupported(plan: Plan, **asked: object) -> None:
    """Engine features only the bwrap executor has: refused in one line, never ignored."""
    names = {
        "pass_fds": "inherited file descriptors (MCP sessions)",
        "namespaces": "held namespaces (MCP session workspaces)",
        "terminal": "a job's terminal (interactive jobs)",
        "trace": "--debug's tracing",
    }
    wanted = [names[k] for k, v in asked.items() if v]
    if plan.tty == "always":
        wanted.append("a terminal of its own (-i)")
    if wanted:
        raise LimitUnavailableError(
            f"the {plan.backend} backend cannot give a cell {', '.join(wanted)}; use "
            "--backend bwrap for it"
        )


def _fd(stream: object, default: int | None) -> int | None:
    if stream is None:
        return default
    if stream == subprocess.DEVNULL:
        return None
    if isinstance(stream, int):
        return stream
    return stream.fileno()  # type: ignore[attr-defined]


def _host_id() -> tuple[object | None, tuple[int, int] | None]:
    """A root-run cell's own unprivileged host uid/gid (``identity.py``); None for a user."""
    if os.geteuid() != 0:
        return None, None
    from nixcell.sandbox import identity

    ident = identity.allocate()
    return ident, (ident.uid, ident.gid)


async def execute_async(
    plan: Plan,
    *,
    capture_output: bool = False,
    input: bytes | None = None,
    stdin: object = None,
    stdout: object = None,
    stderr: object = None,
    on_exit: Callable[[RunResult], object] | None = None,
    on_start: Callable[[object, object | None], None] | None = None,
    inherit: bool = True,
) -> RunResult:
    """``runner.execute_async`` for the plan's backend. Unset streams are this process's own
    (as with subprocess); ``subprocess.DEVNULL`` is /dev/null."""
    from nixcell.net import attach
    from nixcell.runner import RunResult, check_command, new_cell_id

    backend = backends.check(plan)
    check_command(plan)
    cell_id = new_cell_id()
    ident, host_id = _host_id()
    cell = backend.open(plan, cell_id, host_id)
    session = None
    cell_ends: list[int] = []  # pipe ends the cell's processes hold (ours closed once started)
    own = _OwnEnds()
    readers: list[asyncio.Future[bytes] | None] = [None, None]
    feeder: asyncio.Future[None] | None = None
    started = time.monotonic()
    try:
        if plan.network is not None:
            from nixcell.net.session import open_cell_network

            attach.refuse_cell_writable(plan)
            net = await cell.network()
            session = await open_cell_network(plan.network, cell_id, net=net)
            plan = attach.with_network(plan, session)
        fds: list[int | None] = []
        for index, stream in enumerate((stdin, stdout, stderr)):
            if (index == 0 and input is not None) or (index > 0 and capture_output):
                r, w = os.pipe2(os.O_CLOEXEC)
                theirs, ours = (r, w) if index == 0 else (w, r)
                cell_ends.append(theirs)
                own.add(ours)
                fds.append(theirs)
                if index == 0:
                    feeder = asyncio.ensure_future(own.feed(ours, input or b""))
                else:
                    readers[index - 1] = asyncio.ensure_future(own.read_all(ours))
            else:
                fds.append(_fd(stream, index if inherit else None))
        await cell.start(plan, backends.CellIO(fds[0], fds[1], fds[2], session))
        _close_all(cell_ends)  # the backend's processes hold their copies: EOF follows exit
        if on_start is not None:
            on_start(cell, session)
        timed_out = False
        try:
            ended = await asyncio.wait_for(cell.wait(), plan.limits.timeout)
        except TimeoutError:
            timed_out = True
            await cell.kill()
            ended = await cell.wait()
        out, err = [await r if r is not None else None for r in readers]
        lim = plan.limits
        code, message = verdict(ended.returncode, timed_out, ended.oom, lim.timeout, lim.memory)
        result = RunResult(
            exit_code=code,
            duration=time.monotonic() - started,
            cell_id=cell_id,
            timed_out=timed_out,
            oom_killed=ended.oom,
            stdout=out,
            stderr=err,
            message=message,
        )
        if session is not None:
            await session.close()  # type: ignore[attr-defined]
            result = attach.with_outcome(result, session)
        if on_exit is not None:
            on_exit(result)
        return result
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.shield(cell.kill())
        raise
    finally:
        await asyncio.shield(cell.close())  # nothing of the cell is left: pipes reach EOF
        _close_all(cell_ends)
        for task in (*readers, feeder):
            if task is not None and not task.done():
                task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*(t for t in (feeder, *readers) if t is not None))
        own.close()
        if session is not None:
            await session.close()  # type: ignore[attr-defined]
        if ident is not None:
            ident.release()  # type: ignore[attr-defined]


def execute(plan: Plan, *, trace: bool = False, **kwargs: object) -> RunResult:
    """The blocking form (the CLI): this process's stdio unless told otherwise."""
    refuse_unsupported(plan, trace=trace)
    return asyncio.run(execute_async(plan, **kwargs))  # type: ignore[arg-type]


def _close_all(fds: list[int]) -> None:
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


class _OwnEnds:
    """Our ends of the cell's pipes, each closed exactly once (by its task, or at the end)."""

    def __init__(self) -> None:
        self.fds: set[int] = set()

    def add(self, fd: int) -> None:
        self.fds.add(fd)

    def _close(self, fd: int) -> None:
        if fd in self.fds:
            self.fds.discard(fd)
            os.close(fd)

    async def feed(self, fd: int, data: bytes) -> None:
        """Write ``data`` then close: the cell sees EOF on its stdin."""
        await asyncio.to_thread(_write_all, fd, data)
        self._close(fd)

    async def read_all(self, fd: int) -> bytes:
        from nixcell.sandbox import aio

        data = await aio.read_fd(fd)
        self._close(fd)
        return data

    def close(self) -> None:
        for fd in list(self.fds):
            self._close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    with contextlib.suppress(BrokenPipeError):
        while view:
            view = view[os.write(fd, view) :]


def describe(plan: Plan) -> dict[str, object]:
    """The backend's own argv/spec for ``--dry-run --json`` (its refusals listed, not raised)."""
    backend = backends.get(plan.backend)
    try:
        rendered = backend.render(plan)
    except NixcellError as exc:
        rendered = {"error": exc.message}
    return {"name": plan.backend, "refusals": backend.refusals(plan), **rendered}
