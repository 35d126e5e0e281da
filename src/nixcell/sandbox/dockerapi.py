"""A small Docker Engine API client over the daemon's unix socket (stdlib only).

Why not the ``docker`` CLI: a client process per call costs 30-80 ms (five calls per cell), the
client on PATH may be newer than the daemon (``/usr/local/bin/docker`` here is Docker 28 against
Debian's 20.10 daemon), and a cell's stdio must be attached to fds the engine gives us, which the
API's hijacked ``attach`` stream does directly. Every call names API version 1.41 (Docker 20.10);
newer daemons accept it.

The daemon is ``NIXCELL_DOCKER_HOST``, else ``DOCKER_HOST``, else ``unix:///var/run/docker.sock``;
only ``unix://`` addresses are used (a TCP daemon is another machine's filesystem: refused).
"""

from __future__ import annotations

import json
import os
import socket
import unicodedata

from nixcell.errors import SandboxError

API = "/v1.41"
DEFAULT_HOST = "unix:///var/run/docker.sock"


class DockerError(SandboxError):
    """The daemon refused a call or could not be reached; ``status`` is the HTTP status (0:
    no answer)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def clean(text: str) -> str:
    """Daemon-supplied text made safe for a terminal: control (and other unprintable)
    characters escaped, so an answer cannot move the cursor, recolour or retitle it."""
    return "".join(
        c if c == " " or not unicodedata.category(c).startswith(("C", "Z")) else ascii(c)[1:-1]
        for c in text
    )


def malformed(what: str) -> DockerError:
    return DockerError(f"the docker daemon's answer was malformed ({what})")


def field(answer: object, *keys: str, kind: type = object) -> object:
    """``answer[k1][k2]…`` of a decoded answer, of type ``kind``; DockerError (malformed) when
    the daemon's JSON has another shape: never a TypeError from deep inside a call."""
    value = answer
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise malformed(f"no {'.'.join(keys)}")
        value = value[key]
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise malformed(f"{'.'.join(keys)} is {clean(repr(value))[:60]}, not {kind.__name__}")
    return value


def socket_path() -> str:
    host = os.environ.get("NIXCELL_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
    if not host.startswith("unix://"):
        raise DockerError(f"docker host {host!r} is not a unix:// socket (only local daemons)")
    path = host[len("unix://") :]
    if not path.startswith("/"):
        raise DockerError(f"docker host {host!r} does not name an absolute socket path")
    return path


class Client:
    """One daemon. Each call is one short connection (cheap on a unix socket, and safe to make
    from several threads at once). HTTP/1.1 is spoken here directly (``http.client`` and the
    ``email`` parser it imports cost a warm run ~20 ms): a request with a Content-Length, an
    answer with a Content-Length, chunked, or read to the end."""

    def __init__(self, path: str | None = None, timeout: float | None = 60.0) -> None:
        self.path = path or socket_path()
        self.timeout = timeout
        self.last_headers: dict[str, str] = {}

    def _connect(self, timeout: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock

    def call(
        self,
        method: str,
        url: str,
        body: object = None,
        *,
        query: dict[str, str] | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        timeout: float | None = -1,
        ok: tuple[int, ...] = (200, 201, 204),
    ) -> object:
        """The decoded JSON answer (None when empty, bytes when not JSON); a status outside
        ``ok`` is DockerError with the daemon's own message. ``timeout`` None: no limit."""
        target = API + url + ("?" + _urlencode(query) if query else "")
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        head = f"{method} {target} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n"
        if data or method in ("POST", "PUT"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
        try:
            sock = self._connect(self.timeout if timeout == -1 else timeout)
            try:
                sock.sendall(head.encode() + b"\r\n" + data)
                status, headers, payload = _read_response(sock)
            finally:
                sock.close()
        except (OSError, ValueError) as exc:
            raise DockerError(f"docker daemon at {self.path} did not answer: {exc}") from exc
        self.last_headers = headers
        if status not in ok:
            raise DockerError(_message(payload, status), status)
        if not payload:
            return None
        if headers.get("content-type", "").startswith("application/json"):
            try:
                return json.loads(payload)
            except ValueError:
                raise malformed(f"{url}: not JSON") from None
        return payload

    def ping(self, timeout: float = 2.0) -> str:
        """The daemon's ``Server`` header (``Docker/20.10.24+dfsg1 (linux)``); DockerError when
        it does not answer within ``timeout``."""
        self.call("GET", "/_ping", timeout=timeout)
        return clean(self.last_headers.get("server", "Docker"))

    def attach(self, container: str, stdin: bool, timeout: float | None = -1) -> socket.socket:
        """The hijacked attach stream of a created container (before start: nothing is lost):
        the container's stdin is what we send; its output comes back in 8-byte-headed frames."""
        query = {"stream": "1", "stdout": "1", "stderr": "1", "stdin": "1" if stdin else "0"}
        target = f"{API}/containers/{container}/attach?{_urlencode(query)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(self.timeout if timeout == -1 else timeout)
            sock.connect(self.path)
            request = (
                f"POST {target} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\n"
                "Upgrade: tcp\r\nContent-Length: 0\r\n\r\n"
            )
            sock.sendall(request.encode())
            try:
                head, rest = _read_head(sock, 4096)
            except ValueError:
                raise DockerError("docker daemon closed the attach stream at once") from None
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            if " 101 " not in status_line and " 200 " not in status_line:
                raise DockerError(f"docker attach refused: {clean(status_line)[:200]}")
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise DockerError(f"docker attach failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return _Prefixed(sock, rest) if rest else sock


class _Prefixed(socket.socket):
    """A socket whose first bytes were already read with the HTTP head."""

    def __init__(self, sock: socket.socket, first: bytes) -> None:
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self._first = first

    def recv(self, n: int, flags: int = 0) -> bytes:  # type: ignore[override]
        if self._first:
            out, self._first = self._first[:n], self._first[n:]
            return out
        return super().recv(n, flags)


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _urlencode(query: dict[str, str]) -> str:
    """``urllib.parse.urlencode`` for our str values (that module costs a warm run ms)."""

    def quote(text: str) -> str:
        return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in text.encode())

    return "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())


def _message(payload: bytes, status: int) -> str:
    try:
        text = str(json.loads(payload).get("message", ""))
    except (ValueError, AttributeError):
        text = payload.decode("utf-8", "replace")
    text = clean(" ".join(text.split()))[:300]
    return f"docker daemon: {text or f'HTTP {status}'}"


def _read_head(sock: socket.socket, size: int) -> tuple[bytes, bytes]:
    """An HTTP answer's head and whatever of its body came with it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(size)
        if not chunk:
            raise ValueError("connection closed before the answer's head")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    return head, rest


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    head, rest = _read_head(sock, 65536)
    lines = head.decode("latin-1").split("\r\n")
    words = lines[0].split()
    if len(words) < 2 or not words[1].isdigit():
        raise ValueError(f"not an HTTP answer: {clean(lines[0])[:80]!r}")
    status = int(words[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        if not headers["content-length"].isdigit():
            raise ValueError("a malformed Content-Length")
        size = int(headers["content-length"])
        while len(rest) < size:
            chunk = sock.recv(65536)
            if not chunk:
                raise ValueError("connection closed inside the answer")
            rest += chunk
        return status, headers, rest[:size]
    while True:  # chunked (streaming answers), or until the daemon closes
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # dockerd resets after some streamed answers (/build)
            break
        if not chunk:
            break
        rest += chunk
    if headers.get("transfer-encoding", "").lower() == "chunked":
        rest = _dechunk(rest)
    return status, headers, rest


def _dechunk(data: bytes) -> bytes:
    out = []
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(data[:size])
        data = data[size + 2 :]
    return b"".join(out)
