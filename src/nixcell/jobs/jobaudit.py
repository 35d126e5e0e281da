"""A job's proxy audit (``{job_dir}/audit.jsonl``, written by the cell's proxy) read back.

The proxy writes one JSON record per decision, already redacted (``net/audit.py``: a real
credential never reaches the file). Here it becomes the job's ``proxy`` log stream, the API's
``audit`` answer and the metrics' decision counts. The file sits in the server-owned job dir
(the cell never sees it); it is still opened without following links, and read in bounded
chunks so a huge audit cannot make one read hold it all.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from typing import Any

AUDIT = "audit.jsonl"
SHOWN = ("time", "method", "scheme", "host", "port", "path", "rule", "status", "reason")
CHUNK = 1 << 20


def decision(record: dict[str, Any]) -> str:
    """allow | deny (the proxy's "error" is a refusal too)."""
    return "allow" if record.get("action") == "allow" else "deny"


def shown(record: dict[str, Any]) -> dict[str, Any]:
    """One record as the API shows it: known fields only, plus its ``decision``."""
    out = {k: record.get(k) for k in SHOWN}
    out["decision"] = decision(record)
    return out


def line(record: dict[str, Any]) -> str:
    """One record as a ``proxy`` log line."""
    port = record.get("port")
    where = f"{record.get('host', '?')}{'' if port in (80, 443, None) else f':{port}'}"
    text = f"{decision(record)} {record.get('method', '?')} {where}{record.get('path') or ''}"
    if record.get("status"):
        text += f" -> {record['status']}"
    if record.get("rule") and record["rule"] != "-":
        text += f" ({record['rule']})"
    if record.get("action") != "allow" and record.get("reason"):
        text += f": {record['reason']}"
    return " ".join(text.split())  # one line whatever a field held


class AuditTail:
    """Reads new complete records of a growing audit file, from where it stopped."""

    def __init__(self, path: str, emit: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.emit = emit
        self._fd: int | None = None
        self._buf = b""

    def poll(self) -> int:
        """Emit every complete record written since the last poll; how many."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return 0
        n = 0
        while chunk := os.read(self._fd, CHUNK):
            parts = (self._buf + chunk).split(b"\n")
            self._buf = parts.pop()
            for part in parts:
                record = _parse(part)
                if record is not None:
                    self.emit(record)
                    n += 1
            if len(self._buf) > CHUNK:  # no record is that long: not an audit file
                self._buf = b""
        return n

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def records(path: str, limit: int = 10000) -> list[dict[str, Any]]:
    """The last ``limit`` records of an audit file ([] when there is none)."""
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    tail = AuditTail(path, kept.append)
    try:
        tail.poll()
    finally:
        tail.close()
    return list(kept)


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
