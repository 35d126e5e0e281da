"""Interactive cells on a real terminal: the real CLI under a real pty (pexpect).

Each run is wrapped in the host's ``sh``, which prints the outer terminal's modes (``stty -g``)
before and after nixcell, so every test also checks that the terminal is given back as it was.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pexpect
import pytest
from tests.conftest import NIXCELL, cli

PROMPT = r"bash-[0-9.]+\$ "
# before: the modes; after: nixcell's exit status, then the modes again
WRAP = 'stty -g; "$@"; echo "rc=$?"; stty -g; read -t 1 line; echo "typed[$line]"'


class Outer:
    """``nixcell ARGS`` in ``sh`` on a pexpect pty of ``size`` (rows, cols)."""

    def __init__(self, *args: str, size: tuple[int, int] = (24, 80), timeout: float = 60) -> None:
        env = {**os.environ, "TERM": "xterm"}
        self.child = pexpect.spawn(
            "/bin/sh",
            ["-c", WRAP, "sh", NIXCELL, *args],
            env=env,
            encoding="utf-8",
            codec_errors="replace",
            dimensions=size,
            timeout=timeout,
        )
        self.child.expect(r"^(\S+)\r\n")
        self.modes = self.child.match.group(1)

    def finish(self) -> int:
        """Wait for nixcell's end; check the modes came back and nothing was typed for the
        outer shell; return nixcell's exit status."""
        self.child.expect(r"rc=(\d+)\r\n(\S+)\r\n")
        code, after = int(self.child.match.group(1)), self.child.match.group(2)
        self.child.expect(r"typed\[(.*)\]")
        typed = self.child.match.group(1)
        self.child.expect(pexpect.EOF)
        assert after == self.modes, "the outer terminal's modes were not restored"
        assert typed == "", f"{typed!r} reached the outer terminal's input"
        return code

    def nixcell_pid(self) -> int:
        for _ in range(100):
            with open(f"/proc/{self.child.pid}/task/{self.child.pid}/children") as f:
                kids = f.read().split()
            if kids:
                return int(kids[0])
            time.sleep(0.05)
        raise AssertionError("nixcell did not start")

    def seen(self) -> str:
        return str(self.child.before)


def test_bash_job_control_ctrl_z_fg_ctrl_c(offline_set):
    outer = Outer("run", "-p", "bash", "-p", "coreutils", "--", "bash")
    c = outer.child
    c.expect(PROMPT)
    assert "job control" not in outer.seen()  # bash's "no job control in this shell"
    c.sendline("sleep 100 &")
    c.expect(PROMPT)
    c.sendline("jobs")
    c.expect(r"\[1\]\+\s+Running\s+sleep 100 &")
    c.expect(PROMPT)
    c.sendline("bash -c 'echo started; exec sleep 50'")
    c.expect("started\r\n")  # the job is the terminal's foreground process group by now
    c.sendcontrol("z")
    c.expect(r"\[2\]\+\s+Stopped\s+bash -c")
    c.expect(PROMPT)
    c.sendline("fg")
    c.expect("bash -c")
    time.sleep(0.5)  # bash hands the terminal back to the job, then continues it
    c.sendcontrol("c")
    c.expect(PROMPT)
    c.sendline("echo status=$?")
    c.expect("status=130")  # the foreground sleep got the SIGINT, bash did not
    c.expect(PROMPT)
    c.sendline("exit 3")
    assert outer.finish() == 3


@pytest.mark.parametrize(
    "flags",
    [("--allow-host", "up.test"), ("--memory", "128M", "--disk", "16M"), ("--workdir", "WORK")],
    ids=["network-namespace", "cgroups-and-scratch", "idmapped-stage"],
)
def test_job_control_through_every_launch_chain(offline_set, tmp_path, flags):
    """nsenter into a held netns, the cgroup-joining shell, the idmapped stage: the pty and
    the helper's session survive each launcher."""
    flags = tuple(str(tmp_path) if f == "WORK" else f for f in flags)
    outer = Outer("run", *flags, "-p", "bash", "-p", "coreutils", "--", "bash")
    c = outer.child
    c.expect(PROMPT)
    assert "job control" not in outer.seen()
    c.sendline("sleep 30 & jobs")
    c.expect(r"Running\s+sleep 30")
    c.expect(PROMPT)
    c.sendline("exit 5")
    assert outer.finish() == 5


