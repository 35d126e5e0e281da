"""``nixcell attach ID`` and ``submit -i``: the user's terminal on an interactive job's pty.

The user's terminal is in raw mode while attached (every key goes to the job's line
discipline) and its modes come back on every way out: the job's end, ``~.``, a lost
connection, SIGTERM/SIGHUP/SIGINT, an error. The window size follows SIGWINCH. ``~.`` typed at
the start of a line detaches (as ssh: ``~~`` sends one ``~``); the job goes on. When the job
ends while attached, the exit status is the job's (``jobs_cmd.exit_code``: its exit code,
124 timed out, 130 cancelled, 1 error). One thread receives, the main thread reads the
user's keys and the self-pipe the receiver and SIGWINCH write to.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Any

import click

from nixcell.cli import jobs_cmd
from nixcell.cli.jobs_cmd import server_options

DETACH_HINT = "detached from job {id}; it goes on (`nixcell attach {id}` to come back)"


class _Ended(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Attached:
    """One attachment: the relay loop between this terminal and the WebSocket."""

    def __init__(self, ws: Any, job_id: int, stdin: int = 0, stdout: int = 1) -> None:
        from nixcell.jobs.attach_client import Outcome

        self.ws = ws
        self.job_id = job_id
        self.stdin, self.stdout = stdin, stdout
        self.tty = os.isatty(stdin)
        self.outcome = Outcome()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def _receive(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self.ws:
                if isinstance(message, bytes):
                    _write_all(self.stdout, message)
                else:
                    self.outcome.take(message)
        except ConnectionClosed:
            pass
        except OSError:  # our stdout went away: nothing to show the job on any more
            pass
        finally:
            self.outcome.code = self.ws.close_code
            self.outcome.reason = self.ws.close_reason or ""
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def _resized(self, _signum: int, _frame: object) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"w")

    def _send_size(self) -> None:
        import json

        from nixcell.sandbox.pty import window_size

        size = window_size(self.stdin) or window_size(self.stdout)
        if size is not None:
            self.ws.send(json.dumps({"resize": list(size)}))

    def run(self) -> None:
        """Relay until the job ends, the user detaches or the connection ends."""
        from websockets.exceptions import ConnectionClosed

        from nixcell.sandbox.relay import Escape

        escape = Escape() if self.tty else None
        receiver = threading.Thread(target=self._receive, name="attach-receive", daemon=True)
        receiver.start()
        reading = True
        try:
            if self.tty:
                self._send_size()
            while True:
                fds = [self._wake_r, self.stdin] if reading else [self._wake_r]
                try:
                    ready, _, _ = select.select(fds, [], [])
                except InterruptedError:
                    continue
                if self._wake_r in ready:
                    woke = os.read(self._wake_r, 64)
                    if b"x" in woke:
                        return
                    if b"w" in woke:
                        self._send_size()
                if reading and self.stdin in ready:
                    data = os.read(self.stdin, 65536)
                    if not data:
                        reading = False  # a piped stdin ended: the output goes on
                        continue
                    if escape is not None:
                        data = escape.filter(data)
                    if data:
                        self.ws.send(data)
                    if escape is not None and escape.fired:
                        self.outcome.detached = True
                        return
        except ConnectionClosed:
            receiver.join(5)
        finally:
            with contextlib.suppress(Exception):
                self.ws.close()
            receiver.join(10)
            os.close(self._wake_r)
            os.close(self._wake_w)


@contextlib.contextmanager
def _user_terminal(fd: int, on_resize: Any):
    """Raw mode on ``fd`` (a tty), SIGWINCH to ``on_resize``, SIGTERM/SIGHUP unwinding
    through here: the modes come back whatever happens."""
    import termios
    import tty

    saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    handlers: dict[int, Any] = {}

    def unwind(signum: int, _frame: object) -> None:
        raise _Ended(128 + signum)

    for signum, handler in ((signal.SIGWINCH, on_resize), (signal.SIGTERM, unwind),
                            (signal.SIGHUP, unwind)):  # fmt: skip
        with contextlib.suppress(ValueError):  # not the main thread: leave them be
            handlers[signum] = signal.signal(signum, handler)
    try:
        if saved is not None:
            tty.setraw(fd, termios.TCSADRAIN)
        yield
    finally:
        if saved is not None:
            previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            finally:
                signal.signal(signal.SIGTTOU, previous)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def submitted(client: Any, job_id: int) -> int:
    """``submit -i``: attach to the job just submitted. One that ended before the client got
    there (it failed to start, or was quick) is shown as ``--follow`` shows it: its logs,
    then its exit code."""
    try:
        return attach_job(client, job_id)
    except Finished:
        return jobs_cmd.follow(client, job_id, streams=None, after=0, tail=None)


class Finished(Exception):
    """The job had ended when the client came to attach (close code 4409)."""


def attach_job(client: Any, job_id: int) -> int:
    """Attach this process's terminal to the job; its exit code (see the module docstring)."""
    from nixcell.cli.entry import error
    from nixcell.jobs.attach_client import connect

    try:
        with connect(client, job_id) as ws:
            session = Attached(ws, job_id)
            with _user_terminal(session.stdin, session._resized):
                session.run()
    except _Ended as exc:
        error(f"job {job_id} goes on (`nixcell attach {job_id}` to come back)")
        return exc.code
    except KeyboardInterrupt:
        error(f"job {job_id} goes on (`nixcell attach {job_id}` to come back)")
        return 130
    outcome = session.outcome
    if outcome.detached:
        error(DETACH_HINT.format(id=job_id))
        return 0
    refusal = outcome.error()
    if refusal is not None:
        if outcome.code == 4409 and "has finished" in outcome.reason:
            raise Finished() from refusal
        raise refusal
    end = outcome.exit or {}
    state, code, reason = end.get("state"), end.get("exit_code"), end.get("reason")
    if state in ("cancelled", "timed_out") and reason:
        said = reason.split(":")[0].split(" ")[0] in ("cancelled", "timed")  # "cancelled by …"
        error(f"job {job_id} {reason}" if said else f"job {job_id} {state}: {reason}")
    return jobs_cmd.exit_code(state, code, reason)


@click.command()
@click.argument("job_id", metavar="ID")
@server_options
def attach(job_id: str, server: str | None, token_file: str | None) -> int:
    """Attach this terminal to an interactive job (`submit -i`); `~.` detaches."""
    from nixcell.cli.jobs_more import _id

    ident = _id(job_id)
    try:
        return attach_job(jobs_cmd._client(server, token_file), ident)
    except Finished as exc:
        raise exc.__cause__ from None  # type: ignore[misc]


def register(cli: click.Group) -> None:
    jobs_cmd.INTERACTIVE_HOOK = submitted
    cli.add_command(attach)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(attach())
