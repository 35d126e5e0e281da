"""Interactive jobs in-process: ``jobs.terminal`` with real cells on the engine's
``execute_async(terminal=)`` — relay, scrollback, writer, resize, detach, cancel, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys

import pytest

from nixcell.jobs import terminal
from nixcell.jobs.contract import Conflict, JobError

PROMPT = re.compile(rb"bash-[0-9.]+\$ ")


@pytest.fixture(scope="module")
def shell_plan(offline_set):
    from nixcell.runner import prepare
    from nixcell.spec import CellSpec

    plan, _ = prepare(CellSpec(packages=["bash", "coreutils"], command=["bash"]))
    return plan


async def until(att: terminal.Attachment, pattern: bytes | re.Pattern[bytes]) -> bytes:
    """Read ``att`` until ``pattern`` shows up; what was read (fails at the job's end)."""
    seen = b""
    found = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
    chunk = b""
    while not found.search(seen, max(0, len(seen) - len(chunk) - 4096)):
        chunk = await asyncio.wait_for(att.read(), 60)
        assert chunk, f"the job ended before {pattern!r}: {seen[-4096:]!r}"
        seen += chunk
    return seen


class Job:
    """``run_interactive`` as the service runs it: a task, the output collected as its log;
    ``pidns``: the cell's pid namespace (every process of the cell is in it)."""

    def __init__(self, plan, job_id: int) -> None:
        self.log = bytearray()
        self.started = asyncio.Event()
        self.pidns = ""
        self.task = asyncio.ensure_future(
            terminal.run_interactive(plan, job_id, self.log.extend, on_start=self._started)
        )

    def _started(self, cell, _network) -> None:
        self.pidns = os.readlink(f"/proc/{cell.child_pid}/ns/pid")
        self.started.set()

    @classmethod
    async def start(cls, plan, job_id: int) -> Job:
        job = cls(plan, job_id)
        await asyncio.wait_for(job.started.wait(), 60)
        return job

    async def result(self):
        return await asyncio.wait_for(self.task, 60)

    async def cancel(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.result()

    def processes(self) -> list[str]:
        """Host pids still in the cell's pid namespace."""
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/ns/pid") == self.pidns:
                    left.append(pid)
        return left


async def running(plan, job_id: int, line: bytes, pattern) -> tuple[Job, terminal.Attachment]:
    """A job started, attached, ``line`` typed and ``pattern`` seen."""
    job = await Job.start(plan, job_id)
    att = terminal.attach(job_id)
    await att.write(line)
    await until(att, pattern)
    return job, att


async def to_the_end(att: terminal.Attachment) -> None:
    while await asyncio.wait_for(att.read(), 60):
        pass


def test_shell_relay_scrollback_writer_resize_exit(shell_plan):
    async def main():
        job = await Job.start(shell_plan, 9001)
        first = terminal.attach(9001)
        await until(first, PROMPT)
        await first.write(b"echo $((6*7))\n")
        assert b"42\r\n" in await until(first, b"42\r\n")
        await first.write(b"tty && test -t 0 && echo TTY-$((2+3))\n")
        assert b"not a tty" not in await until(first, b"TTY-5\r\n")
        await first.write(b"sleep 100 & jobs\n")
        await until(first, re.compile(rb"\[1\]\+\s+Running\s+sleep 100 &"))
        first.resize(33, 101)
        await first.write(b"stty size\n")
        await until(first, b"33 101\r\n")
        # a second attachment replays what was said before it came and becomes the writer
        second = terminal.attach(9001)
        replay = await second.read()
        assert b"42\r\n" in replay and b"33 101" in replay
        await first.write(b"echo FROM-FIRST\n")  # a watcher's keys are dropped
        second.resize(20, 70)
        await second.write(b"stty size\n")
        both = await until(second, b"20 70\r\n")
        assert b"FROM-FIRST" not in both
        await until(first, b"20 70\r\n")  # the watcher sees the writer's output
        second.detach()  # the first writes again, at its own size
        await first.write(b"stty size; echo FROM-FIRST-AGAIN\n")
        await until(first, b"33 101\r\nFROM-FIRST-AGAIN")
        first.detach()
        assert not job.task.done()  # nobody attached: the job goes on
        third = terminal.attach(9001)
        assert b"FROM-FIRST-AGAIN" in await third.read()
        await third.write(b"exit 3\n")
        await to_the_end(third)
        result = await job.result()
        assert result.exit_code == 3
        assert b"42\r\n" in job.log and b"FROM-FIRST-AGAIN" in job.log
        with pytest.raises(Conflict):  # over: no terminal any more
            terminal.attach(9001)
        with pytest.raises(JobError):
            third.resize(0, 80)

    asyncio.run(main())


def test_cancel_kills_the_cell_and_ends_readers(shell_plan):
    async def main():
        line = b"echo pid=$$; sleep 300\n"
        job, att = await running(shell_plan, 9002, line, re.compile(rb"pid=\d+\r\n"))
        for _ in range(200):  # bash forks sleep after it printed the pid
            if len(job.processes()) >= 3:
                break
            await asyncio.sleep(0.05)
        assert len(job.processes()) >= 3  # bwrap's init, bash, sleep
        await job.cancel()
        assert await asyncio.wait_for(att.read(), 10) == b""
        with pytest.raises(Conflict):
            terminal.attach(9002)
        assert job.processes() == [], "a process of the cancelled job is still running"

    asyncio.run(main())


def test_a_reader_far_behind_is_dropped_the_job_goes_on(shell_plan):
    async def main():
        job = await Job.start(shell_plan, 9003)
        slow = terminal.attach(9003)
        fast = terminal.attach(9003)
        await fast.write(b"head -c 3000000 /dev/zero | tr '\\0' x; echo BIG-$((1+1))\n")
        await until(fast, b"BIG-2\r\n")  # ``slow`` read nothing: it fell behind by then
        with pytest.raises(Conflict, match="behind"):
            await asyncio.wait_for(slow.read(), 10)
        await fast.write(b"exit 0\n")
        await to_the_end(fast)
        assert (await job.result()).exit_code == 0
        assert len(job.log) > 3000000  # the log got everything

    asyncio.run(main())


def test_keys_a_cell_does_not_read_never_hold_the_daemon(shell_plan):
    async def main():
        line = b"echo sleeping-$((1+1)); sleep 300\n"
        job, att = await running(shell_plan, 9005, line, b"sleeping-2\r\n")
        for _ in range(64):  # 4 MiB for a cell that reads none: each write returns at once
            await asyncio.wait_for(att.write(b"x" * 65536), 5)
        assert not job.task.done()
        await job.cancel()
        await to_the_end(att)  # (the echo of what the pty took first)

    asyncio.run(main())


def test_unknown_and_repeated_job_ids(shell_plan):
    with pytest.raises(Conflict, match="no terminal"):
        terminal.attach(12345)

    async def main():
        job = await Job.start(shell_plan, 9004)
        with pytest.raises(Conflict, match="already"):
            await terminal.run_interactive(shell_plan, 9004, lambda b: None)
        await job.cancel()

    asyncio.run(main())


PROBE = """
import asyncio, sys
from nixcell.runner import execute_async
from nixcell.sandbox.reap import become_subreaper
from nixcell.errors import NixcellError
import pickle
plan = pickle.load(open(sys.argv[1], "rb"))
become_subreaper()
try:
    asyncio.run(execute_async(plan, terminal=0))
    print("RAN")
except NixcellError as exc:
    print("REFUSED:", exc.message)
"""


def test_the_engine_refuses_its_own_terminal_and_non_ttys(shell_plan, tmp_path):
    """``terminal=`` is never nixcell's own terminal (TIOCSTI would type into it) nor a file."""
    import pickle

    import pexpect

    from nixcell.errors import NixcellError
    from nixcell.runner import execute_async

    (tmp_path / "plan").write_bytes(pickle.dumps(shell_plan))
    child = pexpect.spawn(sys.executable, ["-c", PROBE, str(tmp_path / "plan")], timeout=60)
    child.expect(pexpect.EOF)
    assert b"REFUSED: a cell never gets nixcell's own terminal" in child.before, child.before
    with open(os.devnull, "rb") as f, pytest.raises(NixcellError, match="pseudo-terminal"):
        asyncio.run(execute_async(shell_plan, terminal=f.fileno()))
    master, slave = os.openpty()
    try:
        with pytest.raises(NixcellError, match="no other stdio"):
            asyncio.run(execute_async(shell_plan, terminal=slave, capture_output=True))
    finally:
        os.close(master)
        os.close(slave)


def test_a_cancel_at_any_moment_of_the_start_leaves_nothing(offline_set):
    """Cancelling ``execute_async`` while bwrap starts (before it named its pid-1) kills the
    whole cell, with and without a terminal: the command never runs on as an orphan."""
    import secrets
    import subprocess

    from nixcell.runner import execute_async, prepare
    from nixcell.spec import CellSpec

    marker = f"1000.{secrets.randbelow(10**6):06d}"
    plan, _ = prepare(CellSpec(packages=["coreutils"], command=["sleep", marker]))

    def left() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        return found

    async def main() -> None:
        for use_pty in (False, True):
            for delay in (0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064):
                master, slave = os.openpty()
                io = {"terminal": slave} if use_pty else {"stdin": subprocess.DEVNULL}
                task = asyncio.ensure_future(execute_async(plan, **io))
                await asyncio.sleep(delay)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                os.close(master)
                os.close(slave)
                assert left() == [], (use_pty, delay)

    asyncio.run(main())
