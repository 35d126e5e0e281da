"""The python interpreter of a nixcell session (runs inside the cell; stdlib only, Python ≥ 3.9).

Started by ``agent.py`` as ``python3 -u agent_python.py CODE_FD EVENT_FD``. It reads framed code
from CODE_FD (``"<id> <length>\\n"`` then exactly ``length`` bytes of UTF-8), runs it in one
persistent ``__main__`` namespace, and reports on EVENT_FD: ``ready`` once, then per call
``started <id>`` and ``done <id> <status>`` (0 ok, 1 uncaught exception, 130 interrupted). fd 1
and 2 are the agent's output pipes, flushed before ``done``; stdin is ``/dev/null``.
``sys.exit(n)`` ends the call with status n, as it ends a script, and the namespace is kept; no
exception of the code, however odd (its ``__str__`` raising or looping, a huge message, a
million frames deep), can end this interpreter or stall it past the call's interrupt.
"""

from __future__ import annotations

import builtins
import io
import linecache
import os
import signal
import sys
import traceback
import types
from typing import TextIO

_running = False
TRACEBACK_LIMIT = 1000  # the interpreter's default for sys.tracebacklimit
REPORT_CAP = 1 << 20  # characters of one traceback


def _on_sigint(signum: int, frame: object) -> None:
    """Interrupt the user's code; a late SIGINT (between calls) is ignored."""
    if _running:
        raise KeyboardInterrupt


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a user's replacement stream may not flush: never break the driver
            pass


def _execute(source: str, name: str, namespace: dict[str, object]) -> int:
    """Run one call's code: its status (a ``SystemExit`` ends the call, not the interpreter)."""
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        exec(compile(source, name, "exec"), namespace)
    except SystemExit as exc:
        return _exit_status(exc.code)
    except BaseException as exc:
        _report(exc)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives a script: None 0, an int mod 256, else printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    _write_stderr(f"{_safe_str(code)}\n")
    return 1


def _report(exc: BaseException) -> None:
    """The traceback of ``exc`` (without this driver's frames) on fd 2.

    Only the innermost frames are extracted, as the interpreter's own excepthook prints them
    (``sys.tracebacklimit``, default 1000): extracting every frame of a recursion that a raised
    ``sys.setrecursionlimit`` let go 10**6 deep took longer than the call's timeout."""
    limit = getattr(sys, "tracebacklimit", TRACEBACK_LIMIT)
    if not isinstance(limit, int) or isinstance(limit, bool):
        limit = TRACEBACK_LIMIT
    try:
        report = traceback.TracebackException(
            type(exc), exc, exc.__traceback__, limit=-max(limit, 0)
        )
        user_frames = [f for f in report.stack if f.filename != __file__]  # not the driver's
        report.stack = traceback.StackSummary.from_list(user_frames)
        text = "".join(report.format())
    except Exception as failure:  # a user's exception type can break anything in there
        text = f"{_safe_str(type(exc).__name__)}: (its traceback failed: {failure!r})\n"
    if len(text) > REPORT_CAP:  # the agent keeps 1 MiB per stream anyway
        cut = len(text) - REPORT_CAP
        text = f"{text[: REPORT_CAP // 2]}\n[... {cut} characters ...]\n{text[-REPORT_CAP // 2 :]}"
    _write_stderr(text)


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<{type(value).__name__} object: str() failed>"


def _write_stderr(text: str, flush: bool = True) -> None:
    """Straight to fd 2, after what the code wrote: a replaced ``sys.stderr`` can hide nothing."""
    if flush:
        _flush()
    data = text.encode("utf-8", "backslashreplace")
    while data:
        try:
            data = data[os.write(2, data) :]
        except InterruptedError:
            continue
        except OSError:
            return


def _reopened(streams: tuple[TextIO, TextIO]) -> tuple[TextIO, TextIO]:
    """The interpreter's own stdout/stderr, made again on fd 1/2 when the code closed one."""
    fresh = []
    for fd, stream in enumerate(streams, start=1):
        if stream.closed:
            raw = io.FileIO(fd, "w", closefd=False)
            stream = io.TextIOWrapper(
                raw, encoding="utf-8", errors="backslashreplace", write_through=True
            )
        fresh.append(stream)
    return fresh[0], fresh[1]


def main() -> None:
    global _running
    code_fd, event_fd = int(sys.argv[1]), int(sys.argv[2])
    for fd in (code_fd, event_fd):  # os.system() and friends must not inherit them
        os.set_inheritable(fd, False)
    reader = open(code_fd, "rb")  # noqa: SIM115 - lives as long as the interpreter

    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module  # pickle & co find the user's classes and functions
    sys.argv = [""]
    sys.path[0] = ""  # like `python3 -c`: the cwd first
    signal.signal(signal.SIGINT, _on_sigint)

    streams = (sys.stdout, sys.stderr)
    os.write(event_fd, b"ready\n")
    calls = 0
    while True:
        try:
            header = reader.readline()
            if not header:
                return  # the agent is gone
            call_id, size = header.split()
            source = reader.read(int(size)).decode("utf-8", "replace")
        except KeyboardInterrupt:
            continue
        calls += 1
        os.write(event_fd, b"started " + call_id + b"\n")
        status = 130
        _running = True  # the code, its report and its streams' flush can all be interrupted
        try:
            status = _execute(source, f"<call {calls}>", module.__dict__)
            _flush()
        except KeyboardInterrupt:  # while reporting or flushing: the call was interrupted
            _running = False
            _write_stderr("KeyboardInterrupt\n", flush=False)  # a flush may be what hung
        finally:
            _running = False
            sys.stdout, sys.stderr = _reopened(streams)  # a call's replacement ends with it
        os.write(event_fd, b"done " + call_id + b" " + str(status).encode() + b"\n")


if __name__ == "__main__":
    main()
