"""Test upstreams on loopback only: HTTPS and HTTP servers that record what reaches them.

Cells reach them through the proxy as ``up.test`` / ``other.test`` pinned to 127.0.0.1 with
``--resolve`` and an explicit ``--allow-cidr 127.0.0.1/32`` (the address guard refuses loopback
otherwise). The certificates come from a trustme CA passed to nixcell with ``--upstream-ca``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import json
import secrets
import socket
import ssl
import string
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import trustme

NAMES = ("up.test", "other.test", "evil.test", "127.0.0.1", "::1")
PINS = {name: ["127.0.0.1"] for name in NAMES[:3]}


def loopback_network(upstream: Upstream, **fields: object) -> dict:
    """A cell ``network`` reaching the test upstreams: names pinned to 127.0.0.1, loopback
    allowed by an explicit cidr rule, the upstreams' CA trusted; ``fields`` add the policy."""
    ca_file = upstream.ca_file  # type: ignore[attr-defined]
    base = {"allow_cidrs": ["127.0.0.1/32"], "resolve": PINS, "upstream_ca": [str(ca_file)]}
    return {**base, **fields}


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    host: str


@dataclass
class Upstream:
    port: int
    tls: bool
    seen: list[Seen] = field(default_factory=list)
    issued: list[str] = field(default_factory=list)  # OAuth tokens /token-chunked handed out
    server: http.server.ThreadingHTTPServer | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def url(self, path: str = "/", host: str = "up.test") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        return [s.path for s in self.seen]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


ISSUED = {  # shape -> (body of a token, Content-Type): what credential hosts hand out
    "token": (lambda t: json.dumps({"token": t, "expires_at": "2030-01-01T00:00:00Z"}),
              "application/json; charset=utf-8"),
    "nested": (lambda t: json.dumps({"data": {"items": [{"Access-Token": t}]}}),
               "application/vnd.github+json"),
    "id_token": (lambda t: json.dumps({"id_token": t, "token_type": "Bearer"}), "text/javascript"),
    "form-text": (lambda t: f"access_token={t}&token_type=bearer", "text/plain"),
    "untyped": (lambda t: json.dumps({"session": {"key": t}}), ""),
    "family": (lambda t: json.dumps({"result": [t]}), "application/octet-stream"),
}  # fmt: skip


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms ACK stall
    upstream: Upstream

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.upstream.seen.append(
            Seen(self.command, self.path, dict(self.headers.items()), body, self.headers["Host"])
        )
        return body

    def _reply(
        self, status: int, body: bytes, ctype: str = "text/plain", extra: dict | None = None
    ) -> None:
        self.send_response(status)
        if ctype:  # "": no Content-Type at all
            self.send_header("Content-Type", ctype)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        body = self._record()
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self._websocket()
            return
        if self.path.startswith("/encoded/"):
            self._encoded(self.path.split("/")[2], self.path.split("/")[3])
        elif self.path.startswith("/echo-auth"):
            auth = self.headers.get("Authorization")
            self._reply(200, f"auth={auth}\n".encode(), extra={"X-Echo-Auth": str(auth)})
        elif self.path.startswith("/issued/"):
            self._issued(self.path.split("/")[2])
        elif self.path.startswith("/token-chunked"):
            self._chunked_token()
        elif self.path.startswith("/token"):
            payload = {"access_token": "gho_" + "R" * 36, "token_type": "bearer"}
            self._reply(200, json.dumps(payload).encode(), "application/json")
        elif self.path.startswith("/big/"):
            size = int(self.path.rsplit("/", 1)[1])
            self._reply(200, b"x" * size)
        elif self.path.startswith("/overrun/"):  # a body, then a response nobody asked for
            size = int(self.path.rsplit("/", 1)[1])
            self._reply(200, b"x" * size)
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nsmuggled\n")
        else:
            self._reply(200, f"ok {self.command} {self.path} {len(body)}\n".encode())

    do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

    def _encoded(self, coding: str, what: str) -> None:
        """A compressed body whatever Accept-Encoding said: ``what`` is ``auth`` (the request's
        Authorization echoed), ``token`` (an OAuth token response) or ``bomb`` (4 MiB + 1 of
        JSON that compresses to a few KiB)."""
        ctype = "text/plain"
        if what == "auth":
            body = f"auth={self.headers.get('Authorization')}\n".encode()
        elif what == "token":
            payload = {"access_token": "gho_" + "Z" * 36, "token_type": "bearer"}
            body, ctype = json.dumps(payload).encode(), "application/json"
        else:
            body, ctype = b'{"pad": "' + b" " * (4 << 20) + b'"}', "application/json"
        if coding == "gzip":
            data = gzip.compress(body)
        elif coding == "deflate":
            data = zlib.compress(body)
        elif coding == "rawdeflate":
            raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            data, coding = raw.compress(body) + raw.flush(), "deflate"
        else:
            data = body  # "br", "gzip, br": sent as is, the proxy must not pass it on
        self._reply(200, data, ctype, extra={"Content-Encoding": coding})

    def _issued(self, shape: str) -> None:
        """A fresh random ``ghs_`` token in one of the ``ISSUED`` shapes (not only OAuth's)."""
        alnum = string.ascii_letters + string.digits
        token = "ghs_" + "".join(secrets.choice(alnum) for _ in range(36))
        self.upstream.issued.append(token)
        make, ctype = ISSUED[shape]
        self._reply(200, make(token).encode(), ctype)

    def _chunked_token(self) -> None:
        """A fresh random OAuth token in a chunked JSON body, split mid-token across chunks."""
        alnum = string.ascii_letters + string.digits
        token = "gho_" + "".join(secrets.choice(alnum) for _ in range(36))
        self.upstream.issued.append(token)
        body = json.dumps({"access_token": token, "token_type": "bearer"}).encode()
        cut = body.index(token.encode()) + len(token) // 2
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in (body[:cut], body[cut:]):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _accept_websocket(self, *headers: tuple[str, str]) -> None:
        """The 101 answer to the cell's handshake (RFC 6455), with ``headers`` added."""
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def _websocket(self) -> None:
        self._accept_websocket()
        data = self.rfile.read(2)  # echo one small masked frame back unmasked
        length = data[1] & 0x7F
        mask = self.rfile.read(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(length)))
        self.wfile.write(bytes([0x81, len(payload)]) + payload)
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    address_family = socket.AF_INET


def make_ca(directory: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert(*NAMES)
    ca_file = directory / "upstream-ca.pem"
    chain = directory / "upstream-server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    return ca, ca_file, chain


def start(chain: Path | None) -> Upstream:
    """Serve on 127.0.0.1, TLS when ``chain`` (cert+key PEM) is given."""
    upstream = Upstream(port=0, tls=chain is not None)
    handler = type("Handler", (_Handler,), {"upstream": upstream})
    server = _Server(("127.0.0.1", 0), handler)
    if chain is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(chain))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    upstream.port = server.server_address[1]
    upstream.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream

# The start of a cell's python script reaching the upstreams: ``fetch(url)`` is (status, body)
# with a proxy refusal as 403; ``direct(port)`` tries 127.0.0.1:port around the proxy.
FETCH_DEF = """
import socket, urllib.request, urllib.error
def fetch(url, timeout=20):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception as e:
        return (403, "") if "403" in str(e) else ("error", repr(e))
def direct(port):
    s = socket.socket(); s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port)); return "direct: connected"
    except OSError as e:
        return f"direct: {e.errno}"
"""
