"""The proxy's sockets: plain or TLS over memory BIOs, driven by the event loop's readiness calls.

asyncio's own streams put every relayed byte through a TLS record list, a join, the
StreamReader's buffer, a slice and the transport's write buffer; on a 100 MB download that
copying cost the proxy about as much as its two TLS operations (docs/benchmarks.md). Here the
socket is read into one fixed buffer, TLS runs in an ``ssl.SSLObject`` over ``MemoryBIO``\\ s and
decrypts into a second fixed buffer, and what the caller writes is encrypted at once and sent.
A ``read`` returns a view of that buffer: valid until the next ``read`` on the same stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable

FIRST_READ = 16 * 1024  # buffers start at one TLS record: idle connections stay small,
READ_SIZE = 1 << 20  # double up to this while reads keep filling them (fewer, larger sends:
# ~10 % less CPU per relayed byte than 256 KiB here, 2 MiB was slower again), and shrink back
# when a read that had to wait brings less than one record.
FREE_GROWTH = 64 * 1024  # any buffer may grow to this; beyond it draws on the shared budget:
BIG_BUFFERS = 64 << 20  # bytes above FREE_GROWTH over all streams of the process, so a cell's
# 1024 connections cannot make the host hold 2 MiB each (a bulk transfer needs two buffers)
YIELD_EVERY = 1 << 20  # bytes read without waiting before the loop's other tasks get a turn


class Stream:
    """One connection; at most one task reads it at a time, any number may write."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._tls: ssl.SSLObject | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._raw = bytearray(FIRST_READ)  # socket → incoming BIO (TLS only)
        self._data = bytearray(FIRST_READ)  # what read() hands out
        self._pending: list[bytes | bytearray | memoryview] = []  # plain writes not yet sent
        self._send_lock = asyncio.Lock()
        self._waiters: set[asyncio.Future[None]] = set()
        self._waited = False
        self._unyielded = 0
        self.closed = False

    @classmethod
    async def open(
        cls, host: str, port: int, context: ssl.SSLContext | None, server_hostname: str | None
    ) -> Stream:
        """Connect (and shake hands when ``context`` is given); the socket is closed on failure
        or cancellation."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        stream = cls(sock)
        try:
            if context is not None:
                await stream.start_tls(context, server_side=False, server_hostname=server_hostname)
        except BaseException:
            stream.close()
            raise
        return stream

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._tls

    async def start_tls(
        self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
    ) -> None:
        """Shake hands on this connection; later reads and writes go through TLS."""
        tls = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self.drain()
                if not await self._fill():
                    raise ConnectionResetError("peer closed during the TLS handshake") from None
        self._tls = tls
        await self.drain()

    # -- reading ------------------------------------------------------------------------------
    async def read(self) -> memoryview:
        """The next bytes from the peer; empty at end of stream."""
        self._waited = False
        if self._tls is None:
            got = await self._recv_into(self._data)
        else:
            got = await self._read_tls()
        view = memoryview(self._data)[:got]
        self._data = self._resized(self._data, got)  # the view keeps the old one alive
        if self._waited:
            self._unyielded = 0
        else:  # data kept arriving: other connections on this loop still get their turn
            self._unyielded += got
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await asyncio.sleep(0)
        return view

    async def _read_tls(self) -> int:
        assert self._tls is not None
        view, got = memoryview(self._data), 0
        while True:
            try:
                while got < len(view):
                    n = self._tls.read(len(view) - got, view[got:])
                    if n == 0:  # close_notify
                        return got
                    got += n
                return got
            except ssl.SSLWantReadError:
                if self._outgoing.pending:  # e.g. a TLS 1.3 KeyUpdate reply
                    await self.drain()
                if got:
                    return got
                if not await self._fill():
                    continue  # the BIO now holds EOF: the next read says how the peer ended
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return got  # EOF, with or without close_notify: the HTTP framing judges

    async def _fill(self) -> bool:
        n = await self._recv_into(self._raw)
        if n == 0:
            self._incoming.write_eof()
            return False
        self._incoming.write(memoryview(self._raw)[:n])
        self._raw = self._resized(self._raw, n)
        return True

    async def _recv_into(self, buf: bytearray) -> int:
        while True:
            try:
                return self.sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                await self._ready(self._loop.add_reader, self._loop.remove_reader)

    def quiet(self) -> bool:
        """Nothing arrived, and no end of stream, since the last read: an idle kept-alive
        connection that may carry the next request. Bytes sent unasked (or a close) mean no."""
        if self.closed or self._incoming.pending or (self._tls is not None and self._tls.pending()):
            return False
        try:
            self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return False

    # -- writing ------------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; TLS encrypts it now, plain data must stay unchanged until ``drain``."""
        if not data:
            return
        if self.closed:
            raise ConnectionAbortedError("stream closed")
        if self._tls is not None:
            self._tls.write(data)
        else:
            self._pending.append(data)

    async def drain(self) -> None:
        """Send everything written so far (TLS records, handshake messages included)."""
        async with self._send_lock:
            while self._outgoing.pending:
                await self._sendall(self._outgoing.read())
            while self._pending:
                await self._sendall(self._pending.pop(0))

    async def _sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except (BlockingIOError, InterruptedError):
                await self._ready(self._loop.add_writer, self._loop.remove_writer)

    async def write_eof(self) -> None:
        """Half-close a plain connection (after a protocol switch); TLS has no half-close."""
        await self.drain()
        if self._tls is None and not self.closed:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def _resized(self, buf: bytearray, got: int) -> bytearray:
        """Double a buffer that a read filled, shrink one that an idle read barely used."""
        size = len(buf)
        if got == size < READ_SIZE:
            new = 2 * size
        elif self._waited and got < FIRST_READ < size:
            new = FIRST_READ
        else:
            return buf
        return bytearray(new) if _budget.change(size, new) else buf

    # -- waiting and closing ------------------------------------------------------------------
    async def _ready(
        self,
        add: Callable[..., object],
        remove: Callable[[int], object],
    ) -> None:
        if self.closed:
            raise ConnectionAbortedError("stream closed")
        self._waited = True
        fut: asyncio.Future[None] = self._loop.create_future()
        fd = self.sock.fileno()
        add(fd, _wake, fut)
        self._waiters.add(fut)
        try:
            await fut
        finally:
            self._waiters.discard(fut)
            if not self.closed:
                remove(fd)

    def close(self) -> None:
        """Send close_notify if it fits without waiting, wake any waiting task, close."""
        if self.closed:
            return
        self.closed = True
        for buf in (self._data, self._raw):
            _budget.change(len(buf), 0)
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self._tls.unwrap()
            with contextlib.suppress(OSError):
                self.sock.send(self._outgoing.read())
        fd = self.sock.fileno()
        if fd >= 0:  # before close: a registration must not outlive its fd number
            self._loop.remove_reader(fd)
            self._loop.remove_writer(fd)
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionAbortedError("stream closed"))
        self.sock.close()


