"""A loopback upstream that records the exact bytes reaching it, for the framing tests.

It reads each request as a back-end would (head, then a body framed by the one Content-Length
or chunked Transfer-Encoding it carries), records it, and answers with a canned response. What
it was sent but could not read as a whole request stays in ``leftover``: a smuggled second
request, or a body left unframed, shows up there or as an extra entry in ``requests``.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
from dataclasses import dataclass, field

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"


@dataclass
class Received:
    head: bytes
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header_names(self) -> list[bytes]:
        lines = self.head.split(b"\r\n")[1:]
        return [line.split(b":", 1)[0].lower() for line in lines if line]


@dataclass
class RawUpstream:
    reply: bytes = OK
    context: ssl.SSLContext | None = None
    requests: list[Received] = field(default_factory=list)
    leftover: list[bytes] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    def start(self) -> RawUpstream:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._sock.close()

    def clear(self) -> None:
        self.requests.clear()
        self.leftover.clear()
        self.connections = 0

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buf = b""
        try:
            if self.context is not None:
                conn = self.context.wrap_socket(conn, server_side=True)
            while True:
                message = _take_request(buf)
                if message is None:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                    continue
                received, buf = message
                self.requests.append(received)
                conn.sendall(self.reply)
                if b"connection: close" in self.reply.lower():
                    break
        except (OSError, ValueError):
            pass
        finally:
            if buf:
                self.leftover.append(buf)
            conn.close()


def _take_request(buf: bytes) -> tuple[Received, bytes] | None:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head, rest = buf[: end + 4], buf[end + 4 :]
    lower = head.lower()
    length = re.search(rb"\r\ncontent-length: *([0-9]+)", lower)
    if b"\r\ntransfer-encoding: chunked" in lower:
        body = b""
        while True:
            line_end = rest.find(b"\r\n")
            if line_end < 0:
                return None
            size = int(rest[:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                return None
            body += rest[line_end + 2 : line_end + 2 + size]
            rest = rest[line_end + 2 + size + 2 :]
            if size == 0:  # no trailers are ever forwarded
                return Received(head, body), rest
    size = int(length.group(1)) if length else 0
    if len(rest) < size:
        return None
    return Received(head, rest[:size]), rest[size:]
