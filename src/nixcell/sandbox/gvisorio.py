"""A gVisor cell's stdio: pipes for runsc, and runsc's own error line kept off the cell's stderr.

runsc hands the sandbox its own fds 0-2. It writes a regular file from offset 0 (not O_APPEND:
earlier output is overwritten), so a non-pipe stdio fd (file, terminal, socket) gets a pipe and
a copying thread. And runsc prints its own fatal error (``running container: ...``) on fd 2,
the cell's stderr: the cell's stderr always goes through ``StderrFilter``, which holds back a
last line that looks like runsc's until the stream ends; if it is the error runsc logged, it is
dropped (nixcell reports it in one line), else delivered.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading

PREFIXES = (b"running container: ", b"reading spec: ", b"FATAL ERROR: ")
CHUNK = 65536


class StderrFilter:
    """Bytes in, bytes out; pure. ``feed`` returns what may be delivered now; ``finish`` the
    rest, without runsc's own error line ``dropped`` (as its log had it)."""

    def __init__(self) -> None:
        self.held = b""
        self.line_start = True

    def feed(self, data: bytes) -> bytes:
        buf, self.held = self.held + data, b""
        out = bytearray()
        while buf:
            end = buf.find(b"\n")
            line = buf if end < 0 else buf[: end + 1]
            last = end < 0 or end + 1 == len(buf)
            if last and self.line_start and _suspect(line, complete=end >= 0):
                self.held = buf  # it may be runsc's last line: only the end tells
                return bytes(out)
            out += line
            buf = buf[len(line) :]
            self.line_start = end >= 0
        return bytes(out)

    def finish(self, dropped: str | None) -> bytes:
        held, self.held = self.held, b""
        if dropped is not None and held.rstrip(b"\n") == dropped.encode():
            return b""
        return held


def _suspect(line: bytes, complete: bool) -> bool:
    if complete:
        return line.startswith(PREFIXES)
    return any(p.startswith(line) or line.startswith(p) for p in PREFIXES)


def is_pipe(fd: int) -> bool:
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def write_all(fd: int, data: bytes) -> bool:
    """False once the reader is gone."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except (BrokenPipeError, OSError):
        return False
    return True


class Copy:
    """One thread copying ``src`` to ``dst`` until EOF (closing ``src``, and ``dst`` when
    ``close_dst``). With a filter, ``dropped()`` names runsc's error line at the end."""

    def __init__(
        self, src: int, dst: int, close_dst: bool, filt: StderrFilter | None = None,
        dropped: object = None,
    ) -> None:  # fmt: skip
        self.src, self.dst, self.close_dst = src, dst, close_dst
        self.filt = filt
        self.dropped = dropped  # a callable giving runsc's error message, read at the end
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="nixcell-gvisor-io", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        alive = True
        try:
            while True:
                try:
                    data = os.read(self.src, CHUNK)
                except OSError:
                    break
                if not data:
                    break
                if self.filt is not None:
                    data = self.filt.feed(data)
                if alive and data:
                    alive = write_all(self.dst, data)
            if self.filt is not None and alive:
                # EOF: runsc run (which holds fd 2 to the end) has exited, its log is complete
                message = self.dropped() if callable(self.dropped) else None
                write_all(self.dst, self.filt.finish(message))  # type: ignore[arg-type]
        finally:
            with contextlib.suppress(OSError):
                os.close(self.src)
            if self.close_dst:
                with contextlib.suppress(OSError):
                    os.close(self.dst)
            self.done.set()
