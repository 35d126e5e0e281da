"""The parts of interactive cells without a sandbox: the tty decision, the controlling-terminal
helper's bytes, the relay loop (real pipes and processes), the host terminal's modes (real ptys).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_preflight import host, make_plan  # noqa: F401  (host is a fixture)

from nixcell import preflight, ttymode
from nixcell.errors import UsageError
from nixcell.runner import CommandNotFoundError
from nixcell.sandbox import ctty, pty, relay

# -- ttymode: one decision for the CLI, its warm path, the API and MCP ------------------------


@pytest.mark.parametrize(
    ("mode", "ttys", "expected"),
    [
        ("auto", (True, True, True), "pty"),
        ("auto", (True, True, False), "pty"),  # stderr to a file: a pty still
        ("auto", (False, True, True), "relay"),  # piped stdin: no pty, the terminals relayed
        ("auto", (True, False, False), "relay"),  # output piped: no pty
        ("auto", (False, False, True), "relay"),
        ("auto", (False, False, False), "direct"),
        ("always", (False, False, False), "pty"),
        ("always", (True, True, True), "pty"),
        ("never", (True, True, True), "relay"),  # -T on a terminal: pipes, never the tty
        ("never", (False, False, False), "direct"),
    ],
)
def test_stdio_decision_table(mode, ttys, expected):
    assert ttymode.stdio(mode, ttys) == expected


@given(st.sampled_from(ttymode.MODES), st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_a_host_terminal_is_never_passed_as_it_is(mode, ttys):
    how = ttymode.stdio(mode, ttys)
    assert (how == ttymode.DIRECT) == (not any(ttys) and mode != "always")
    assert (how == ttymode.PTY) == ttymode.wants_pty(mode, ttys[0], ttys[1])


def test_stream_fds_of_popen_arguments(tmp_path):
    with open(tmp_path / "f", "wb") as f:
        assert ttymode.stream_fd(None, 1) == 1
        assert ttymode.stream_fd(f, 0) == f.fileno()
        for special in (subprocess.PIPE, subprocess.DEVNULL, subprocess.STDOUT):
            assert ttymode.stream_fd(special, 0) is None
        assert ttymode.stream_ttys([f, f, f]) == (False, False, False)
    master, slave = os.openpty()
    try:
        assert ttymode.stream_ttys([slave, subprocess.PIPE, None]) == (True, False, os.isatty(2))
    finally:
        os.close(master)
        os.close(slave)


def test_plan_carries_the_specs_tty_mode_through_its_json():
    from nixcell.host import HostFacts
    from nixcell.nix.closure import Closure
    from nixcell.plan import Plan, plan
    from nixcell.spec import CellSpec

    closure = Closure(env="/nix/store/e-env", paths=("/nix/store/e-env",), programs=("true",))
    facts = HostFacts(uid=1000, gid=1000)
    for fields, mode in (({}, "never"), ({"tty": "auto"}, "auto"), ({"tty": "always"}, "always")):
        planned = plan(CellSpec(command=["true"], packages=["bash"], **fields), closure, facts)
        assert planned.tty == mode == Plan.from_json(planned.to_json()).tty


# -- ctty: the helper's machine code is its assembly --------------------------------------------


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("as", "ld", "objcopy")) or os.uname().machine != "x86_64",
    reason="needs GNU binutils on x86_64",
)
def test_helper_bytes_are_the_assembled_source(tmp_path: Path):
    (tmp_path / "h.s").write_text(ctty.SOURCE)
    subprocess.run(["as", "--64", "-o", tmp_path / "h.o", tmp_path / "h.s"], check=True)
    subprocess.run(
        ["ld", "-static", "-nostdlib", "-o", tmp_path / "h", tmp_path / "h.o"], check=True
    )
    subprocess.run(
        ["objcopy", "-O", "binary", "-j", ".text", tmp_path / "h", tmp_path / "h.bin"], check=True
    )
    assert (tmp_path / "h.bin").read_bytes() == ctty._X86_64


def test_helper_elf_is_one_executable_segment_holding_the_entry():
    program = ctty.elf(b"\x90" * 10, 62)
    entry, phoff = struct.unpack_from("<QQ", program, 24)
    p_type, p_flags, offset, vaddr, _, filesz, memsz, _ = struct.unpack_from(
        "<IIQQQQQQ", program, phoff
    )
    assert program[:4] == b"\x7fELF" and (p_type, p_flags, offset) == (1, 5, 0)
    assert filesz == memsz == len(program) and vaddr <= entry < vaddr + filesz
    assert ctty.program("riscv64") is None  # no helper: no pty (pty.attach says so)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the helper exists for x86_64")
def test_helper_refuses_without_a_terminal_and_execs_with_one(tmp_path: Path):
    helper = tmp_path / "helper"
    helper.write_bytes(ctty.program() or b"")
    helper.chmod(0o755)
    no_tty = subprocess.run(
        [helper, "/bin/echo", "echo", "hi"], capture_output=True, stdin=subprocess.DEVNULL
    )
    assert no_tty.returncode == 125 and b"controlling terminal" in no_tty.stderr
    master, slave = os.openpty()
    try:
        script = "tty_nr=$(cut -d' ' -f7 /proc/self/stat); [ $tty_nr != 0 ] && echo ctty $0"
        done = subprocess.run(
            [helper, "/bin/sh", "argv0", "-c", script], stdin=slave, capture_output=True
        )
        missing = subprocess.run([helper, "/nonexistent", "x"], stdin=slave, capture_output=True)
    finally:
        os.close(master)
        os.close(slave)
    assert (done.returncode, done.stdout) == (0, b"ctty argv0\n")  # argv[0] as given
    assert missing.returncode == 126 and b"cannot execute" in missing.stderr


def test_program_path_is_what_execvp_would_run(host):  # noqa: F811
    assert preflight.program_path(make_plan(host)) == "/bin/prog"
    assert preflight.program_path(make_plan(host, cmd=("/usr/bin/env",))) == "/usr/bin/env"
    with pytest.raises(CommandNotFoundError):
        preflight.program_path(make_plan(host, cmd=("absent",)))


# -- relay: real pipes, real processes ----------------------------------------------------------


def _run(term: pty.Terminal, script: str) -> tuple[int, tuple[bytes | None, bytes | None]]:
    """``sh -c script`` on the terminal's streams, relayed to its end: (exit status, output)."""
    proc = subprocess.Popen(
        ["/bin/sh", "-c", script],
        stdin=term.streams[0],  # type: ignore[arg-type]
        stdout=term.streams[1],  # type: ignore[arg-type]
        stderr=term.streams[2],  # type: ignore[arg-type]
    )
    term.started()
    assert term.relay(proc.pid, timeout=30) is False
    term.drain()
    return proc.wait(), term.output()


