"""Helpers of the review of issue 13's host caches (outside reviewer, part c): a serving worker
seeded with a small closure, raw HTTP to its ``/nix-cache/``, and a loopback binary cache that
wants HTTP basic auth and records every Authorization header it is sent."""

from __future__ import annotations

import base64
import http.client
import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.nixcache import offline_paths

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}


def path_of(name: str) -> str:
    return next(p for p in offline_paths() if p[44:].startswith(name + "-"))


def closure(names: list[str]) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", *map(path_of, names)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return sorted(set(out.stdout.split()))


def password(key_file: str, server) -> str:
    """The password of ``server``'s cache address (a daemon with ``cache_url``): one per
    address since the review (a forged or borrowed address gets one that opens nothing)."""
    from nixcell.nix.narinfo import cluster_password

    with open(key_file, "rb") as f:
        return cluster_password(f.read(), server.url + "/nix-cache")


def basic(login: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{secret}".encode()).decode()


def raw_get(port: int, target: str, headers: dict[str, str], method: str = "GET",
            ) -> tuple[int, bytes]:  # fmt: skip
    """One request exactly as spelled (``target`` is sent unnormalised)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, target, skip_host="host" in {k.lower() for k in headers},
                        skip_accept_encoding=True)  # fmt: skip
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@dataclass
class AuthCache:
    """A signed binary cache (the session's ``nix_cache`` directory) behind HTTP basic auth."""

    url: str
    login: str
    secret: str
    seen: list[str] = field(default_factory=list)  # every Authorization header received


@contextmanager
def auth_cache(directory: Path, login: str, secret: str) -> Iterator[AuthCache]:
    port = _free_port()
    made = AuthCache(f"http://127.0.0.1:{port}", login, secret)
    want = basic(login, secret)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _gate(self) -> bool:
            got = self.headers.get("Authorization")
            if got is not None:
                made.seen.append(got)
            if got != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            return True

        def do_GET(self) -> None:
            if self._gate():
                super().do_GET()

        def do_HEAD(self) -> None:
            if self._gate():
                super().do_HEAD()

    def handler(*args: object, **kw: object) -> Handler:
        return Handler(*args, directory=str(directory), **kw)  # type: ignore[arg-type]

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
