"""Interactive jobs: the cell runs on a pty the daemon holds; clients attach to it and detach.

The pty is the job's own (``os.openpty`` here, never the daemon's terminal): its slave is the
cell's stdio and controlling terminal (``runner.execute_async(terminal=)``), the master stays in
this process for the job's whole life, whether anyone is attached or not. Everything the cell
writes goes to ``output`` (the service stores it as the job's stdout lines), into a bounded
scrollback (the last ``SCROLLBACK`` bytes, replayed to each new attachment) and to every
attachment. Input and window size: the latest attachment is the *writer* (the earlier ones
watch; their keys are dropped); when it detaches, the one attached before it writes again and
its size is applied. Nothing waits on anyone: keys the cell does not read wait here up to
``INPUT_LIMIT`` bytes (more are dropped), and an attachment more than ``BEHIND`` bytes behind
the output is dropped (its ``read`` raises). Cancel and timeout are the engine's: cancelling the
task that runs ``run_interactive`` kills the cell, and every attachment then reads b"".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections import deque
from collections.abc import Callable

from nixcell.jobs.contract import Conflict, JobError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.runner import RunResult
    from nixcell.sandbox.bwrap import CellProcess

SCROLLBACK = 64 * 1024  # bytes of output replayed to a new attachment
BEHIND = 1024 * 1024  # an attachment this far behind the output is dropped
MAX_SIZE = 4096  # rows or columns a client may ask for
CHUNK = 65536
INPUT_LIMIT = 64 * 1024  # bytes typed that wait for a cell not reading its terminal

log = logging.getLogger(__name__)
_sessions: dict[int, Session] = {}  # job id -> its live terminal (this process's jobs)


class Attachment:
    """One client's view of a job's terminal (``contract.Terminal``)."""

    def __init__(self, session: Session, replay: bytes) -> None:
        self._session = session
        self._chunks: deque[bytes] = deque([replay] if replay else [])
        self._queued = len(replay)
        self._wake = asyncio.Event()
        self.size: tuple[int, int] | None = None
        self.ended = False  # the job's output is over (after what is queued)
        self.dropped = False  # too far behind, or detached

    def _push(self, data: bytes) -> None:
        if self.dropped:
            return
        if self._queued + len(data) > BEHIND:
            self.dropped = True
            self._chunks.clear()
            self._session.remove(self)
        else:
            self._chunks.append(data)
            self._queued += len(data)
        self._wake.set()

    def _end(self) -> None:
        self.ended = True
        self._wake.set()

    async def read(self) -> bytes:
        """The next output (what queued up, joined); b"" once the job's output is over."""
        while not self._chunks:
            if self.dropped:
                raise Conflict("this client fell too far behind the job's output: attach again")
            if self.ended:
                return b""
            self._wake.clear()
            await self._wake.wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._queued = 0
        return data

    @property
    def writer(self) -> bool:
        return self._session.writer is self

    async def write(self, data: bytes) -> None:
        """Keys for the cell; dropped unless this is the writer (the latest attachment)."""
        if self.writer and not self.dropped:
            await self._session.write(data)

    def resize(self, rows: int, cols: int) -> None:
        if not (1 <= rows <= MAX_SIZE and 1 <= cols <= MAX_SIZE):
            raise JobError(f"a terminal size is 1 to {MAX_SIZE} rows and columns")
        self.size = (rows, cols)
        if self.writer:
            self._session.resize(self.size)

    def detach(self) -> None:
        """This attachment ends; the job goes on."""
        self.dropped = True
        self._chunks.clear()
        self._wake.set()
        self._session.remove(self)


