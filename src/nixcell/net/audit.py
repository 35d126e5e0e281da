"""Audit lines and the end-of-run summary of what was refused.

Every decision the proxy takes is one JSON line (``--audit FILE``), written and flushed as it
happens so a crashed run still leaves its record. Values pass through the cell's redactor first:
a real credential never reaches the file, whatever the cell put into a URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
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
        self.denied: list[Record] = []  # refused by the policy (a deny rule, or no rule)
        self.failed: list[Record] = []  # everything else not let through: 502s, guard, framing
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

    def write(self, record: Record, *, by_policy: bool = False) -> None:
        """Audit one decision; ``by_policy``: a refusal the policy's rules decided."""
        self.count += 1
        record.time = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"
        for name in ("method", "host", "path", "rule", "reason"):  # every spelling, any field
            value = getattr(record, name)
            if value:
                setattr(record, name, self.redact(value))
        if record.action != "allow":
            (self.denied if by_policy else self.failed).append(record)
        if self._fd is not None:
            line = json.dumps(asdict(record), separators=(",", ":")) + "\n"
            with contextlib.suppress(OSError):
                os.write(self._fd, line.encode())

    def summary(self, limit: int = 5) -> str | None:
        """One short line for stderr at the end of a run: "denied" only for what the policy
        refused (naming the rule), "failed" with the reason for every other refusal."""
        parts = []
        for verb, records, why in (
            ("denied", self.denied, _by_rule),
            ("failed", self.failed, _failure),
        ):
            if not records:
                continue
            n = len(records)
            shown = ", ".join(f"{_what(r)} ({why(r)})" for r in records[:limit])
            more = f", and {n - limit} more" if n > limit else ""
            parts.append(f"{n} request{'s' if n != 1 else ''} {verb}: {shown}{more}")
        return "; ".join(parts) or None

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _what(r: Record) -> str:
    return f"{r.method} {r.host}{'' if r.port in (80, 443) else f':{r.port}'}{r.path}"


_RULE = re.compile(r"rule (\d+) \((.*)\)")


def _by_rule(r: Record) -> str:
    found = _RULE.fullmatch(r.rule)
    return f"by rule {found[1]} at {found[2]}" if found else r.rule


def _failure(r: Record) -> str:
    reason = (r.reason or "refused").removeprefix("nixcell: ").strip().splitlines()[0]
    status = f"{r.status}: " if r.status else ""
    return status + (reason if len(reason) <= 160 else reason[:157] + "...")
