"""Copy bytes between the host's streams and a cell's (its pty master, or pipes) until it exits.

One ``select`` loop in the calling thread, no thread per stream. The cell's ends are
non-blocking and what it has not read yet waits in a buffer, so a cell that neither reads its
input nor stops writing cannot wedge nixcell; the host's descriptors are left as they are
(``O_NONBLOCK`` would change the open file the user's shell shares). The exit is seen on a
pidfd; output still buffered in the cell's ends is read after it (``drain``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CHUNK = 65536
PIPE_BUF = 4096  # what a blocking pipe select() calls writable takes without waiting
_DRAIN_QUIET = 1.0  # after the exit: stop once the cell's ends are quiet this long


class Escape:
    """ssh's escape on the user's terminal: ``~.`` typed at the start of a line ends the cell,
    ``~~`` sends one ``~``. Without it a cell holding its pty (``stty -isig``, signals ignored,
    its command stopped by SIGSTOP) would keep the terminal: Ctrl-C is a byte for the cell."""

    __slots__ = ("_line_start", "_tilde", "fired")

    def __init__(self) -> None:
        self.fired = False
        self._line_start = True
        self._tilde = False

    def filter(self, data: bytes) -> bytes:
        """The bytes for the cell; sets ``fired`` (and drops the rest) on ``~.``."""
        out = bytearray()
        for byte in data:
            if self._tilde:
                self._tilde = False
                if byte == 0x2E:  # "."
                    self.fired = True
                    break
                out += b"~" if byte == 0x7E else bytes((0x7E, byte))
            elif byte == 0x7E and self._line_start:
                self._tilde = True
                continue
            else:
                out.append(byte)
            self._line_start = byte in (0x0D, 0x0A)
        return bytes(out)


@dataclass
class Link:
    """``src`` -> ``dst``. ``to_cell``: host input (dst is the cell's, non-blocking); else cell
    output (src is the cell's, dst the host's). ``on_eof`` runs when ``src`` ends."""

    src: int
    dst: int
    to_cell: bool
    on_eof: Callable[[Link], None] | None = None
    pending: bytearray = field(default_factory=bytearray)
    open: bool = True
    broken: bool = False  # the host's side is gone (EIO, ENOSPC): output is read and dropped
    gone: bool = False  # output: the host's reader went away (EPIPE): the cell's end is hung up
    src_closed: bool = False
    close_dst: bool = False  # input: close the cell's end once ``src`` ended and all is written
    dst_closed: bool = False
    last: bytes = b"\n"  # input: the last byte taken from ``src``
    collect: bytearray | None = None  # output captured here instead of written to ``dst``
    escape: Escape | None = None  # input typed on the user's terminal: ``~.`` ends the cell

    def feed(self, data: bytes) -> None:
        self.pending += data


def _write_host(link: Link, data: bytes, deadline: float | None) -> None:
    """Write to the host's (blocking) descriptor, at most until ``deadline``: a host reader
    that stopped reading must not keep nixcell from killing the cell at its timeout. A write
    waits for select() to say there is room and is at most PIPE_BUF, which a pipe then takes
    without blocking; what the deadline cut off waits in ``pending`` for ``drain``."""
    if link.collect is not None:
        link.collect += data
        return
    if link.pending:
        data, link.pending = bytes(link.pending) + data, bytearray()
    view = memoryview(data)
    while view and not link.broken:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            _, ready, _ = select.select([], [link.dst], [], timeout)
        except InterruptedError:
            continue
        except (OSError, ValueError):  # closed meanwhile
            link.broken = True
            break
        if not ready:
            link.pending += view
            return
        try:
            view = view[os.write(link.dst, view[:PIPE_BUF]) :]
        except (BlockingIOError, InterruptedError):  # made non-blocking by someone else
            continue
        except BrokenPipeError:  # nobody reads any more: as without nixcell, the cell learns it
            link.broken = link.gone = True
        except OSError:  # closed, full or hung up: the cell goes on, its output is dropped
            link.broken = True


def _read(fd: int) -> bytes | None:
    """A chunk; b"" at EOF (a pty master reads EIO once every slave is closed); None if none."""
    try:
        return os.read(fd, CHUNK)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EIO, errno.EBADF, errno.EINVAL):
            return b""
        raise


def _flush(link: Link) -> None:
    try:
        done = os.write(link.dst, link.pending)
    except BlockingIOError:
        return
    except OSError:  # the cell closed its input: what it did not read is dropped
        link.pending.clear()
        link.broken = True
        return
    del link.pending[:done]


def _step(
    links: list[Link], extra: list[int], timeout: float | None, deadline: float | None = None
) -> list[int]:
    reads = list(extra)
    writes = []
    for link in links:
        if link.to_cell and link.pending and not link.broken:
            writes.append(link.dst)
        elif link.open:
            reads.append(link.src)
    ready_r, ready_w, _ = select.select(reads, writes, [], timeout)
    for link in links:
        if link.to_cell and link.dst in ready_w and link.pending:
            _flush(link)
        if link.open and link.src in ready_r:
            data = _read(link.src)
            if data is None:
                continue
            if not data:
                link.open = False
                if link.on_eof is not None:
                    link.on_eof(link)
            elif link.to_cell:
                if link.escape is not None:
                    data = link.escape.filter(data)
                    if not data:
                        continue
                link.last = data[-1:]
                if not link.broken:
                    link.feed(data)
            else:
                _write_host(link, data, deadline)
                if link.gone:
                    _hang_up(links, link)
        if link.close_dst and not link.dst_closed and not link.open and not link.pending:
            link.dst_closed = True
            with contextlib.suppress(OSError):
                os.close(link.dst)  # the cell reads EOF
    return [fd for fd in extra if fd in ready_r]


def _hang_up(links: list[Link], gone: Link) -> None:
    """The host's reader of ``gone`` went away (``nixcell run -i -- yes | head -1``): close
    our end of the cell's stream, as the pipe's reader did. The cell's next write gets EPIPE
    (a pipe) or its pty hangs up (SIGHUP for its session, as when a terminal goes away); else
    it would run on, its output read and dropped forever."""
    fd = gone.src
    for link in links:
        if link.src == fd:
            link.open, link.src_closed = False, True
        if link.dst == fd and link.to_cell:
            link.open, link.broken, link.dst_closed = False, True, True
            link.pending.clear()
    with contextlib.suppress(OSError):
        os.close(fd)


def pump(links: list[Link], pidfd: int, deadline: float | None) -> bool:
    """Relay until the process behind ``pidfd`` exits (False) or ``deadline`` passes (True);
    a fired ``Escape`` ends it too (``escaped``)."""
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if _step(links, [pidfd], timeout, deadline) or escaped(links):
            return False
        if deadline is not None and time.monotonic() >= deadline:
            return True


def escaped(links: list[Link]) -> bool:
    return any(link.escape is not None and link.escape.fired for link in links)


def drain(links: list[Link]) -> None:
    """After the exit: copy what the cell's ends still hold; host input is no longer read."""
    for link in links:
        if link.to_cell:
            link.open = False
            link.pending.clear()
    outputs = [link for link in links if not link.to_cell]
    for link in outputs:  # what the timeout cut off: the cell is gone, so wait for the reader
        if link.pending:
            _write_host(link, b"", None)
    while any(link.open for link in outputs):
        ready, _, _ = select.select([k.src for k in outputs if k.open], [], [], _DRAIN_QUIET)
        if not ready:
            return  # quiet: a process that outlived the cell's exit holds a write end
        _step(outputs, [], 0)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
