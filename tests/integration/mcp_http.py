"""A `nixcell mcp --transport http` subprocess and a raw HTTP client for it (loopback only).

Raw, so that tests can send what the SDK client never would: forged session ids, malformed
bodies. Responses come as JSON or as an SSE stream; both are read to the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.conftest import NIXCELL

INIT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "raw", "version": "1"},
}


def server_env(project: Path) -> dict[str, str]:
    """The test's environment; the server's temp dir (session workspaces) is the test's own."""
    keep = ("NIXCELL_HOME", "NIXCELL_OFFLINE_DIR", "PYTHONDONTWRITEBYTECODE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["XDG_CONFIG_HOME"] = str(project.parent / "xdg")
    temp = project.parent / "tmp"
    temp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(temp)
    return {**os.environ, **env}


@contextlib.contextmanager
def http_server(project: Path, *args: str) -> Iterator[str]:
    """The server's URL while it runs; at the end it is stopped and must exit 0."""
    proc = subprocess.Popen(
        [NIXCELL, "mcp", "--transport", "http", "--port", "0", *args],
        cwd=project,
        env=server_env(project),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[bytes] = []
    try:
        url = None
        for line in proc.stderr:
            lines.append(line)
            if b"serving MCP on " in line:
                url = line.decode().split("serving MCP on ", 1)[1].strip()
                break
        assert url, b"".join(lines).decode()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    text = (b"".join(lines) + err).decode()
    assert proc.returncode == 0, text
    assert "Traceback" not in text, text


class Raw:
    """One raw HTTP client: a POST per message, the session id kept (or forged)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session: str | None = None
        self._next = 0

    def request(
        self, method: str, body: bytes | None = None, session: str | None = None, **headers: str
    ) -> tuple[int, dict[str, str], list[Any]]:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        sent = {
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **headers,
        }
        sid = session if session is not None else self.session
        if sid is not None:
            sent["Mcp-Session-Id"] = sid
            sent["Mcp-Protocol-Version"] = "2025-11-25"
        try:
            conn.request(method, parts.path, body=body, headers=sent)
            response = conn.getresponse()
            data = response.read()
            got = {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()
        return response.status, got, _messages(data, got.get("content-type", ""))

    def post(self, message: dict[str, Any], session: str | None = None) -> tuple[int, list[Any]]:
        status, _, messages = self.request("POST", json.dumps(message).encode(), session)
        return status, messages

    def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
        """A request; its response (the last JSON-RPC message with its id)."""
        self._next += 1
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next, "method": method}
        if params is not None:
            message["params"] = params
        status, messages = self.post(message, **kw)
        answers = [m for m in messages if m.get("id") == self._next]
        return status, (answers[-1] if answers else None)

    def initialize(self) -> str:
        init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INIT}
        status, headers, messages = self.request("POST", json.dumps(init).encode())
        assert status == 200, (status, messages)
        self.session = headers["mcp-session-id"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert self.post(note)[0] == 202
        return self.session

    def tool(self, name: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
        """A tools/call result (asserting the HTTP exchange itself worked)."""
        status, answer = self.call("tools/call", {"name": name, "arguments": arguments}, **kw)
        assert status == 200 and answer is not None and "result" in answer, (status, answer)
        return answer["result"]

    def delete(self) -> int:
        return self.request("DELETE")[0]


def _messages(data: bytes, content_type: str) -> list[Any]:
    if not data:
        return []
    if content_type.startswith("text/event-stream"):
        text = data.decode()
        data_lines = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        return [json.loads(line) for line in data_lines if line]
    return [json.loads(data)]


def text(result: dict[str, Any]) -> str:
    return result["content"][0]["text"]