def test_python_repl_ctrl_c_is_a_keyboard_interrupt(offline_set):
    outer = Outer("run", "-p", "python3", "--", "python3")
    c = outer.child
    c.expect(">>> ")
    c.sendline("import time; time.sleep(60)")
    time.sleep(0.5)
    c.sendcontrol("c")
    c.expect("KeyboardInterrupt")
    c.expect(">>> ")
    c.sendcontrol("c")  # at the prompt too
    c.expect("KeyboardInterrupt")
    c.expect(">>> ")
    c.sendline("print(6 * 7)")
    c.expect("42")
    c.expect(">>> ")
    c.sendcontrol("d")
    assert outer.finish() == 0


def test_window_size_at_start_and_on_resize(offline_set):
    outer = Outer("run", "-p", "bash", "-p", "coreutils", "--", "bash", size=(33, 101))
    c = outer.child
    c.expect(PROMPT)
    c.sendline("stty size")
    c.expect("33 101")
    c.expect(PROMPT)
    c.sendline("trap 'echo winch' WINCH")
    c.expect(PROMPT)
    c.setwinsize(44, 120)
    c.expect("winch")  # the cell's foreground process group got its SIGWINCH
    c.sendline("stty size")
    c.expect("44 120")
    c.expect(PROMPT)
    c.sendline("exit")
    assert outer.finish() == 0


def test_less_and_vi_draw_and_quit(offline_set):
    outer = Outer("run", "-p", "busybox", "--", "less", "/etc/passwd")
    outer.child.expect("root:x:0:0")
    outer.child.send("q")
    assert outer.finish() == 0

    outer = Outer("run", "-p", "busybox", "--", "vi")  # as the issue typed it
    outer.child.expect("~")  # the empty buffer's lines
    outer.child.send(":q\r")
    assert outer.finish() == 0

    script = "vi /tmp/note && cat /tmp/note"
    outer = Outer("run", "-p", "busybox", "--", "sh", "-c", script)
    c = outer.child
    c.expect("/tmp/note")  # vi's status line
    c.send("ihello from vi\x1b")
    time.sleep(0.3)
    c.send(":wq\r")
    c.expect("hello from vi\r\n")
    assert outer.finish() == 0


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("--", "bash", "-c", "exit 3"), 3),
        (("--", "bash", "-c", "kill -KILL $$"), 128 + 9),
        (("--", "bash", "-c", "kill -TERM $$"), 128 + 15),
        (("--timeout", "1s", "--", "bash", "-c", "sleep 60"), 124),
    ],
    ids=["exit", "sigkill", "sigterm", "timeout"],
)
def test_exit_codes_and_modes_restored(offline_set, args, code):
    outer = Outer("run", "-p", "bash", "-p", "coreutils", *args)
    assert outer.finish() == code


@pytest.mark.parametrize(
    ("how", "code"),
    [("term", 128 + signal.SIGTERM), ("hup", 128 + signal.SIGHUP), ("cell-killed", 137)],
)
def test_modes_restored_when_nixcell_or_the_cell_is_killed(offline_set, how, code):
    outer = Outer("run", "-p", "bash", "--", "bash")
    outer.child.expect(PROMPT)
    nixcell = outer.nixcell_pid()
    if how == "cell-killed":  # the cell's launcher (bwrap), from outside
        with open(f"/proc/{nixcell}/task/{nixcell}/children") as f:
            os.kill(int(f.read().split()[0]), signal.SIGKILL)
    else:
        os.kill(nixcell, signal.SIGTERM if how == "term" else signal.SIGHUP)
    assert outer.finish() == code


def _inside(*script: str) -> str:
    return "; ".join(script)


