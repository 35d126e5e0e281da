"""The real proxy served in this process on a loopback listener, without a cell around it.

A cell's proxy listens inside the cell's network namespace; here the same ``Proxy.serve`` gets a
127.0.0.1 socket, so raw-socket clients can send byte-exact requests quickly. One end-to-end
test per class still goes through a real cell (test_net_framing.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nixcell.net.audit import AuditLog
from nixcell.net.proxy import CellNet, shared_proxy
from nixcell.net.session import build_policy


@contextmanager
def proxy(network: dict, audit: Path) -> Iterator[int]:
    """Serve ``network`` (a cell's network dict) on 127.0.0.1; yields the port."""
    loop = asyncio.new_event_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    upstream_ssl = None
    if network.get("upstream_ca"):
        from nixcell.net.tls import upstream_context

        upstream_ssl = upstream_context(list(network["upstream_ca"]))
    cell = CellNet("rig", build_policy(network), AuditLog("rig", str(audit), lambda s: s),
                   upstream_ssl=upstream_ssl)  # fmt: skip
    started = threading.Event()
    holder: dict = {}

    async def main() -> None:
        holder["server"] = await shared_proxy().serve(listener, cell)
        holder["stop"] = asyncio.Event()
        started.set()
        await holder["stop"].wait()
        await shared_proxy().stop(holder["server"], cell)

    def run() -> None:
        loop.run_until_complete(main())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(10)


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def exchange(port: int, data: bytes, *, tunnel: str | None = None, sni: str | None = None) -> bytes:
    """Send ``data`` (through a CONNECT to ``tunnel`` and TLS when given); all bytes back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        if tunnel is not None:
            sock.sendall(f"CONNECT {tunnel} HTTP/1.1\r\nHost: {tunnel}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(4096)
                if not chunk:
                    return head
                head += chunk
            if not head.startswith(b"HTTP/1.1 200"):
                return head
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            sock = ctx.wrap_socket(sock, server_hostname=sni or tunnel.rsplit(":", 1)[0])
        sock.sendall(data)
        out = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        sock.close()
