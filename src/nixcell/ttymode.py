"""Does a cell get a pseudo-terminal? One pure decision, shared by every way of starting a cell.

``tty`` of a spec/plan: ``auto`` (the CLI's default) gives a PTY when stdin and stdout are
terminals, ``always`` (``-i``) gives one whatever they are, ``never`` (``-T``; the default of the
in-process API and MCP) gives none. Whatever the mode, a cell never gets one of the host's
terminals as a file descriptor (TIOCSTI and friends, THREATS.md "Terminal"): without a PTY, a
stream that is a host terminal reaches the cell through a pipe that nixcell relays. The CLI's
warm path hands the cell its stdio as it is, so it may run only where ``stdio`` says "direct".
Imports nothing: the warm path calls it.
"""

from __future__ import annotations

MODES = ("auto", "always", "never")
PTY, RELAY, DIRECT = "pty", "relay", "direct"


def wants_pty(mode: str, stdin_is_tty: bool, stdout_is_tty: bool) -> bool:
    """True when the cell gets its own pseudo-terminal."""
    if mode == "always":
        return True
    if mode == "auto":
        return stdin_is_tty and stdout_is_tty
    return False


def stdio(mode: str, ttys: tuple[bool, bool, bool]) -> str:
    """How the cell's stdio is wired, given which of the caller's stdin, stdout, stderr are
    terminals: PTY (its own pseudo-terminal), RELAY (pipes in place of the host terminals) or
    DIRECT (the caller's streams as they are: none of them is a terminal)."""
    if wants_pty(mode, ttys[0], ttys[1]):
        return PTY
    return RELAY if any(ttys) else DIRECT


def stream_fd(stream: object, default: int) -> int | None:
    """The host descriptor behind a Popen stream argument (None: the caller's own, e.g. the
    process's fd ``default``); None for PIPE, DEVNULL and STDOUT, which are no terminal."""
    if stream is None:
        return default
    if isinstance(stream, int):
        return stream if stream >= 0 else None
    try:
        return int(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def stream_ttys(streams: tuple[object, object, object] | list[object]) -> tuple[bool, bool, bool]:
    """Which of a run's stdin, stdout, stderr (Popen arguments) are terminals."""
    import os

    fds = [stream_fd(s, n) for n, s in enumerate(streams)]
    return tuple(fd is not None and os.isatty(fd) for fd in fds)  # type: ignore[return-value]
