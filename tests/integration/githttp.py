"""A loopback git smart-HTTP server for tests: ``git http-backend`` as CGI behind a small
Python HTTP server on 127.0.0.1 that wants ``Authorization: Basic <any user>:TOKEN`` or
``Bearer TOKEN`` (else 401 with a Basic challenge). It records the requests it saw."""

from __future__ import annotations

import base64
import hmac
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

BACKEND = "/usr/lib/git-core/git-http-backend"


class GitServer:
    def __init__(self, root: str, token: str | None) -> None:
        self.root = root
        self.token = token
        self.requests: list[tuple[str, str, bool]] = []  # method, path, authorised
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, repo: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repo}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def authorised(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header:
            return False
        kind, _, value = header.partition(" ")
        if kind.lower() == "bearer":
            return hmac.compare_digest(value.strip(), self.token)
        if kind.lower() == "basic":
            try:
                _, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return False
            return hmac.compare_digest(password, self.token)
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.cgi()

            def do_POST(self) -> None:
                self.cgi()

            def cgi(self) -> None:
                ok = server.authorised(self.headers.get("Authorization"))
                parts = urlsplit(self.path)
                server.requests.append((self.command, parts.path, ok))
                if not ok:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                env = {
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "GIT_PROJECT_ROOT": server.root,
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": parts.path,
                    "QUERY_STRING": parts.query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_ADDR": "127.0.0.1",
                    "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "GIT_CONFIG_GLOBAL": "/dev/null",
                }
                proc = subprocess.run([BACKEND], input=body, capture_output=True, env=env)
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler
