"""A loopback upstream that republishes what a credential host was sent, in every spelling.

``/store`` (on the credential's host) keeps the bearer token the proxy injected; any host then
hands it back: ``/republish/<spelling>`` in the body, a header value, a header name and a
redirect ``Location``; ``/coded/<case>`` under Content-Encoding and Transfer-Encoding tricks;
``/chunks`` split across chunk boundaries; ``/trailer`` in a trailer; ``/ws`` in fragmented
WebSocket frames; ``/stored`` in pieces, if asked for byte ranges. Loopback only, like
tests/integration/upstream.py whose server it reuses.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import quopri
import ssl
import threading
import urllib.parse
import zlib
from collections.abc import Callable
from pathlib import Path

from tests.integration import upstream as up


def _mixed_json(s: str) -> str:
    """Every other character as \\uXXXX, hex case alternating: no fixed string spells it."""
    return "".join(
        (f"\\u{ord(c):04X}" if i % 4 == 0 else f"\\u{ord(c):04x}") if i % 2 == 0 else c
        for i, c in enumerate(s)
    )


def _mixed_pct(s: str) -> str:
    return "".join(f"%{ord(c):02x}" if i % 3 == 0 else c for i, c in enumerate(s))


def _b64(prefix: bytes, suffix: bytes = b"", *, url: bool = False, pad: bool = True):
    def spell(s: str) -> str:
        enc = base64.urlsafe_b64encode if url else base64.b64encode
        out = enc(prefix + s.encode() + suffix).decode()
        return out if pad else out.rstrip("=")

    return spell


def _mime(s: str) -> str:
    text = base64.b64encode(b"token: " + s.encode() * 2).decode()
    return "\r\n".join(text[i : i + 20] for i in range(0, len(text), 20))


# name -> (spell, decode back to text holding the token): how a cell's client would read it.
SPELLINGS: dict[str, tuple[Callable[[str], str], Callable[[str], str]]] = {
    "raw": (lambda s: s, lambda t: t),
    "json-slash": (lambda s: s.replace("/", "\\/"), lambda t: json.loads(f'"{t}"')),
    "json-u-all": (
        lambda s: "".join(f"\\u{ord(c):04X}" for c in s),
        lambda t: json.loads(f'"{t}"'),
    ),
    "json-u-mixed": (_mixed_json, lambda t: json.loads(f'"{t}"')),
    "pct-upper": (lambda s: urllib.parse.quote(s, safe=""), urllib.parse.unquote),
    "pct-lower": (
        lambda s: "".join(f"%{b:02x}" for b in s.encode()),
        urllib.parse.unquote,
    ),
    "pct-mixed": (_mixed_pct, urllib.parse.unquote),
    "form-plus": (lambda s: urllib.parse.quote_plus("a " + s), urllib.parse.unquote_plus),
    "hex": (lambda s: s.encode().hex(), lambda t: bytes.fromhex(t).decode("latin-1")),
    "HEX": (lambda s: s.encode().hex().upper(), lambda t: bytes.fromhex(t).decode("latin-1")),
    "b64-0": (_b64(b""), lambda t: base64.b64decode(t + "==").decode("latin-1")),
    "b64-1": (_b64(b"x:"), lambda t: base64.b64decode(t + "==").decode("latin-1")),
    "b64-2": (_b64(b"ab:", b"!"), lambda t: base64.b64decode(t + "==").decode("latin-1")),
    "b64url-nopad": (
        _b64(b"u:", url=True, pad=False),
        lambda t: base64.urlsafe_b64decode(t + "==").decode("latin-1"),
    ),
    "b64-mime": (_mime, lambda t: base64.b64decode(t).decode("latin-1")),
    "html-hex": (lambda s: "".join(f"&#x{ord(c):x};" for c in s), html.unescape),
    "html-dec": (lambda s: "".join(f"&#{ord(c):03d};" for c in s), html.unescape),
    "qp": (
        lambda s: "".join(f"={b:02X}" for b in s.encode()),
        lambda t: quopri.decodestring(t.encode()).decode("latin-1"),
    ),
}


def packed(kind: str, token: bytes) -> bytes:
    """``token`` (or nothing, for the ``clean-*`` kinds) inside a compressed file."""
    import bz2
    import io
    import lzma
    import tarfile
    import zipfile

    content = b"" if kind.startswith("clean-") else token

    def gz(data: bytes) -> bytes:  # no timestamp: the test builds the same file again
        return gzip.compress(data, mtime=0)

    kind = kind.removeprefix("clean-")
    text = b"x" * 3000 + content + b"y" * 3000

    def zipped(data: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
        out = io.BytesIO()
        entry = zipfile.ZipInfo("a.txt", date_time=(1980, 1, 1, 0, 0, 0))
        entry.compress_type = method
        with zipfile.ZipFile(out, "w", method) as archive:
            archive.writestr(entry, data)
        return out.getvalue()

    if kind == "tgz":  # as a file name, the way a repository export holds it
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as archive:
            entry = tarfile.TarInfo("repo/" + content.decode() + ".txt")
            entry.size = 1
            archive.addfile(entry, io.BytesIO(b"x"))
        return gz(out.getvalue())
    return {
        "gz": lambda: gz(text),
        "zlib": lambda: zlib.compress(text),
        "bz2": lambda: bz2.compress(text),
        "xz": lambda: lzma.compress(text),
        "zip": lambda: zipped(text),
        "zip-stored": lambda: zipped(text, zipfile.ZIP_STORED),
        "gz-in-gz": lambda: gz(gz(text)),
        "zip-in-gz": lambda: gz(zipped(text)),
    }[kind]()


PACKED = ("gz", "zlib", "bz2", "xz", "zip", "zip-stored", "tgz", "gz-in-gz", "zip-in-gz")


class Leaky(up.Upstream):
    stored: str = ""
    ws_received: list[bytes]  # what /ws-echo read from the cell, set by start()


class _Handler(up._Handler):
    upstream: Leaky

    def do_GET(self) -> None:  # one branch per way of leaking
        self._record()
        path, _, query = self.path.partition("?")
        token = self.upstream.stored
        if path == "/store":
            self.upstream.stored = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            self._reply(200, b"stored\n")
        elif path.startswith("/republish/"):
            spell = SPELLINGS[path.split("/")[2]][0]
            text = spell(token)
            header_safe = text.replace("\r\n", " ")
            extra = {"X-Leak": header_safe, "Location": f"https://x.test/cb?t={header_safe}"}
            if all(c.isalnum() or c in "-_" for c in text):
                extra[f"X-{text}"] = "name"
            self._reply(302, f"[{text}]".encode(), extra=extra)
        elif path == "/stored":  # honours Range, as file and object stores do
            body = f"stored={token}\n".encode()
            wanted = self.headers.get("Range", "")
            if wanted.startswith("bytes="):
                first, _, last = wanted[6:].partition("-")
                part = body[int(first) : int(last) + 1]
                extra = {"Content-Range": f"bytes {first}-{last}/{len(body)}"}
                self._reply(206, part, extra=extra)
            else:
                self._reply(200, body)
        elif path.startswith("/coded/"):
            self._coded(path.split("/")[2], token.encode())
        elif path == "/chunks":
            self._chunks(token, int(query or "1"))
        elif path == "/trailer":
            self._raw(
                b"Transfer-Encoding: chunked\r\nTrailer: X-Leak",
                b"2\r\nok\r\n0\r\n" + b"X-Leak: " + token.encode() + b"\r\n\r\n",
            )
        elif path.startswith("/packed/"):  # the stored value inside a file the cell fetches
            self._reply(200, packed(path.split("/")[2], token.encode()), "application/gzip")
        elif path == "/hop-ce":  # Content-Encoding "hop-by-hop": the decoder would not see it
            body = gzip.compress(b"leak=" + token.encode())
            self._raw(
                b"Content-Encoding: gzip\r\nConnection: content-encoding\r\n"
                + b"Content-Length: %d" % len(body),
                body,
            )
        elif path.startswith("/p/"):  # a service that stores what the path names
            self.upstream.stored = path[3:]
            self._reply(201, b"created\n")
        elif path == "/ws":
            self._ws(token.encode(), int(query or "1"))
        elif path == "/ws-echo":
            self._ws_echo()
        else:
            self._reply(200, b"ok\n")

    def _raw(self, head: bytes, body: bytes) -> None:
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + head + b"\r\n\r\n")
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def _coded(self, case: str, token: bytes) -> None:
        body = b"leak=" + token + b"\n"
        if case == "two-headers":  # identity, then gzip: both count
            self._raw(
                b"Content-Encoding: identity\r\nContent-Encoding: gzip\r\n"
                + b"Content-Length: %d" % len(gz := gzip.compress(body)),
                gz,
            )
        elif case == "stacked":
            data = zlib.compress(gzip.compress(body))
            self._raw(b"Content-Encoding: GZIP , Deflate\r\nContent-Length: %d" % len(data), data)
        elif case == "br":
            self._raw(b"Content-Encoding: br\r\nContent-Length: %d" % len(body), body)
        elif case == "te-gzip":
            data = gzip.compress(body)
            self._raw(
                b"Transfer-Encoding: gzip, chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)
            )
        elif case == "cl-te":
            self._raw(
                b"Content-Length: 3\r\nTransfer-Encoding: chunked",
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body),
            )

    def _chunks(self, token: str, step: int) -> None:
        """Every spelling, each cut across a chunk boundary ``step`` characters in."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for name, (spell, _) in SPELLINGS.items():
            text = spell(token).encode()
            cut = step % len(text) or 1
            for chunk in (f"{name}=[".encode() + text[:cut], text[cut:] + b"]\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _ws(self, token: bytes, parts: int) -> None:
        """The token in one text message cut into ``parts`` fragments (a ping between them,
        itself holding the token), then a binary message, then a close frame whose reason is
        the token; each frame written on its own."""
        # an extension offered is accepted: the proxy must refuse that (it never offers one)
        extension = ("Sec-WebSocket-Extensions", "permessage-deflate")
        offered = self.headers.get("Sec-WebSocket-Extensions")
        self._accept_websocket(*([extension] if offered else []))
        message = b"msg " + token + b" " + base64.b64encode(token) + b" end"
        cuts = [len(message) * i // parts for i in range(parts + 1)]
        for i in range(parts):
            opcode = 0x1 if i == 0 else 0x0
            fin = 0x80 if i == parts - 1 else 0
            self._frame(fin | opcode, message[cuts[i] : cuts[i + 1]])
            if i == 0:
                self._frame(0x89, b"ping " + token)
        self._frame(0x82, b"bin" + token.hex().encode())
        self._frame(0x88, b"\x03\xe8" + token)
        self.close_connection = True

    def _ws_echo(self) -> None:
        """Read one message of masked frames (fragments joined), keep it, send it back."""
        self._accept_websocket()
        message = b""
        while True:
            first, second = self.rfile.read(2)
            n = second & 0x7F
            if n == 126:
                n = int.from_bytes(self.rfile.read(2), "big")
            mask = self.rfile.read(4)
            message += bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if first & 0x80:
                break
        self.upstream.ws_received.append(message)
        self._frame(0x81, message)
        self._frame(0x88, b"\x03\xe8")
        self.close_connection = True

    def _frame(self, first: int, payload: bytes) -> None:
        n = len(payload)
        length = bytes([n]) if n < 126 else bytes([126]) + n.to_bytes(2, "big")
        self.wfile.write(bytes([first]) + length + payload)
        self.wfile.flush()


def start(chain: Path | None) -> Leaky:
    leaky = Leaky(port=0, tls=chain is not None)
    leaky.ws_received = []
    handler = type("Handler", (_Handler,), {"upstream": leaky})
    server = up._Server(("127.0.0.1", 0), handler)
    if chain is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(chain))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    leaky.port = server.server_address[1]
    leaky.server = server
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return leaky
