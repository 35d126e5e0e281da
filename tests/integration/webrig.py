"""Pieces of the web page's browser tests (``test_jobs_web_browser.py``): where Chromium is,
a proxy that records what would leave loopback, and a cross-site attacker page."""

from __future__ import annotations

import http.server
import json
import shutil
import socketserver
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    # Debian's binary itself: its /usr/bin/chromium wrapper exports Google API keys and adds
    # extension flags, which wake up sign-in and update traffic.
    if Path("/usr/lib/chromium/chromium").is_file():
        return "/usr/lib/chromium/chromium"
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Recorder(socketserver.ThreadingTCPServer):
    """The browser's proxy for everything that is not loopback: it records each request line
    (the browser's own background traffic included, which page events never show), answers 403
    and connects nowhere."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.lines: list[str] = []

        class Handler(socketserver.StreamRequestHandler):
            def handle(inner) -> None:
                line = inner.rfile.readline(4096).decode("latin-1").strip()
                self.lines.append(line)
                inner.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        super().__init__(("127.0.0.1", 0), Handler)


class Attacker(http.server.BaseHTTPRequestHandler):
    """Another loopback web server: same site as the daemon (ports do not count), other origin."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><form id=f method=post action="{self.target}"
          enctype="text/plain"><input name=x value=1></form>
          <script>
          const t = {json.dumps(self.target)};
          fetch(t, {{method: 'POST', credentials: 'include', headers: {{'X-Nixcell': '1'}}}})
            .catch(() => null)
            .then(() => fetch(t, {{method: 'POST', mode: 'no-cors', credentials: 'include'}}))
            .catch(() => null)
            .finally(() => document.getElementById('f').submit());
          </script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass
