"""A fake Docker daemon on a unix socket, for the answers a real one never gives: malformed
JSON, wrong shapes, hanging after ``/_ping``, control characters in its messages. Only the
daemon is fake: nixcell, its plan and the engine are real (the cell never starts)."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable

# an answer: (status, content type, body), or HANG (accept, read, never answer)
Answer = tuple[int, str, bytes] | str
HANG = "hang"
UPGRADE = (101, "", b"")
OK_PING = (200, "text/plain", b"OK")


class FakeDaemon:
    def __init__(self, path: str, route: Callable[[str, str], Answer]) -> None:
        self.path = path
        self.route = route
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._held: list[socket.socket] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                conn.close()
                return
            buf += chunk
        head = buf.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        method, target = head.split()[:2]
        path = re.sub(r"^/v[0-9.]+", "", target.split("?", 1)[0])
        self.seen.append(f"{method} {path}")
        answer = self.route(method, path)
        if answer == HANG:
            self._held.append(conn)  # never answered, closed at the end
            return
        status, ctype, body = answer  # type: ignore[misc]
        reason = "UPGRADED" if status == 101 else "X"
        out = f"HTTP/1.1 {status} {reason}\r\nServer: Fake/1\r\n"
        if status != 101:
            out += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        out += "\r\n"
        with contextlib.suppress(OSError):
            conn.sendall(out.encode() + body)
        if status == 101:
            self._held.append(conn)  # the attach stream: open, silent, until the end
        else:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self._held:
            with contextlib.suppress(OSError):
                conn.close()
        self.thread.join(timeout=5)


def json_answer(body: bytes, status: int = 200) -> tuple[int, str, bytes]:
    return (status, "application/json", body)
