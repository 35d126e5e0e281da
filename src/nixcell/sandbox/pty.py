"""A cell's stdio when a terminal is involved: its own pseudo-terminal, or pipes for the host's.

``attach`` looks at the run's streams and the plan's ``tty`` mode (``ttymode.stdio``):
- PTY: nixcell opens a pty pair; the slave becomes the cell's stdin/stdout (and stderr when that
  is a terminal too), the master stays here. The slave starts with the host terminal's modes and
  window size; SIGWINCH copies every later size onto the master (the kernel then signals the
  cell's foreground process group). The host terminal is in raw mode for the run, so Ctrl-C,
  Ctrl-Z and Ctrl-\\ are bytes for the cell's line discipline, not signals for nixcell; its modes
  are restored by ``close`` whatever ended the run. Inside, ``ctty.py``'s helper makes the slave
  the controlling terminal of the command's own session (job control).
- RELAY: no PTY, but a stream that is a host terminal reaches the cell through a pipe: no cell
  ever holds a host terminal's descriptor (TIOCSTI, TIOCSWINSZ, termios of the user's tty).
The bytes move in ``relay.py``'s loop; the exit status is bwrap's, as without a terminal.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
import tty

from nixcell import ttymode
from nixcell.errors import LimitUnavailableError, SandboxError, UsageError
from nixcell.sandbox import ctty, relay
from nixcell.sandbox.relay import Link

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.bwrap import CellProcess

DEFAULT_SIZE = (24, 80)  # rows, columns when no host terminal tells


def window_size(fd: int) -> tuple[int, int] | None:
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    except OSError:
        return None
    return (rows, cols) if rows and cols else None


def set_window_size(fd: int, size: tuple[int, int]) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))


class Terminal:
    """The wiring of one run: ``streams`` for the cell, links for the relay, what to undo."""

    def __init__(self, streams: list[object], pty: bool) -> None:
        self.streams = streams
        self.pty = pty
        self.ctty_path: str | None = None  # with a pty: the command's path, for ctty.py's helper
        self.links: list[Link] = []
        self._cell_ends: list[int] = []  # ours to close once the cell holds them
        self._own: list[int] = []  # ours to close at the end
        self._undo: list[object] = []  # callables, last first
        self._collected: dict[int, Link] = {}  # stream number -> its collecting link

    def started(self) -> None:
        """The cell has its ends: close ours (a master reads EOF only once no slave is open)."""
        relay.close_all(self._cell_ends)
        self._cell_ends = []

    def relay(self, pid: int, timeout: float | None) -> bool:
        """Relay until the cell's launcher exits; True when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pidfd = os.pidfd_open(pid)
        try:
            return relay.pump(self.links, pidfd, deadline)
        finally:
            os.close(pidfd)

    def drain(self) -> None:
        relay.drain(self.links)

    def wait(self, cell: CellProcess, timeout: float | None) -> tuple[bool, bytes | None, ...]:
        """Relay until the cell ends, killed when ``timeout`` passes: (timed out, out, err)."""
        self.started()
        timed_out = self.relay(cell.proc.pid, timeout)
        if timed_out or relay.escaped(self.links):
            cell.kill()
        self.drain()
        cell.proc.wait()
        return (timed_out, *self.output())

    @property
    def escaped(self) -> bool:
        """The user ended the cell with ``~.`` (relay.Escape)."""
        return relay.escaped(self.links)

    def output(self) -> tuple[bytes | None, bytes | None]:
        """What the captured stdout and stderr collected (None for one not captured)."""
        out, err = (self._collected.get(n) for n in (1, 2))
        return (
            bytes(out.collect) if out is not None and out.collect is not None else None,
            bytes(err.collect) if err is not None and err.collect is not None else None,
        )

    def close(self) -> None:
        """Undo everything (host terminal modes, the SIGWINCH handler), close every fd."""
        for undo in reversed(self._undo):
            with contextlib.suppress(Exception):
                undo()  # type: ignore[operator]
        self._undo = []
        self.started()
        closed = {link.dst for link in self.links if link.dst_closed}
        closed |= {link.src for link in self.links if link.src_closed}
        relay.close_all([fd for fd in self._own if fd not in closed])
        self._own = []


def for_run(
    plan: Plan, streams: tuple[object, object, object], owner: int | None, input: bytes | None
) -> Terminal | None:
    """``attach`` for a planned cell; with a pty, the command's path for the helper too."""
    term = attach(plan.tty, streams, owner, input)
    if term is not None and term.pty:
        from nixcell.preflight import program_path

        try:
            term.ctty_path = program_path(plan)
        except BaseException:
            term.close()
            raise
    return term


def given_slave(plan: Plan, slave: int) -> str:
    """Check the pty slave an asyncio caller gives its cell (``execute_async(terminal=)``)
    and return the command's path for the helper. Refused: a descriptor that is no terminal,
    one of this process's own terminals (its stdio or controlling terminal: TIOCSTI from the
    cell would type into it), a machine without the helper."""
    from nixcell.preflight import program_path

    if not os.isatty(slave):
        raise SandboxError("internal: a cell's terminal must be a pseudo-terminal's slave")
    if _own_terminal(os.fstat(slave).st_rdev):
        raise SandboxError("a cell never gets nixcell's own terminal: give it a pty of its own")
    if ctty.program() is None:
        raise LimitUnavailableError(f"no pseudo-terminal for cells on {os.uname().machine} yet")
    return program_path(plan)


def _own_terminal(rdev: int) -> bool:
    """``rdev`` is the terminal of this process's stdio or its controlling terminal."""
    mine = [0, 1, 2]
    with contextlib.suppress(OSError):
        mine.append(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC))
    try:
        for fd in mine:
            with contextlib.suppress(OSError):
                if os.isatty(fd) and os.fstat(fd).st_rdev == rdev:
                    return True
        return False
    finally:
        if len(mine) > 3:
            os.close(mine[3])