class _Budget:
    """Bytes of stream buffers above FREE_GROWTH, over every event loop of the process."""

    def __init__(self) -> None:
        self.used = 0
        self._lock = threading.Lock()

    def change(self, old: int, new: int) -> bool:
        delta = max(new - FREE_GROWTH, 0) - max(old - FREE_GROWTH, 0)
        with self._lock:
            if delta > 0 and self.used + delta > BIG_BUFFERS:
                return False
            self.used += delta
            return True


_budget = _Budget()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Server:
    """Accepts connections on a listening socket, one task per connection (``handler``)."""

    def __init__(
        self, listener: socket.socket, handler: Callable[[Stream], Awaitable[None]]
    ) -> None:
        listener.setblocking(False)
        self._listener = listener
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._wait: asyncio.Future[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()  # strong references until each ends
        self._task = self._loop.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        fd = self._listener.fileno()
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                self._wait = self._loop.create_future()
                self._loop.add_reader(fd, _wake, self._wait)
                try:
                    await self._wait
                finally:
                    if not self._closed.is_set():
                        self._loop.remove_reader(fd)
                continue
            except OSError:  # e.g. EMFILE: back off instead of spinning
                await asyncio.sleep(0.1)
                continue
            self._handler_task(conn)

    def _handler_task(self, conn: socket.socket) -> None:
        try:
            stream = Stream(conn)
        except OSError:
            conn.close()
            return
        task = self._loop.create_task(self._handler(stream))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    def close(self) -> None:
        """Stop accepting and close the listener: new connections are refused from now on."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._listener.fileno())
        if self._wait is not None and not self._wait.done():
            self._wait.cancel()
        self._task.cancel()
        self._listener.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
