"""Audit lines and the end-of-run denial summary.

Every decision the proxy takes is one JSON line (``--audit FILE``), written and flushed as it
happens so a crashed run still leaves its record. Values pass through the cell's redactor first:
a real credential never reaches the file, whatever the cell put into a URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Record:
    cell: str
    method: str
    scheme: str
    host: str
    port: int
    path: str
    rule: str
    action: str  # "allow" | "deny" | "error"
    status: int | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: float = 0.0
    reason: str | None = None
    time: str = ""


class AuditLog:
    """Collects a cell's decisions; writes them to ``path`` when given."""

    def __init__(self, cell_id: str, path: str | None, redact: Callable[[str], str]) -> None:
        self.cell_id = cell_id
        self.redact = redact
        self.denied: list[Record] = []
        self.count = 0
        self._fd: int | None = None
        if path is not None:
            # Opened before the cell starts, and never through a link planted at the name
            # (a cell with --workdir . could leave audit.jsonl -> /etc/passwd for the next run).
            from nixcell.errors import NetworkError, StateError
            from nixcell.fsio import open_output

            try:
                self._fd = open_output(path, append=True)
            except StateError as exc:
                raise NetworkError(f"audit file: {exc}") from None

    def write(self, record: Record) -> None:
        self.count += 1
        record.time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        for name in ("method", "host", "path", "rule", "reason"):  # every spelling, any field
            value = getattr(record, name)
            if value:
                setattr(record, name, self.redact(value))
        if record.action != "allow":
            self.denied.append(record)
        if self._fd is not None:
            line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode())

    def summary(self, limit: int = 5) -> str | None:
        """One short line about denials, for stderr at the end of a run."""
        if not self.denied:
            return None
        n = len(self.denied)
        shown = ", ".join(
            f"{r.method} {r.host}{'' if r.port in (80, 443) else f':{r.port}'}{r.path} ({r.rule})"
            for r in self.denied[:limit]
        )
        more = f", and {n - limit} more" if n > limit else ""
        return f"{n} request{'s' if n != 1 else ''} denied: {shown}{more}"

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
