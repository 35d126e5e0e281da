"""One pre-started one-shot cell of the pool (``pool.py``): its plan, its pipes, its one call.

The cell runs the environment's one-shot plan with a driver (``pool_drivers.py``) in place of
the code; the host keeps its ends of the code pipe, the event pipe (``r`` ready, ``s`` started)
and the output pipes, and hands the code over when a call takes the cell.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import subprocess
import time

from nixcell.mcp.config import PROGRAMS
from nixcell.mcp.pool_drivers import BASH_DRIVER, DRIVER_FILES, NODE_DRIVER, PYTHON_DRIVER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.mcp.tool import Outcome
    from nixcell.plan import Plan
    from nixcell.runner import RunResult

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # a pooled cell's start; beyond it the cell is discarded
MAX_AGE = 600.0  # a waiting cell older than this is replaced (bounds any staleness)
_DRIVERS = {"python": PYTHON_DRIVER, "node": NODE_DRIVER}


def pooled_plan(plan: Plan, interpreter: str, fds: tuple[int, ...]) -> Plan:
    """The one-shot cell's plan, with the driver waiting for the code instead of the code."""
    from nixcell.mcp.tool import CODE_DIR, CODE_FILES
    from nixcell.plan import MountOp

    path = f"{CODE_DIR}/{CODE_FILES[interpreter]}"
    target = plan.with_command([PROGRAMS[interpreter], path]).command
    args = (str(fds[0]), str(fds[1]), path, *map(str, fds[2:]))
    mounts = [*plan.mounts[:-1], MountOp("dir", CODE_DIR, perms="0700")]  # as bwrap makes it
    if interpreter == "bash":
        command: tuple[str, ...] = (target[0], "-c", BASH_DRIVER, "nixcell-pool", *args, *target)
    else:
        driver = DRIVER_FILES[interpreter]
        mounts.append(MountOp("data", driver, data=_DRIVERS[interpreter]))
        command = (target[0], driver, *args)
        if interpreter == "node":  # a preload: node runs the file itself
            command = (target[0], "-r", driver, *target[1:], *args[:2])
    limits = dataclasses.replace(plan.limits, timeout=None)  # the call's clock starts later
    return dataclasses.replace(
        plan, command=command, mounts=(*mounts, plan.mounts[-1]), limits=limits
    )


async def _write_all(fd: int, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    os.set_blocking(fd, False)
    while view:
        try:
            view = view[os.write(fd, view) :]
            continue
        except BlockingIOError:
            pass
        writable: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, lambda w=writable: w.done() or w.set_result(None))
        try:
            await writable
        finally:
            loop.remove_writer(fd)


class PooledCell:
    """One cell waiting for its call: the cell task and the host's ends of its pipes."""

    def __init__(self, key: str, plan: Plan, interpreter: str) -> None:
        from nixcell.runner import execute_async

        self.key = key
        self.interpreter = interpreter
        self.timeout = plan.limits.timeout or None
        self.born = time.monotonic()
        code_r, self.code_w = os.pipe()
        self.event_r, event_w = os.pipe()
        self.out_r, out_w = os.pipe()
        self.err_r, err_w = os.pipe()
        self._child_fds = [code_r, event_w, out_w, err_w]  # closed once the cell has them
        passed = [code_r, event_w]
        self.memfd = -1
        if interpreter == "bash":
            self.memfd = os.memfd_create("nixcell-code", 0)  # inherited: the same file
            passed.append(self.memfd)
        for fd in passed:
            os.set_inheritable(fd, True)
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.started: asyncio.Future[bool] = loop.create_future()
        self.exited: asyncio.Future[RunResult] = loop.create_future()  # before the teardown
        self.task: asyncio.Task[RunResult] = asyncio.ensure_future(
            execute_async(
                pooled_plan(plan, interpreter, tuple(passed)),
                pass_fds=passed,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                on_exit=self._on_exit,
            )
        )
        self.task.add_done_callback(lambda _: self._events_end())
        os.set_blocking(self.event_r, False)
        loop.add_reader(self.event_r, self._on_event)

    def _on_event(self) -> None:
        try:
            data = os.read(self.event_r, 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._events_end()
            return
        for byte in data:  # 'r' (interpreter up), then 's' (the code starts)
            target = self.ready if byte == ord("r") else self.started
            if not target.done():
                target.set_result(True)
        if self.ready.done():
            self._close_child_fds()  # the cell holds its own copies now

    def _on_exit(self, result: RunResult) -> None:
        if not self.exited.done():
            self.exited.set_result(result)

    def _events_end(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # already removed / closed
            asyncio.get_running_loop().remove_reader(self.event_r)
        for future in (self.ready, self.started):
            if not future.done():
                future.set_result(False)

    def _close_child_fds(self) -> None:
        fds, self._child_fds = self._child_fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def usable(self) -> bool:
        return not self.task.done() and time.monotonic() - self.born < MAX_AGE

    async def use(self, code: str) -> Outcome | None:
        """Run ``code`` here; None when the cell ended before the code started (no code ran)."""
        from nixcell.mcp.tool import outcome_of, read_output

        payload = code.encode()
        if self.memfd >= 0:  # bash: the code in the memfd, then the pipe's EOF says go
            os.pwrite(self.memfd, payload, 0)
            payload = b""
        readers = read_output(self.out_r, self.err_r)
        began = time.monotonic()
        try:
            with contextlib.suppress(OSError):  # a dead cell: `started` says so
                await _write_all(self.code_w, payload)
            os.close(self.code_w)
            self.code_w = -1
            await asyncio.wait({self.started}, timeout=START_TIMEOUT)
            if not self.started.done() or not self.started.result():
                return None
            result = None
            await asyncio.wait({self.exited, self.task}, timeout=self.timeout)
            duration = time.monotonic() - began  # code sent -> the cell's end
            if self.exited.done():  # (its teardown goes on: the answer need not wait)
                result = self.exited.result()
            elif self.task.done():
                self.task.result()  # the engine failed: its exception
            else:  # the call's timeout, counted from the code's start: kill the cell
                await self.stop()
            (out, out_dropped), (err, err_dropped) = await asyncio.gather(*readers)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
        timed_out = result is None
        return outcome_of(
            result, timed_out, self.timeout, duration, (out, out_dropped), (err, err_dropped)
        )

    async def stop(self) -> None:
        """Kill the cell (if it still runs) and wait for its teardown (cgroups, holders)."""
        if not self.task.done() and not self.exited.done():  # (an ended one is tearing down)
            self.task.cancel()
        await asyncio.wait({self.task})
        if not self.task.cancelled() and self.task.exception() is not None:
            log.debug("pooled cell failed: %s", self.task.exception())
        self._events_end()
        self._close_child_fds()

    async def close(self) -> None:
        """``stop``, then close the host's ends of the pipes."""
        await self.stop()
        for name in ("code_w", "event_r", "out_r", "err_r", "memfd"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
