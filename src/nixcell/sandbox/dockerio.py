"""A Docker cell's stdio: the attach stream between the daemon and the engine's fds.

With ``Tty`` off the daemon sends the container's output as frames (1 byte stream, 3 zero
bytes, 4-byte big-endian length, payload) and takes its stdin as raw bytes; a half-close
(``SHUT_WR``) is the container's stdin EOF (``StdinOnce``). Two threads copy: fds the engine
gives are dup-ed here (it closes its own once the cell started) and closed when the stream
ends, so the engine's readers see EOF exactly after the last byte. ``stop`` wakes the stdin
copier (it may wait on a terminal that never ends) and closes the stream.

A reader gone (EPIPE on our copy of stdout or stderr) cannot reach the cell as EPIPE: the
container's own pipe is the shim's, which keeps reading. So the pump calls ``on_broken`` (the
cell sends SIGPIPE to the command, as its next write under bwrap would get), drops what follows
on that stream, and if output still comes ``IGNORED_AFTER`` seconds later (a command that
ignores SIGPIPE, as Python does, and keeps writing) calls ``on_ignored`` (the cell kills it).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

IGNORED_AFTER = 2.0  # s after SIGPIPE: output still coming means the command ignores it


def _write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data``; False when the reader is gone (EPIPE, or any write error)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return False
    return True


class Pump:
    def __init__(
        self,
        sock: socket.socket,
        stdin: int | None,
        out: int | None,
        err: int | None,
        on_broken: Callable[[int], None] | None = None,
        on_ignored: Callable[[int], None] | None = None,
    ):  # fmt: skip
        self.sock = sock
        self.on_broken = on_broken
        self.on_ignored = on_ignored
        self.broken: dict[int, float] = {}  # stream -> when its reader was found gone
        self.ignored = False
        self.stdin = os.dup(stdin) if stdin is not None else None
        self.fds: dict[int, int | None] = {
            1: os.dup(out) if out is not None else None,
            2: os.dup(err) if err is not None else None,
        }
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self.done = threading.Event()
        self._threads = [threading.Thread(target=self._copy_out, daemon=True)]
        if self.stdin is not None:
            self._threads.append(threading.Thread(target=self._copy_in, daemon=True))
        for t in self._threads:
            t.start()

    def _copy_out(self) -> None:
        buf = b""
        try:
            while True:
                try:
                    chunk = self.sock.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                while len(buf) >= 8:
                    stream, size = struct.unpack(">BxxxI", buf[:8])
                    if len(buf) < 8 + size:
                        break
                    payload, buf = buf[8 : 8 + size], buf[8 + size :]
                    self._deliver(stream, payload)
        finally:
            for key, fd in self.fds.items():
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                self.fds[key] = None
            self.done.set()

    def _deliver(self, stream: int, payload: bytes) -> None:
        fd = self.fds.get(stream)
        if fd is not None and _write_all(fd, payload):
            return
        if stream not in self.fds:
            return
        if fd is not None:  # its reader is gone: tell the cell once
            with contextlib.suppress(OSError):
                os.close(fd)
            self.fds[stream] = None
            self.broken[stream] = time.monotonic()
            if self.on_broken is not None:
                self.on_broken(stream)
        elif (
            stream in self.broken
            and not self.ignored
            and time.monotonic() - self.broken[stream] > IGNORED_AFTER
        ):
            self.ignored = True
            if self.on_ignored is not None:
                self.on_ignored(stream)

    def _copy_in(self) -> None:
        assert self.stdin is not None
        try:
            while True:
                ready, _, _ = select.select([self.stdin, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                data = os.read(self.stdin, 65536)
                if not data:
                    break
                self.sock.sendall(data)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the container is gone, or its stdin closed
        finally:
            with contextlib.suppress(OSError):
                os.close(self.stdin)

    def stop(self) -> None:
        """End both copies (their fds closed) and the stream; idempotent."""
        if self._wake_w < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self.sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