def attach(
    mode: str,
    streams: tuple[object, object, object],
    owner: int | None,
    input: bytes | None = None,
) -> Terminal | None:
    """The terminal wiring for a run with these streams, or None to pass them as they are.

    ``owner``: the cell's host uid when it is not nixcell's own (a root-run cell), to own the
    pty slave as a login's terminal is owned by its user. Streams given as ``subprocess.PIPE``
    are collected (``Terminal.output``), stdin's from ``input``."""
    fds = [ttymode.stream_fd(s, n) for n, s in enumerate(streams)]
    ttys = ttymode.stream_ttys(streams)
    how = ttymode.stdio(mode, ttys)
    if how == ttymode.PTY:
        if fds[0] is None or fds[1] is None:
            raise UsageError("a pseudo-terminal (-i) needs the run's own stdin and stdout")
        if ctty.program() is not None:
            return _open_pty(list(streams), fds, ttys, owner)  # type: ignore[arg-type]
        machine = os.uname().machine
        if mode == "always":
            raise LimitUnavailableError(f"no pseudo-terminal for cells on {machine} yet (-i)")
        import logging  # (not at the top: this module is on every terminal run's path)

        logging.getLogger(__name__).warning(
            "no pseudo-terminal for cells on %s yet: the cell's stdio are pipes", machine
        )
        how = ttymode.RELAY if any(ttys) else ttymode.DIRECT
    if how == ttymode.DIRECT:
        return None
    return _open_pipes(list(streams), fds, ttys, input)


def _open_pty(
    streams: list[object], fds: list[int], ttys: tuple[bool, bool, bool], owner: int | None
) -> Terminal:
    master, slave = os.openpty()
    term = Terminal([slave, slave, slave if ttys[2] else streams[2]], pty=True)
    term._own.append(master)
    term._cell_ends.append(slave)
    try:
        if not ttys[2]:
            _wire(term, 2, None, None)  # a captured stderr is collected
        host = fds[0] if ttys[0] else fds[1] if ttys[1] else None
        if ttys[0]:  # the user's erase and kill characters, flow control, ... as the slave's
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(fds[0]))
        set_window_size(master, (window_size(host) if host is not None else None) or DEFAULT_SIZE)
        if owner is not None:
            os.fchown(slave, owner, -1)
        os.set_blocking(master, False)
        typed = Link(fds[0], master, True, on_eof=_send_eof)
        if ttys[0]:  # the user's own keys, in raw mode: ssh's way out (relay.Escape)
            typed.escape = relay.Escape()
        term.links += [typed, Link(master, fds[1], False)]
        if host is not None:
            _follow_resizes(term, host, master)
        if ttys[0]:
            _raw(term, fds[0])
    except BaseException:
        term.close()
        raise
    return term


def _send_eof(link: Link) -> None:
    """The host's stdin ended (a pipe under -i): the cell's line discipline gets its EOF
    character, twice when a line is unfinished (the first only ends that line)."""
    eof = termios.tcgetattr(link.dst)[6][termios.VEOF]
    link.feed(eof if link.last == b"\n" else eof + eof)


def _raw(term: Terminal, fd: int) -> None:
    saved = termios.tcgetattr(fd)

    def restore() -> None:
        # Discards unread input too: a reply the terminal sent to the cell's escape sequences
        # must not land in the user's shell. SIGTTOU ignored: restoring must never stop us.
        with _ignored(signal.SIGTTOU):
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)

    term._undo.append(restore)
    tty.setraw(fd, termios.TCSADRAIN)


def _follow_resizes(term: Terminal, host: int, master: int) -> None:
    def resized(_signum: int, _frame: object) -> None:
        size = window_size(host)
        if size is not None:
            with contextlib.suppress(OSError):
                set_window_size(master, size)

    try:
        previous = signal.signal(signal.SIGWINCH, resized)
    except ValueError:  # not the main thread: the size stays the one at start
        return
    term._undo.append(lambda: signal.signal(signal.SIGWINCH, previous))


@contextlib.contextmanager
def _ignored(signum: int):
    try:
        previous = signal.signal(signum, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signum, previous)


def _open_pipes(
    streams: list[object], fds: list[int | None], ttys: tuple[bool, ...], input: bytes | None
) -> Terminal:
    term = Terminal(streams, pty=False)
    try:
        for n in range(3):
            _wire(term, n, fds[n] if ttys[n] else None, input if n == 0 else None)
    except BaseException:
        term.close()
        raise
    return term


def _wire(term: Terminal, n: int, host: int | None, input: bytes | None) -> None:
    """Stream ``n`` of the cell through a pipe of ours: relayed to/from the ``host`` terminal,
    or, for a captured stream (``subprocess.PIPE``), collected / fed from ``input``."""
    if host is None and term.streams[n] != subprocess.PIPE:
        return  # passed as it is (a file, a pipe of the caller's, DEVNULL)
    read_end, write_end = os.pipe()
    cell_end, our_end = (read_end, write_end) if n == 0 else (write_end, read_end)
    term._own.append(our_end)
    term._cell_ends.append(cell_end)
    term.streams[n] = cell_end
    os.set_blocking(our_end, False)
    if n == 0:
        link = Link(-1 if host is None else host, our_end, True, close_dst=True)
        if host is None:  # fed from ``input`` alone
            link.open = False
            link.feed(input or b"")
    else:
        link = Link(our_end, -1 if host is None else host, False)
        if host is None:
            link.collect = bytearray()
            term._collected[n] = link
    term.links.append(link)
