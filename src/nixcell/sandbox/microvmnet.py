"""The host end of a microVM's network: one virtio serial port, many proxy connections.

The guest has no NIC. Its relay (``microvmrelay.c``) listens on the plan's proxy address inside
the guest and frames every connection over the ``nixcell.proxy`` port (u32 stream id, u8 type,
u8 0, u16 length; open, data, eof, close). Here one thread of ours enters the cell's lo-only
network namespace (the engine's: ``io.session.net.netns_fd``, holding the proxy's listener) and,
for each stream the guest opens, connects to ``127.0.0.1:<port>`` there: the proxy sees the
connection as any cell's, so the same policy, credentials and audit apply. Nothing else is
reachable: the thread only ever connects to that one address.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading

log = logging.getLogger(__name__)
HEADER = struct.Struct("!IBxH")
OPEN, DATA, END, CLOSE = 1, 2, 3, 4
CHUNK = 16384
CLONE_NEWNET = 0x40000000


def frame(stream: int, kind: int, data: bytes = b"") -> bytes:
    return HEADER.pack(stream, kind, len(data)) + data


class Mux:
    """Demultiplex ``channel`` (our end of the proxy port) into connections to the proxy."""

    def __init__(self, channel: socket.socket, netns_fd: int | None, port: int) -> None:
        self.channel = channel
        self.netns_fd = netns_fd
        self.port = port
        self.streams: dict[int, socket.socket] = {}
        self.reading: set[int] = set()
        self.ended: set[int] = set()  # the guest said eof
        self.sel = selectors.DefaultSelector()
        self.buf = b""

    def run(self, done: threading.Event) -> None:
        try:
            if self.netns_fd is not None:
                from nixcell.sandbox import libc

                libc.call("setns", self.netns_fd, CLONE_NEWNET)  # this thread only
            self.sel.register(self.channel, selectors.EVENT_READ, None)
            while self._step():
                pass
        except OSError as exc:
            log.debug("microVM proxy channel ended: %s", exc)
        finally:
            for sock in self.streams.values():
                sock.close()
            self.sel.close()
            done.set()

    def _send(self, stream: int, kind: int, data: bytes = b"") -> None:
        self.channel.sendall(frame(stream, kind, data))

    def _drop(self, stream: int) -> None:
        sock = self.streams.pop(stream, None)
        self.reading.discard(stream)
        self.ended.discard(stream)
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(sock)
            sock.close()

    def _step(self) -> bool:
        for key, _ in self.sel.select():
            if key.data is None:
                chunk = self.channel.recv(65536)
                if not chunk:
                    return False
                self.buf += chunk
                while len(self.buf) >= HEADER.size:
                    stream, kind, size = HEADER.unpack_from(self.buf)
                    if len(self.buf) < HEADER.size + size:
                        break
                    data = self.buf[HEADER.size : HEADER.size + size]
                    self.buf = self.buf[HEADER.size + size :]
                    self._from_guest(stream, kind, data)
            else:
                self._from_proxy(key.data, key.fileobj)  # type: ignore[arg-type]
        return True

    def _from_guest(self, stream: int, kind: int, data: bytes) -> None:
        if kind == OPEN:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(("127.0.0.1", self.port))
            except OSError:
                sock.close()
                self._send(stream, CLOSE)
                return
            self.streams[stream] = sock
            self.reading.add(stream)
            self.sel.register(sock, selectors.EVENT_READ, stream)
            return
        sock = self.streams.get(stream)
        if sock is None:
            return
        if kind == DATA:
            try:
                sock.sendall(data)
            except OSError:
                self._send(stream, CLOSE)
                self._drop(stream)
        elif kind == END:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            self.ended.add(stream)
            if stream not in self.reading:
                self._drop(stream)
        elif kind == CLOSE:
            self._drop(stream)

    def _from_proxy(self, stream: int, sock: socket.socket) -> None:
        try:
            data = sock.recv(CHUNK)
        except OSError:
            self._send(stream, CLOSE)
            self._drop(stream)
            return
        if data:
            self._send(stream, DATA, data)
            return
        self._send(stream, END)
        self.reading.discard(stream)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)
        if stream in self.ended:
            self._drop(stream)
