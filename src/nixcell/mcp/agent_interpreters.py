"""Interpreters of a nixcell session agent: drivers, processes, output streams.

Shipped into the session cell next to ``agent.py`` (stdlib only, Python ≥ 3.9, nothing of
nixcell). Each interpreter runs in its own process group with fd 0 = /dev/null, fd 1/2 = pipes
only the agent reads, and two protocol pipes above fd 40: framed code in, event lines
(``ready``, ``started <id>``, ``done <id> <status>``) out (bash also gets a memfd for the state
its calls leave). The drivers are files of their own: ``agent_python.py``, ``agent_bash.sh``,
``agent_node.js``.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import signal
import subprocess

OUTPUT_CAP = 1 << 20  # bytes kept per stream and call; the rest is read and counted
READY_TIMEOUT = 30.0
HIGH_FD = 40  # the interpreter's protocol fds sit above the numbers users pick (3-9)
HERE = os.path.dirname(os.path.abspath(__file__))

# The bash driver's main loop, on line 1 of `bash -c` (see agent_bash.sh): the call's code is
# eval'd on line 1, so bash reports its errors at the code's own line numbers.
BASH_MAIN = (
    '. "$1" "${@:2}" || exit 1; set --; while :; do eval "$__nixcell_next"; ('
    ' eval "$__nixcell_enter"; builtin eval -- "$__nixcell_code";'
    " { __nixcell_status=$? && builtin set +xv; } 2>/dev/null;"
    ' eval "$__nixcell_save"; builtin exit "$__nixcell_status"'
    ' ) </dev/null {__nixcell_in}<&- {__nixcell_ev}>&- {__nixcell_st}>&-;'
    ' eval "$__nixcell_after"; done'
)


def high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, HIGH_FD)
    os.close(fd)
    return new


def kill_everything_else() -> None:
    """SIGKILL every process of the cell but pid 1 (bwrap) and this agent: a fresh state.

    Only inside a cell (our parent is the pid namespace's init): never anywhere else.
    """
    if os.getppid() != 1:
        return
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            with contextlib.suppress(OSError):
                os.kill(int(name), signal.SIGKILL)


def describe_end(returncode: int) -> tuple[int, str]:
    """(exit code, "exited with code 3" | "was killed by SIGKILL (…)") of an interpreter."""
    if returncode >= 0:
        return returncode, f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    hint = " (out of memory? the cell's memory limit)" if returncode == -signal.SIGKILL else ""
    return 128 - returncode, f"was killed by {name}{hint}"


class Stream:
    """One stream of one call: its first OUTPUT_CAP bytes, and how many there were."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = OUTPUT_CAP - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    @property
    def truncated(self) -> bool:
        return self.total > len(self.data)

    def text(self) -> str:
        """The stream as text; when cut, with a marker, and at most OUTPUT_CAP bytes in all."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        if not self.truncated:
            return decoder.decode(bytes(self.data), final=True)
        marker = f"\n[nixcell: output truncated: {self.total} bytes written, the first "
        head = bytes(self.data[: OUTPUT_CAP - 200])
        kept = decoder.decode(head, final=False)  # no half character at the cut
        return f"{kept}{marker}{len(kept.encode())} kept]\n"


class Interpreter:
    """One interpreter process in its own process group, with the agent's pipes as fd 0-2."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        code_r, code_w = os.pipe()
        ev_r, ev_w = os.pipe()
        code_r, ev_w = high_fd(code_r), high_fd(ev_w)
        state = -1
        if kind == "python":
            argv = ["python3", "-u", os.path.join(HERE, "agent_python.py"), str(code_r), str(ev_w)]
        elif kind == "node":
            driver = os.path.join(HERE, "agent_node.js")
            argv = ["node", "--expose-internals", driver, str(code_r), str(ev_w)]
        else:  # the state a call leaves for the next one (agent_bash.sh)
            state = high_fd(os.memfd_create("nixcell-bash-state", 0))
            driver = os.path.join(HERE, "agent_bash.sh")
            argv = ["bash", "--noprofile", "--norc", "-c", BASH_MAIN, "bash", driver]
            argv += [str(code_r), str(ev_w), str(state)]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                pass_fds=(code_r, ev_w) if state < 0 else (code_r, ev_w, state),
                start_new_session=True,
            )
        except BaseException:
            for fd in (out_r, err_r, code_w, ev_r):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, code_r, ev_w, state):
                if fd >= 0:
                    os.close(fd)
        # The interpreter (and what it starts) goes first when the cell runs out of memory.
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/oom_score_adj", "w") as f:
            f.write("1000")
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.fds = {"out": out_r, "err": err_r, "code": code_w, "ev": ev_r}
        for fd in (out_r, err_r, code_w, ev_r):
            os.set_blocking(fd, False)
        self.streams = {out_r, err_r}  # output pipes not at EOF yet
        self.outgoing = bytearray()
        self.events = bytearray()
        self.exited = False
        self.ready = False


class Call:
    def __init__(self, call_id: str) -> None:
        self.id = call_id
        self.out = Stream()
        self.err = Stream()
        self.started = False
        self.status: int | None = None
