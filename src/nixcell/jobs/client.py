"""A small client of the job API: stdlib ``http.client`` over a unix socket or TCP, with SSE.

Kept cheap to import (no starlette, no pydantic): ``nixcell jobs``/``logs``/``cancel`` start
fast. Server: ``--server`` / ``NIXCELL_SERVER`` (``unix:/path`` or ``http://host:port``), else
the default socket ``nixcell serve`` listens on. Token: ``NIXCELL_TOKEN`` or ``--token-file``.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from nixcell.errors import NixcellError
from nixcell.jobs.config import default_socket  # stdlib only: the client stays cheap


class ClientError(NixcellError):
    """The daemon refused (its one line), or could not be reached."""


class UsageRefused(ClientError):
    exit_code = 2  # the daemon said the request was malformed (4xx)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


DEFAULT_PORT = 7878  # a bare ``--server HOST``: the port docs/scale-out.md has hosts listen on


def _bare_host(text: str) -> str:
    """``HOST`` or ``HOST:PORT`` (a name or an IPv4 address) -> ``http://HOST:PORT``."""
    import re

    found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9.-]{0,252})(?::([0-9]{1,5}))?", text)
    if not found or (found[2] and not 0 < int(found[2]) < 65536):
        raise ClientError(f"--server {text!r}: write unix:/path, http://host:port or a host name")
    return f"http://{found[1]}:{found[2] or DEFAULT_PORT}"


def _token(token_file: str | None) -> str | None:
    if token_file:
        try:
            with open(token_file, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError as exc:
            raise ClientError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        if not text:
            raise ClientError(f"the token file {token_file} is empty")
        return text
    return os.environ.get("NIXCELL_TOKEN") or None


class Client:
    def __init__(
        self,
        server: str | None = None,
        *,
        token_file: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self.server = server or os.environ.get("NIXCELL_SERVER") or f"unix:{default_socket()}"
        self.timeout = timeout
        self.token = _token(token_file)
        if "://" not in self.server and not self.server.startswith("unix:"):
            self.server = _bare_host(self.server)  # a cluster host's name: its TCP listener
        if self.server.startswith("unix:"):
            self.unix: str | None = self.server[5:]
            self.host = self.port = None
        else:
            parts = urlsplit(self.server)
            if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
                raise ClientError(f"--server {self.server!r}: write unix:/path or http://host:port")
            self.unix = None
            self.host, self.port = parts.hostname, parts.port or 80

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.unix is not None:
            return _UnixConnection(self.unix, timeout)
        return http.client.HTTPConnection(str(self.host), int(self.port or 80), timeout=timeout)

    def open(
        self,
        method: str,
        path: str,
        *,
        body: bytes | Iterable[bytes] | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | str | None = "default",
    ) -> http.client.HTTPResponse:
        """Send a request; the response (status < 400) with its body unread."""
        conn = self._connection(self.timeout if timeout == "default" else timeout)  # type: ignore[arg-type]
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token and self.unix is None:
            sent["Authorization"] = f"Bearer {self.token}"
        if content_type:
            sent["Content-Type"] = content_type
        chunked = body is not None and not isinstance(body, bytes)
        try:
            conn.request(method, path, body=body, headers=sent, encode_chunked=chunked)
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ClientError(f"cannot reach the daemon at {self.server}: {_why(exc)}") from None
        if response.status >= 400:
            raw = response.read(65536)
            conn.close()
            raise _refusal(response.status, raw)
        return response

    def call(self, method: str, path: str, data: Any = None, **kw: Any) -> Any:
        """A JSON request and its JSON answer."""
        body = None if data is None else json.dumps(data).encode()
        ctype = "application/json" if data is not None else None
        response = self.open(method, path, body=body, content_type=ctype, **kw)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"the daemon's answer broke off: {_why(exc)}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            raise ClientError("the daemon's answer is not JSON") from None

    def events(self, path: str, headers: dict[str, str] | None = None) -> Iterator[tuple]:
        """(event, id, data) of a text/event-stream until the server ends it."""
        response = self.open(
            "GET", path, headers={"Accept": "text/event-stream", **(headers or {})}, timeout=None
        )
        kind, ident, data = "message", None, []
        try:
            for raw in response:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                if not line:
                    if data:
                        yield kind, ident, json.loads("\n".join(data))
                    kind, ident, data = "message", None, []
                elif line.startswith(":"):
                    continue
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "event":
                        kind = value
                    elif name == "id":
                        ident = value
                    elif name == "data":
                        data.append(value)
        except (OSError, http.client.HTTPException) as exc:
            raise ClientError(f"the daemon's stream broke off: {_why(exc)}") from None
        except ValueError:
            raise ClientError("the daemon sent an event that is not JSON") from None
        finally:
            response.close()


def query(path: str, **params: Any) -> str:
    """``path?k=v&k=v2`` from keyword params (lists repeat the key; None is left out)."""
    pairs = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None and item is not False:
                pairs.append((key, "1" if item is True else str(item)))
    return f"{path}?{urlencode(pairs)}" if pairs else path


def job_path(job_id: str | int, tail: str = "") -> str:
    return f"/api/v1/jobs/{quote(str(job_id), safe='')}{tail}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _refusal(status: int, raw: bytes) -> ClientError:
    try:
        message = str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        message = f"the daemon answered HTTP {status}"
    cls = UsageRefused if status in (400, 413, 415, 422) else ClientError
    error = cls(message)
    error.status = status  # type: ignore[attr-defined]
    return error
