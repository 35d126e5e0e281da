"""net/stream.py on real loopback sockets: TLS over memory BIOs, ends of stream, closing, the
accept loop. No cell and no proxy: the relay tests (tests/integration) cover those."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading

import pytest
import trustme

from nixcell.net.stream import FIRST_READ, READ_SIZE, Server, Stream


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("up.test").configure_cert(ctx)
    return ctx


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


def tls_peer(ca: trustme.CA, script) -> tuple[int, threading.Thread]:
    """A blocking TLS server thread on 127.0.0.1 running ``script(tls_socket)`` once."""
    listener = socket.create_server(("127.0.0.1", 0))
    ctx = server_context(ca)

    def serve() -> None:
        conn, _ = listener.accept()
        listener.close()
        with ctx.wrap_socket(conn, server_side=True) as tls:
            script(tls)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread


async def read_all(stream: Stream) -> bytes:
    out = bytearray()
    while data := await stream.read():
        out += data
    return bytes(out)


def test_tls_round_trip_of_a_long_message_and_clean_close(ca):
    payload = bytes(range(256)) * 40_000  # 10 MB, longer than any buffer

    def script(tls: ssl.SSLSocket) -> None:
        got = bytearray()
        while len(got) < 5:
            got += tls.recv(5 - len(got))
        assert got == b"hello"
        tls.sendall(payload)
        tls.unwrap()  # close_notify

    port, thread = tls_peer(ca, script)

    async def main() -> bytes:
        stream = await Stream.open("127.0.0.1", port, client_context(ca), "up.test")
        assert stream.ssl_object is not None and stream.ssl_object.version() is not None
        stream.write(b"hello")
        await stream.drain()
        data = await read_all(stream)
        stream.close()
        return data

    assert asyncio.run(main()) == payload
    thread.join(5)


def test_eof_without_close_notify_ends_the_stream(ca):
    def script(tls: ssl.SSLSocket) -> None:
        tls.sendall(b"partial")  # then TCP closes: SSLSocket.close sends no close_notify

    port, thread = tls_peer(ca, script)

    async def main() -> bytes:
        stream = await Stream.open("127.0.0.1", port, client_context(ca), "up.test")
        try:
            return await read_all(stream)
        finally:
            stream.close()

    assert asyncio.run(main()) == b"partial"  # the HTTP framing above decides if that was all
    thread.join(5)


def test_a_failed_handshake_raises_and_leaves_no_socket(ca):
    other = trustme.CA()  # the peer's certificate is not from the trusted CA
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ctx = server_context(other)

    def serve() -> None:
        conn, _ = listener.accept()
        with contextlib.suppress(ssl.SSLError, OSError):
            ctx.wrap_socket(conn, server_side=True).close()
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main() -> None:
        with pytest.raises(ssl.SSLCertVerificationError):
            await Stream.open("127.0.0.1", port, client_context(ca), "up.test")

    asyncio.run(main())
    thread.join(5)


def test_close_wakes_a_task_waiting_to_read_and_to_write():
    async def main() -> None:
        a, b = socket.socketpair()
        stream = Stream(a)
        reading = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.05)
        assert not reading.done()
        stream.close()
        with pytest.raises(ConnectionAbortedError):
            await asyncio.wait_for(reading, 5)
        b.close()

        c, d = socket.socketpair()
        writer = Stream(c)
        writer.write(b"x" * (64 << 20))  # more than the socket buffers take: drain must wait
        draining = asyncio.ensure_future(writer.drain())
        await asyncio.sleep(0.05)
        assert not draining.done()
        writer.close()
        with pytest.raises(ConnectionAbortedError):
            await asyncio.wait_for(draining, 5)
        d.close()

    asyncio.run(main())


def test_quiet_tells_an_idle_connection_from_one_with_unasked_bytes_or_closed():
    async def main() -> None:
        a, b = socket.socketpair()
        stream = Stream(a)
        assert stream.quiet()
        b.sendall(b"unasked")
        await asyncio.sleep(0.01)
        assert not stream.quiet()
        assert bytes(await stream.read()) == b"unasked"
        assert stream.quiet()
        b.close()
        assert not stream.quiet()  # end of stream: not reusable either
        stream.close()
        assert not stream.quiet()

    asyncio.run(main())


def test_buffers_start_small_grow_while_reads_fill_them_and_shrink_when_idle():
    async def main() -> list[int]:
        a, b = socket.socketpair()
        stream = Stream(a)
        sizes = [len(stream._data)]
        b.sendall(b"x" * 100)
        await stream.read()
        sizes.append(len(stream._data))
        b.setblocking(False)
        for _ in range(6):  # keep data waiting: each read fills the buffer it has
            with contextlib.suppress(BlockingIOError):
                while True:
                    b.send(b"y" * 65536)
            await stream.read()
            sizes.append(len(stream._data))
        while not stream.quiet():  # drain what is left
            await stream.read()
        asyncio.get_running_loop().call_later(0.05, b.send, b"z")
        assert bytes(await stream.read()) == b"z"  # a read that waited for one small write
        sizes.append(len(stream._data))
        stream.close()
        b.close()
        return sizes

    sizes = asyncio.run(main())
    assert sizes[0] == sizes[1] == FIRST_READ, sizes
    assert FIRST_READ < max(sizes) <= READ_SIZE, sizes
    assert sizes == [*sorted(sizes[:-1]), FIRST_READ], sizes


def test_server_hands_each_connection_over_and_refuses_after_close():
    async def main() -> list[bytes]:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        seen: list[bytes] = []

        async def handler(stream: Stream) -> None:
            seen.append(bytes(await stream.read()))
            stream.write(b"bye")
            await stream.drain()
            stream.close()

        server = Server(listener, handler)
        loop = asyncio.get_running_loop()
        for word in (b"one", b"two"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(word)
            assert await reader.read() == b"bye"
            writer.close()
        server.close()
        await server.wait_closed()
        probe = socket.socket()
        probe.setblocking(False)
        with pytest.raises(ConnectionRefusedError):
            await loop.sock_connect(probe, ("127.0.0.1", port))
        probe.close()
        return seen

    assert asyncio.run(main()) == [b"one", b"two"]


def test_buffer_growth_beyond_the_free_size_is_bounded_for_the_whole_process(monkeypatch):
    """Many connections sending as fast as they can (a cell's 1024, say) cannot make the host
    hold a full-size buffer for each: growth past FREE_GROWTH draws on one shared budget."""
    from nixcell.net import stream as module

    monkeypatch.setattr(module, "BIG_BUFFERS", 256 * 1024)
    base = module._budget.used

    async def main() -> tuple[list[int], int]:
        pairs = [socket.socketpair() for _ in range(6)]
        streams = [Stream(a) for a, _ in pairs]
        for _, b in pairs:
            b.setblocking(False)
        for _ in range(8):
            for stream, (_, b) in zip(streams, pairs, strict=True):
                with contextlib.suppress(BlockingIOError):
                    while True:
                        b.send(b"y" * 65536)
                await stream.read()
        sizes = [len(s._data) for s in streams]
        used = module._budget.used - base
        for stream, (_, b) in zip(streams, pairs, strict=True):
            stream.close()
            b.close()
        return sizes, used

    sizes, used = asyncio.run(main())
    extra = sum(max(size - module.FREE_GROWTH, 0) for size in sizes)
    assert max(sizes) > module.FREE_GROWTH, sizes  # the first streams did grow
    assert extra == used <= 256 * 1024, (sizes, used)
    assert min(sizes) <= module.FREE_GROWTH, sizes  # the rest were held at the free size
    assert module._budget.used == base  # closing gives it all back
