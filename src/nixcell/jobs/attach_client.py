"""The client side of ``WS /api/v1/jobs/{id}/attach``: the connection and what its end means.

The WebSocket goes where ``jobs.client.Client`` goes (its unix socket, or its TCP address with
its bearer token), never through an HTTP proxy from the environment (websockets would use
one by default: the token would travel to it). ``Outcome`` reads how the attachment ended:
the job's exit, a refusal (close code 4000 + HTTP status), or a lost connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nixcell.jobs.client import Client, ClientError, UsageRefused, job_path

MAX_FRAME = 8 << 20  # the server sends what queued up for us in one frame (up to ~1 MiB)


def connect(client: Client, job_id: int) -> Any:
    """An open ``websockets.sync`` connection to the job's terminal (a one-line ClientError
    when the daemon cannot be reached or refuses the upgrade)."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect as ws_connect
    from websockets.sync.client import unix_connect

    path = job_path(job_id, "/attach")
    options: dict[str, Any] = {
        "max_size": MAX_FRAME,
        "open_timeout": client.timeout,
        "close_timeout": 5,
        "compression": None,  # terminal bytes are small; no inflate bombs either way
        "proxy": None,
        "user_agent_header": "nixcell",
    }
    try:
        if client.unix is not None:
            return unix_connect(client.unix, uri=f"ws://localhost{path}", **options)
        headers = {"Authorization": f"Bearer {client.token}"} if client.token else {}
        uri = f"ws://{client.host}:{client.port}{path}"
        return ws_connect(uri, additional_headers=headers, **options)
    except InvalidStatus as exc:
        status = exc.response.status_code
        raise _refused(status, exc.response.body) from None
    except InvalidHandshake as exc:
        raise ClientError(f"the daemon at {client.server} did not attach: {exc}") from None
    except (OSError, TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ClientError(f"cannot reach the daemon at {client.server}: {why.lower()}") from None


def _refused(status: int, body: bytes | None) -> ClientError:
    try:
        message = str(json.loads(body or b"")["error"])
    except (ValueError, KeyError, TypeError):
        message = f"the daemon refused to attach (HTTP {status})"
        if status == 403:
            message += ": a token is required, or this connection may not attach"
    return (UsageRefused if status in (400, 422) else ClientError)(message)


@dataclass
class Outcome:
    """How an attachment ended. ``exit``: the job's end (state, exit_code, reason);
    ``code``/``reason``: the close frame; ``detached``: the user typed ``~.``."""

    exit: dict[str, Any] | None = None
    code: int | None = None
    reason: str = ""
    detached: bool = False

    def take(self, text: str) -> None:
        """A text frame from the server: only ``{"exit": {...}}`` means anything."""
        try:
            data = json.loads(text)
        except ValueError:
            return
        if isinstance(data, dict) and isinstance(data.get("exit"), dict):
            self.exit = data["exit"]

    def error(self) -> ClientError | None:
        """The refusal or breakage to report (None: the job ended, or the user detached)."""
        if self.exit is not None or self.detached:
            return None
        if self.code is not None and 4400 <= self.code < 4600:
            text = "".join(c if c.isprintable() else "?" for c in self.reason)
            cls = UsageRefused if self.code in (4400, 4422) else ClientError
            return cls(text or f"the daemon refused to attach (code {self.code})")
        if self.code == 1011:
            return ClientError("the daemon failed on this attachment (internal error)")
        if self.code in (1001, 1012):  # going away, service restart: uvicorn's shutdown
            return ClientError("the daemon shut down while attached (`nixcell show` tells more)")
        return ClientError("the connection to the daemon broke off; the job goes on")