def test_relay_collects_output_and_feeds_input_without_wedging():
    """Host terminal input relayed, both outputs collected, the exit status unchanged."""
    master, slave = os.openpty()  # a "host terminal" for stdin, so the relay takes over
    try:
        term = pty.attach("never", (slave, subprocess.PIPE, subprocess.PIPE), None)
        assert term is not None and not term.pty
        os.write(master, b"line from the terminal\n")
        code, output = _run(term, "sleep 0.3; head -n1; echo err >&2; exit 5")
        assert (code, output) == (5, (b"line from the terminal\n", b"err\n"))
    finally:
        term.close()
        os.close(master)
        os.close(slave)


def test_relay_times_out_and_input_is_fed_then_closed():
    pipes = (subprocess.PIPE, subprocess.PIPE, subprocess.PIPE)
    assert pty.attach("never", pipes, None, b"x") is None  # no terminal: communicate() does it
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    links = [relay.Link(-1, write_end, True, close_dst=True, open=False)]
    links[0].feed(b"y" * (1 << 20))
    proc = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 0.2; wc -c"], stdin=read_end, stdout=subprocess.PIPE
    )
    os.close(read_end)
    try:
        assert relay.pump(links, os.pidfd_open(proc.pid), time.monotonic() + 30) is False
        assert proc.stdout.read().strip() == b"1048576"  # all of it, then EOF
        assert links[0].dst_closed
    finally:
        proc.wait()
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    try:
        assert relay.pump([], os.pidfd_open(sleeper.pid), time.monotonic() + 0.2) is True
    finally:
        sleeper.kill()
        sleeper.wait()


# -- the host terminal: raw for the run, restored whatever happens --------------------------------


def test_host_terminal_restored_after_an_exception_and_winch_handler_put_back():
    master, slave = os.openpty()  # the "host terminal" is this pty's slave
    before = termios.tcgetattr(slave)
    handler = signal.getsignal(signal.SIGWINCH)
    try:
        pty.set_window_size(master, (31, 97))
        with pytest.raises(RuntimeError):
            term = pty.attach("auto", (slave, slave, slave), None)
            try:
                assert term is not None and term.pty
                raw = termios.tcgetattr(slave)
                assert not raw[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
                cell = term.streams[0]
                assert pty.window_size(cell) == (31, 97)  # the host's size, from the start
                assert termios.tcgetattr(cell)[3] == before[3]  # and its modes
                pty.set_window_size(master, (50, 132))
                os.kill(os.getpid(), signal.SIGWINCH)
                assert pty.window_size(cell) == (50, 132)
                raise RuntimeError("boom")
            finally:
                term.close()
        assert termios.tcgetattr(slave) == before
        assert signal.getsignal(signal.SIGWINCH) == handler
    finally:
        os.close(master)
        os.close(slave)


def test_pty_relays_to_the_host_terminal_and_collects_a_captured_stderr():
    master, slave = os.openpty()  # the "host terminal" is this pty's slave
    term = pty.attach("auto", (slave, slave, subprocess.PIPE), None)
    try:
        assert term is not None and term.pty
        script = "test -t 0 && test -t 1 && ! test -t 2 && echo on-its-pty; echo err >&2"
        assert _run(term, script) == (0, (None, b"err\n"))
    finally:
        term.close()
    assert b"on-its-pty" in os.read(master, 4096)
    os.close(master)
    os.close(slave)


def test_always_refuses_captured_streams():
    with pytest.raises(UsageError, match="pseudo-terminal"):
        pty.attach("always", (subprocess.PIPE, subprocess.PIPE, None), None)