class Session:
    """A running interactive job's pty master, its scrollback and its attachments."""

    def __init__(self, job_id: int, master: int, output: Callable[[bytes], None]) -> None:
        self.job_id = job_id
        self.master = master
        self._output = output
        self._scrollback = bytearray()
        self._attached: list[Attachment] = []  # oldest first: the last one writes
        self._input = bytearray()  # typed, not yet taken by the pty
        self._flushing = False  # the loop watches the master for room
        self._loop = asyncio.get_running_loop()
        self.ended = False
        os.set_blocking(master, False)
        self._loop.add_reader(master, self._readable)

    @property
    def writer(self) -> Attachment | None:
        return self._attached[-1] if self._attached else None

    def attach(self) -> Attachment:
        if self.ended:
            raise Conflict(f"job {self.job_id} is not running")
        new = Attachment(self, bytes(self._scrollback))
        self._attached.append(new)
        return new

    def remove(self, gone: Attachment) -> None:
        was_writer = self.writer is gone
        with contextlib.suppress(ValueError):
            self._attached.remove(gone)
        if was_writer and self.writer is not None and self.writer.size is not None:
            self.resize(self.writer.size)

    def _readable(self) -> None:
        """Read what the cell wrote (the loop calls this when the master is readable)."""
        try:
            data = os.read(self.master, CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:  # EIO: no slave is open any more (the cell is gone)
            if exc.errno != errno.EIO:
                log.warning("job %s: reading its terminal failed: %s", self.job_id, exc)
            data = b""
        if not data:
            self._loop.remove_reader(self.master)
            return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        try:
            self._output(data)
        except Exception:  # the log is the service's; the terminal goes on
            log.exception("job %s: storing its terminal output failed", self.job_id)
        self._scrollback += data
        del self._scrollback[:-SCROLLBACK]
        for attached in list(self._attached):
            attached._push(data)

    async def write(self, data: bytes) -> None:
        """Into the pty; never waits: what the cell has not read yet waits here, and keys
        past ``INPUT_LIMIT`` of those are dropped (as a terminal's full input queue does)."""
        if self.ended:
            return
        self._input += data[: max(0, INPUT_LIMIT - len(self._input))]
        self._flush()

    def _flush(self) -> None:
        while self._input and not self.ended:
            try:
                del self._input[: os.write(self.master, self._input)]
            except BlockingIOError:
                break
            except OSError:  # the cell is gone: its input is dropped
                self._input.clear()
        waiting = bool(self._input) and not self.ended
        if waiting and not self._flushing:
            self._loop.add_writer(self.master, self._flush)
        elif not waiting and self._flushing:
            self._loop.remove_writer(self.master)
        self._flushing = waiting

    def resize(self, size: tuple[int, int]) -> None:
        """The cell's window size (the kernel signals its foreground process group)."""
        from nixcell.sandbox.pty import set_window_size

        if not self.ended:
            with contextlib.suppress(OSError):
                set_window_size(self.master, size)

    def end(self) -> None:
        """The cell is gone: what the master still holds goes out, then every reader ends."""
        self._loop.remove_reader(self.master)
        if self._flushing:
            self._loop.remove_writer(self.master)
        while not self.ended:
            try:
                data = os.read(self.master, CHUNK)
            except OSError:  # EAGAIN (all read) or EIO (no slave left)
                data = b""
            if not data:
                break
            self._deliver(data)
        self.ended = True
        for attached in self._attached:
            attached._end()
        self._attached = []
        os.close(self.master)


async def run_interactive(
    plan: Plan,
    job_id: int,
    output: Callable[[bytes], None],
    *,
    on_start: Callable[[CellProcess, object | None], None] | None = None,
) -> RunResult:
    """Run the planned cell on a pty held here; ``output`` gets every chunk (the job's log).
    ``on_start`` is ``execute_async``'s (the command runs: the job is ``running``)."""
    from nixcell.runner import execute_async
    from nixcell.sandbox.pty import DEFAULT_SIZE, set_window_size

    if job_id in _sessions:
        raise Conflict(f"job {job_id} already has a terminal")
    master, slave = os.openpty()
    try:
        set_window_size(master, DEFAULT_SIZE)
        session = Session(job_id, master, output)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise
    _sessions[job_id] = session
    held = [slave]

    def started(cell: CellProcess, network: object | None) -> None:
        os.close(held.pop())  # the cell holds it now: the master reads EIO once the cell is gone
        if on_start is not None:
            on_start(cell, network)

    try:
        return await execute_async(plan, terminal=slave, on_start=started)
    finally:
        for fd in held:
            os.close(fd)
        del _sessions[job_id]
        session.end()


def attach(job_id: int) -> Attachment:
    """The running interactive job's terminal; Conflict when it has none (not interactive,
    not started yet, or over)."""
    session = _sessions.get(job_id)
    if session is None:
        raise Conflict(f"job {job_id} has no terminal: it is not an interactive job running here")
    return session.attach()
