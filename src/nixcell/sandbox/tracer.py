"""``--debug``'s executor side: strace attached from outside to a cell, its output summarised.

strace is a host process started by nixcell, never a process of the cell: it attaches
(``-p``) to the cell's pid-1 while that still waits on bwrap's block fd, so the plan, the
namespaces and the cell's uids are exactly those of a run without ``--debug``, and bwrap's own
setup (done by then) is never traced; ``-f`` follows the command and every descendant and thread.
Its output goes through a pipe to a thread of nixcell (no trace file: nothing the cell could
reach, nothing that fills a disk), which feeds the bounded summariser (``debugtrace.py``) and
keeps draining whatever comes, so a cell failing calls in a loop is slowed, never stopped.
strace is found on ``$PATH`` only: without it ``--debug`` is refused before anything runs.
strace runs in its own process group (a Ctrl-C is nixcell's to handle); when the cell is killed
(timeout, Ctrl-C) its tracees are gone and strace exits; ``close`` kills it if it has not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import threading
import time

from nixcell.debugtrace import MAX_LINE, Summary
from nixcell.errors import SandboxError
from nixcell.sandbox.bwrapio import which

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan

log = logging.getLogger(__name__)

# failed calls only (-Z), fds and AT_FDCWD shown with their paths (-yy), whole paths (-s)
ARGS = ("-f", "-Z", "-yy", "-s", "4096", "-e", "trace=%file,%network", "-e", "signal=none")
ATTACH_WAIT = 30.0  # seconds for strace to attach (it takes milliseconds)
EXIT_WAIT = 10.0  # seconds for strace to exit once the cell has ended


def strace_path() -> str:
    found = which("strace")
    if not found:
        raise SandboxError(
            "--debug needs strace, and there is none on PATH: install it (apt install strace)"
        )
    return found


class CellTracer:
    """One cell's strace: ``attach`` before the command runs, ``finish`` after the cell."""

    def __init__(self, plan: Plan) -> None:
        self.strace = strace_path()
        self.summary = Summary(closure=frozenset(p.encode() for p in plan.closure))
        self._own_init = "pid" in plan.namespaces  # else pid-1 would be the command itself
        self.proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._fds: list[int] = []  # [trace, messages]: read ends
        self._trace_fd = -1
        self._attached = threading.Event()
        self._wanted = b""
        self.messages: list[str] = []  # strace's own lines ("strace: ..."), for the log

    def attach(self, pid: int) -> None:
        """Trace ``pid`` (bwrap's pid-1 of the cell, blocked) and its future children. The
        trace goes to its own pipe (``-o``: every line then starts with its pid), strace's
        messages to its stderr; one thread reads both."""
        if self._own_init:  # bwrap's init: its calls are bwrap's, not the command's
            self.summary.skip_pids.add(pid)
        self._wanted = f"strace: Process {pid} attached".encode()
        trace_r, trace_w = os.pipe2(os.O_CLOEXEC)
        msg_r, msg_w = os.pipe2(os.O_CLOEXEC)
        self._fds, self._trace_fd = [trace_r, msg_r], trace_r
        try:
            self.proc = subprocess.Popen(
                ["strace", *ARGS, "-o", f"/proc/self/fd/{trace_w}", "-p", str(pid)],
                executable=self.strace,  # argv[0] "strace": its messages start "strace: "
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=msg_w,
                env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"},
                cwd="/",
                process_group=0,
                pass_fds=(trace_w,),
            )
        except OSError as exc:
            raise SandboxError(f"cannot start strace: {exc.strerror}") from None
        finally:
            os.close(trace_w)
            os.close(msg_w)
        self._thread = threading.Thread(target=self._read, name="nixcell-strace", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + ATTACH_WAIT
        while not self._attached.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                said = next((m for m in reversed(self.messages) if m.strip()), "")
                said = said.removeprefix("strace: ")[:200] or "it did not attach in time"
                raise SandboxError(f"strace could not trace the cell: {said}")

    def _read(self) -> None:
        """Both pipes until strace closes them: whole trace lines to the summary (an overlong
        one skipped and counted, never buffered whole), strace's messages kept (bounded)."""
        bufs = {fd: b"" for fd in self._fds}
        skipping = dict.fromkeys(self._fds, False)
        open_fds = list(self._fds)
        while open_fds:
            for fd in select.select(open_fds, [], [])[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    open_fds.remove(fd)
                    chunk = b"\n" if bufs[fd] else b""
                *lines, bufs[fd] = (bufs[fd] + chunk).split(b"\n")
                for line in lines:
                    if skipping[fd]:
                        skipping[fd] = False
                    else:
                        self._line(fd, line)
                if len(bufs[fd]) > MAX_LINE:
                    if not skipping[fd] and fd == self._trace_fd:
                        self.summary.unread += 1
                    skipping[fd], bufs[fd] = True, b""

    def _line(self, fd: int, line: bytes) -> None:
        if fd == self._trace_fd:
            self.summary.feed(line.decode("ascii", "replace"))
        elif line.strip() == self._wanted:
            self._attached.set()
        elif len(self.messages) < 100:
            self.messages.append(line.decode("ascii", "replace")[:300])

    def finish(self) -> Summary:
        """After the cell has ended: strace exits with its last tracee; the counted summary."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=EXIT_WAIT)
            except subprocess.TimeoutExpired:
                log.warning("strace did not exit after the cell: killed")
        self.close()
        for message in self.messages[-5:]:
            log.debug("%s", message)
        return self.summary

    def close(self) -> None:
        """Whatever happened: strace killed if still running, the reader joined, pipes shut."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=EXIT_WAIT)
            self._thread = None
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