def test_no_tty_gives_pipes_and_output_still_streams(offline_set):
    script = _inside(
        "test -t 0; echo in=$?",
        "test -t 1; echo out=$?",
        "test -t 2; echo err=$? >&2",
        "sleep 0.2; echo streamed",
    )
    outer = Outer("run", "-T", "-p", "bash", "-p", "coreutils", "--", "bash", "-c", script)
    outer.child.expect("in=1")
    outer.child.expect("out=1")
    outer.child.expect("err=1")
    outer.child.expect("streamed")
    assert outer.finish() == 0


def test_interactive_flag_gives_a_pty_to_piped_stdin(offline_set):
    script = "test -t 0 && test -t 1 && echo both-tty; read -r line; echo got=$line"
    result = cli("run", "-i", "-p", "bash", "--", "bash", "-c", script, input=b"abc\n")
    assert result.returncode == 0, result.stderr
    assert b"both-tty" in result.stdout and b"got=abc" in result.stdout
    # an unfinished last line and the end of input still end the cell's read
    result = cli("run", "-i", "-p", "coreutils", "--", "cat", input=b"no newline")
    assert result.returncode == 0 and b"no newline" in result.stdout


def test_pipes_stay_pipes(offline_set):
    script = "test -t 0 || echo in-pipe; test -t 1 || echo out-pipe; tr a-z A-Z; exit 7"
    result = cli("run", "-p", "bash", "-p", "coreutils", "--", "bash", "-c", script, input=b"x")
    assert (result.returncode, result.stdout) == (7, b"in-pipe\nout-pipe\nX")


def test_interactive_and_no_tty_exclude_each_other(offline_set):
    result = cli("run", "-i", "-T", "-p", "bash", "--", "true")
    assert result.returncode == 2
    assert result.stderr.decode().startswith("nixcell: ") and result.stderr.count(b"\n") == 1


# -- the host's terminal never reaches a cell ----------------------------------------------------

PROBE = r"""
import fcntl, os, sys, termios
for fd in (0, 1, 2):
    st = os.fstat(fd)
    print(f"fd{fd}={os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if os.isatty(fd) else f"fd{fd}=-")
for fd in (0, 1, 2):
    try:
        fcntl.ioctl(fd, termios.TIOCSTI, b"X")
        print(f"sti{fd}=injected")
    except OSError as exc:
        print(f"sti{fd}=refused:{exc.errno}")
try:
    fd = os.open("/dev/tty", os.O_RDWR)
    fcntl.ioctl(fd, termios.TIOCSTI, b"X")
    print("sti-tty=injected")
except OSError as exc:
    print(f"sti-tty=refused:{exc.errno}")
print("pts=" + ",".join(sorted(os.listdir("/dev/pts"))))
print("done")
"""


@pytest.mark.parametrize(
    "mode", [("auto", ()), ("-T", ("-T",)), ("-i", ("-i",))], ids=lambda m: m[0]
)
@pytest.mark.parametrize("stdin", ["terminal", "piped"])
def test_no_host_terminal_fd_and_no_injection(offline_set, mode, stdin):
    """Whatever the mode and stdin, no descriptor of the cell is the outer terminal, TIOCSTI
    injects nothing into it (seccomp refuses it; with a pty it could only reach the cell's own),
    and the cell's /dev/pts holds no other terminal."""
    outer_tty = "stat -L -c 'outer=%t:%T' /proc/self/fd/0"
    inner = [NIXCELL, "run", *mode[1], "-p", "python3", "--", "python3", "-c", PROBE]
    feed = "echo | " if stdin == "piped" else ""
    script = f"{outer_tty}; {feed}" + " ".join(f"'{a}'" for a in inner[:-1]) + ' "$PROBE"'
    env = {**os.environ, "TERM": "xterm", "PROBE": PROBE}
    child = pexpect.spawn(
        "/bin/sh", ["-c", WRAP, "sh", "sh", "-c", script], env=env, encoding="utf-8", timeout=60
    )
    child.expect(r"^(\S+)\r\n")
    modes = child.match.group(1)
    child.expect(r"outer=([0-9a-f]+):([0-9a-f]+)")
    outer = f"{int(child.match.group(1), 16)}:{int(child.match.group(2), 16)}"
    child.expect("done")
    seen = str(child.before)
    child.expect(r"rc=(\d+)\r\n(\S+)\r\n")
    assert (child.match.group(1), child.match.group(2)) == ("0", modes)
    child.expect(r"typed\[(.*)\]")
    assert child.match.group(1) == ""  # nothing was pushed into the outer terminal's input
    fds = dict(re.findall(r"(fd\d)=(\S+)", seen))
    assert len(fds) == 3 and outer not in fds.values(), seen
    assert "injected" not in seen, seen
    assert re.search(r"pts=ptmx\s", seen), seen  # its own devpts instance: nobody else's ptys
    want_pty = mode[0] == "-i" or (mode[0] == "auto" and stdin == "terminal")
    assert (fds["fd0"] != "-") == want_pty and (fds["fd1"] != "-") == want_pty, seen


