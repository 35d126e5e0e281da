"""A job's output as stored lines: pipes read on the loop, split, batched into the store.

``LogSink`` gathers ``(stream, text)`` lines and writes them with ``store.append_logs`` in
batches (every ``interval`` seconds, or sooner at ``batch`` lines), one writer at a time, so a
job's lines keep their order and a chatty job costs one transaction per batch, not per line.
When the store falls behind, readers wait (``room``): the cell blocks on a full pipe instead of
the daemon buffering without bound. ``read_lines`` turns a pipe into lines: a partial last line
is flushed at EOF; a line longer than ``MAX_LINE`` bytes is kept cut (visibly) and the rest of
it skipped up to the next newline, so a cell printing without newlines cannot grow our memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Sequence

from nixcell.jobs.store import JobStore

log = logging.getLogger(__name__)

MAX_LINE = 65536  # bytes kept of one line here (the store cuts again at its own line limit)
CUT = " [cut]"


class LogSink:
    def __init__(
        self,
        store: JobStore,
        job_id: int,
        notify: Callable[[int], None],
        *,
        interval: float = 0.05,
        batch: int = 500,
        max_pending: int = 5000,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.notify = notify
        self.interval = interval
        self.batch = batch
        self.max_pending = max_pending
        self.redact = redact
        self.last_seq = 0
        self.dropped = 0  # lines lost to store failures
        self._pending: list[tuple[str, str]] = []
        self._ready = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._flusher())

    def add(self, stream: str, text: str) -> None:
        """Queue one line (called on the loop's thread). Text with line breaks (nixcell's own
        messages) becomes several lines: a stored line never holds a newline."""
        if "\n" in text:
            for part in text.splitlines():
                self.add(stream, part)
            return
        if self.redact is not None:
            text = self.redact(text)
        self._pending.append((stream, text))
        self._ready.set()
        if len(self._pending) >= self.batch:
            self._full.set()
        if len(self._pending) >= self.max_pending:
            self._room.clear()

    def add_threadsafe(self, loop: asyncio.AbstractEventLoop, stream: str, text: str) -> None:
        """``add`` from a worker thread (``runner.prepare``'s progress lines)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to log to
            loop.call_soon_threadsafe(self.add, stream, text)

    async def room(self) -> None:
        """Wait until the store has caught up enough to take more lines."""
        await self._room.wait()

    async def _flusher(self) -> None:
        while True:
            await self._ready.wait()
            if not self._closing and not self._full.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.interval)
            lines, self._pending = self._pending, []
            self._ready.clear()
            self._full.clear()
            if lines:
                try:
                    await self._write(lines)
                except Exception:  # the store failed: drop this batch, never stall the cell
                    self.dropped += len(lines)
                    log.exception("job %d: %d log line(s) not stored", self.job_id, len(lines))
            self._room.set()
            if self._closing and not self._pending:
                return

    async def _write(self, lines: Sequence[tuple[str, str]]) -> None:
        self.last_seq = await asyncio.to_thread(self._append, lines)
        self.notify(self.job_id)

    def _append(self, lines: Sequence[tuple[str, str]]) -> int:
        """One batch; a store that dropped its connection (a cluster's database) is asked
        again, unless the batch had landed before the connection went (the job's stored line
        count moved on from ours: each line is stored once)."""
        try:
            return self.store.append_logs(self.job_id, lines)
        except Exception as exc:
            if type(exc).__name__ != "StoreUnavailable":
                raise
        from nixcell.jobs.pgconn import retrying

        job = retrying(self.store.get, self.job_id)
        if job is not None and job.log_lines > self.last_seq:
            return int(job.log_lines)
        return int(retrying(self.store.append_logs, self.job_id, lines))

    async def close(self) -> None:
        """Write every pending line, then stop."""
        self._closing = True
        self._ready.set()
        task = self._task
        if task is None:
            if self._pending:
                lines, self._pending = self._pending, []
                await self._write(lines)
            return
        await asyncio.shield(task)


class Lines:
    """Bytes of one stream in, lines out to the sink (see the module's docstring)."""

    def __init__(self, stream: str, sink: LogSink) -> None:
        self.stream = stream
        self.sink = sink
        self._buf = b""
        self._skipping = False  # inside an over-long line: drop bytes up to its newline

    def feed(self, chunk: bytes) -> None:
        parts = (self._buf + chunk).split(b"\n")
        self._buf = parts.pop()
        for part in parts:
            if self._skipping:
                self._skipping = False
                continue
            self.sink.add(self.stream, _cut(part))
        if self._skipping:
            self._buf = b""
        elif len(self._buf) > MAX_LINE:
            self.sink.add(self.stream, _cut(self._buf))
            self._buf = b""
            self._skipping = True

    def end(self) -> None:
        """EOF: a partial last line is a line."""
        if self._buf and not self._skipping:
            self.sink.add(self.stream, _text(self._buf))
        self._buf = b""


async def read_lines(fd: int, stream: str, sink: LogSink) -> None:
    """Read pipe ``fd`` to EOF as lines into ``sink``; the fd is closed when this returns."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
    except BaseException:
        pipe.close()
        raise
    lines = Lines(stream, sink)
    try:
        while chunk := await reader.read(65536):
            lines.feed(chunk)
            await sink.room()
        lines.end()
    finally:
        transport.close()


def _cut(line: bytes) -> str:
    return _text(line[:MAX_LINE]) + CUT if len(line) > MAX_LINE else _text(line)


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")
