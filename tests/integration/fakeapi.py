"""A loopback stand-in for the public APIs the README's examples call (api.github.com, ...).

It listens on port 443 of a loopback address of its own (127.x.y.z: nobody else's port 443 is
taken), with a certificate for the named hosts from a trustme CA; cells reach it through
``--resolve HOST:ADDR --allow-cidr ADDR/32 --upstream-ca CA``. It answers like GitHub where the
examples look: ``/zen``, and ``/user`` only with the real token (401 otherwise), so an example
whose credential swap did not happen fails; anything else gets a 200 naming the request (add a
route here when a new example expects a particular answer).
"""

from __future__ import annotations

import http.server
import json
import random
import secrets
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import trustme

REAL_TOKEN = "ghp_" + secrets.token_hex(18)  # the host's GITHUB_TOKEN during the test


@dataclass
class FakeApi:
    address: str
    ca_file: Path
    seen: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # host, method..
    requests: list[dict] = field(default_factory=list)  # what richer handlers record in full
    server: http.server.ThreadingHTTPServer | None = None

    def flags(self, hosts: list[str]) -> list[str]:
        """The flags that send ``hosts`` here (and let the address guard pass this address)."""
        out = [f"--allow-cidr={self.address}/32", f"--upstream-ca={self.ca_file}"]
        return out + [f"--resolve={host}:{self.address}" for host in hosts]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeApi

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        self.api.seen.append((self.headers.get("Host", ""), self.command, self.path, auth))
        if self.path == "/zen":
            self._reply(200, b"Design for failure.", "text/plain")
        elif self.path == "/user" and auth == f"Bearer {REAL_TOKEN}":
            self._json(200, {"login": "octocat", "id": 583231, "type": "User"})
        elif self.path == "/user":
            self._json(401, {"message": "Requires authentication"})
        else:  # any other example's request: an answer naming what was asked
            self._json(200, {"method": self.command, "path": self.path})

    do_HEAD = do_POST = do_GET

    def _json(self, status: int, body: dict) -> None:
        self._reply(status, json.dumps(body, indent=2).encode() + b"\n", "application/json")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET


def start(
    hosts: list[str], directory: Path, handler: type[http.server.BaseHTTPRequestHandler] = _Handler
) -> FakeApi:
    """Serve HTTPS for ``hosts`` on port 443 of a free 127.x.y.z address (needs root).

    ``handler`` answers the requests; it finds the ``FakeApi`` as its ``api`` attribute.
    """
    ca = trustme.CA()
    chain = directory / "fakeapi.pem"
    ca.issue_cert(*hosts).private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca_file = directory / "fakeapi-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(chain))
    for _ in range(20):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        api = FakeApi(address, ca_file)
        bound = type("Handler", (handler,), {"api": api})
        try:
            server = _Server((address, 443), bound)
        except OSError:
            continue
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        api.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return api
    raise RuntimeError("no free loopback address for port 443")
