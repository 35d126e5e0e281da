"""The python interpreter of a nixcell session (runs inside the cell; stdlib only, Python ≥ 3.9).

Started by ``agent.py`` as ``python3 -u agent_python.py CODE_FD EVENT_FD``. It reads framed code
from CODE_FD (``"<id> <length>\\n"`` then exactly ``length`` bytes of UTF-8), runs it in one
persistent ``__main__`` namespace, and reports on EVENT_FD: ``ready`` once, then per call
``started <id>`` and ``done <id> <status>`` (0 ok, 1 uncaught exception, 130 interrupted). fd 1
and 2 are the agent's output pipes, flushed before ``done``; stdin is ``/dev/null``.
``SystemExit`` is not caught: ``sys.exit()`` ends this interpreter as it would end a script.
"""

from __future__ import annotations

import builtins
import linecache
import os
import signal
import sys
import traceback
import types

_running = False


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
    """Run one call's code; the traceback (without this driver's frame) goes to stderr."""
    global _running
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        _running = True
        try:
            exec(compile(source, name, "exec"), namespace)
        finally:
            _running = False
    except SystemExit:
        _flush()
        raise
    except BaseException as exc:
        report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        user_frames = [f for f in report.stack if f.filename != __file__]  # not the driver's
        report.stack = traceback.StackSummary.from_list(user_frames)
        sys.stderr.write("".join(report.format()))
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    return 0


def main() -> None:
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
        try:
            status = _execute(source, f"<call {calls}>", module.__dict__)
            _flush()
        except KeyboardInterrupt:  # arrived between the code's end and here
            _flush()
        os.write(event_fd, b"done " + call_id + b" " + str(status).encode() + b"\n")


if __name__ == "__main__":
    main()