def test_the_cells_terminal_is_its_console_and_its_own(offline_set):
    """ttyname() finds the pty as /dev/console (bwrap binds what its stdout is); it belongs to
    the cell's user (a root-run cell's host uid), as a login's terminal to its user."""
    script = "tty; stat -L -c %t:%T /dev/console /proc/self/fd/0; stat -c owner=%u /dev/console"
    outer = Outer("run", "-p", "coreutils", "-p", "bash", "--", "bash", "-c", script)
    outer.child.expect(r"/dev/console\r\n(\S+)\r\n(\S+)\r\nowner=(\d+)\r\n")
    assert outer.child.match.group(1) == outer.child.match.group(2)
    assert outer.child.match.group(3) == "1000"
    assert outer.finish() == 0


# -- the in-process API and ordinary users -------------------------------------------------------

API = """
from nixcell import CellSpec, run
spec = CellSpec(command=["bash", "-c", "test -t 0; echo in=$?; test -t 1; echo out=$?"],
                packages=["bash", "coreutils"])
print("exit", run(spec).exit_code)
"""


def test_in_process_api_gives_no_pty_even_on_a_terminal(offline_set):
    """The API's default is tty = never: the cell sees pipes, and still streams to the caller."""
    import sys

    child = pexpect.spawn(
        sys.executable, ["-c", API], env=dict(os.environ), encoding="utf-8", timeout=120
    )
    child.expect("in=1")
    child.expect("out=1")
    child.expect("exit 0")
    child.expect(pexpect.EOF)


def test_ordinary_user_gets_job_control(user_home):
    from tests.integration.test_ordinary_user import as_nobody

    argv, env = as_nobody(user_home, "run", "-p", "bash", "--", "bash", spawn=True)
    child = pexpect.spawn(argv[0], argv[1:], env=env, encoding="utf-8", timeout=60)
    child.expect(PROMPT)
    assert "job control" not in str(child.before)
    child.sendline("sleep 30 & jobs")
    child.expect(r"Running\s+sleep 30")
    child.sendline("exit 4")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 4


def test_mcp_cells_get_no_terminal(offline_set):
    """MCP's cells (execute_async, captured streams) are planned tty = never; a plan that asks
    for a pty anyway is refused there rather than run without one."""
    import asyncio

    from nixcell.errors import NixcellError
    from nixcell.mcp.config import EnvConfig, ServerConfig
    from nixcell.mcp.envs import cell_spec
    from nixcell.runner import execute_async, prepare

    env = EnvConfig(name="shell", interpreter="bash", packages=("bash",))
    spec = cell_spec(env, ServerConfig(environments={}, project=None), ["bash"], timeout=10)
    plan, _ = prepare(spec)
    assert plan.tty == "never"
    result = asyncio.run(
        execute_async(
            plan.with_command(["bash", "-c", "test -t 0 || test -t 1 || echo none"]),
            capture_output=True,
        )
    )
    assert result.stdout == b"none\n"
    forced, _ = prepare(spec.model_copy(update={"tty": "always"}))
    with pytest.raises(NixcellError, match="pseudo-terminal"):
        asyncio.run(execute_async(forced, capture_output=True))
