"""Pure parts both job stores share (SQLite and PostgreSQL), so they cannot drift apart: argument
checks, how a request is stored, how a log line is cut, how the per-job log bound plays out,
and how a row becomes a ``Job``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nixcell.errors import StateError
from nixcell.jobs import sealing
from nixcell.jobs.model import STATES, STREAMS, Job
from nixcell.jobs.store import TRUNCATED

CUT = " [cut]"  # the visible end of a line cut at ``line_limit`` bytes

JOB_COLUMNS = (
    "id, owner, owner_name, request, state, created, started, finished, exit_code, reason, "
    "host, cell_id, log_seq, log_dropped"
)


def check_limits(log_limit: int, line_limit: int) -> None:
    if log_limit < 0:
        raise StateError(f"log limit must be 0 or more, not {log_limit}")
    if line_limit <= len(CUT.encode()):
        raise StateError(f"line limit must be more than {len(CUT)} bytes, not {line_limit}")


def encode_request(sealer: sealing.Sealer, request: dict[str, Any]) -> str:
    """The request as stored: secrets sealed, strict JSON (no NaN, what PostgreSQL takes too)."""
    try:
        return json.dumps(sealer.seal(request), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StateError(f"job request cannot be stored: {exc}") from None


def hidden_body(body: str) -> str | None:
    """The stored request of a job that will not run again, its secrets gone even sealed;
    None when there were none."""
    hidden = json.dumps(sealing.hide(json.loads(body)), sort_keys=True)
    return hidden if hidden != body else None


def cut(text: str, line_limit: int) -> str:
    """The line as stored: valid UTF-8 (lone surrogates replaced), at most ``line_limit``
    bytes, a cut one ending in ``CUT``."""
    data = text.encode("utf-8", "replace")
    if len(data) <= line_limit:
        return data.decode("utf-8")
    keep = data[: line_limit - len(CUT.encode())]
    return keep.decode("utf-8", "ignore") + CUT  # "ignore": a char split by the cut goes


@dataclass(frozen=True)
class LogPlan:
    """What one ``append_logs`` writes: new rows, or a new text for the marker line."""

    rows: list[tuple[int, str, str]]  # (seq, stream, text) to insert
    marker: str | None  # the marker's new text (the bound was reached before), at ``seq``
    seq: int
    dropped: int


def plan_logs(seq: int, dropped: int, lines: Sequence[tuple[str, str]], limit: int) -> LogPlan:
    """Past the bound, lines are dropped and one marker line is kept as the last stored line."""
    if not lines:
        return LogPlan([], None, seq, dropped)
    if dropped:
        dropped += len(lines)
        return LogPlan([], TRUNCATED.format(dropped=dropped), seq, dropped)
    kept = list(lines[: max(0, limit - seq)])
    rows = [(seq + i, s, t) for i, (s, t) in enumerate(kept, 1)]
    seq += len(kept)
    if len(kept) < len(lines):  # the bound is reached: the marker is the last line
        dropped = len(lines) - len(kept)
        seq += 1
        rows.append((seq, "system", TRUNCATED.format(dropped=dropped)))
    return LogPlan(rows, None, seq, dropped)


def job(row: Sequence[Any], request: dict[str, Any]) -> Job:
    """A ``JOB_COLUMNS`` row as a Job (``request``: the unsealed one)."""
    (job_id, owner, owner_name, _, state, created, started, finished, exit_code, reason,
     host, cell_id, log_seq, log_dropped) = row[:14]  # fmt: skip
    return Job(
        id=job_id,
        owner=owner,
        owner_name=owner_name,
        request=request,
        state=state,
        created=created,
        started=started,
        finished=finished,
        exit_code=exit_code,
        reason=reason,
        host=host,
        cell_id=cell_id,
        log_lines=log_seq,
        log_truncated=log_dropped > 0,
    )


def filters(
    *, owner: str | None = None, states: Iterable[str] | None = None, mark: str = "?"
) -> tuple[list[str], list[Any]]:
    """WHERE clauses and their arguments; ``mark``: the driver's placeholder."""
    where: list[str] = []
    args: list[Any] = []
    if owner is not None:
        where.append(f"owner = {mark}")
        args.append(owner)
    if states is not None:
        chosen = sorted({check_state(s) for s in states})
        if not chosen:
            where.append("0 = 1")  # an empty choice selects nothing (not everything)
        else:
            where.append(f"state IN ({', '.join([mark] * len(chosen))})")
            args.extend(chosen)
    return where, args


def where(clauses: Sequence[str]) -> str:
    return f" WHERE {' AND '.join(clauses)}" if clauses else ""


def check_text(value: str | None, what: str) -> str | None:
    """A text field both databases store as it is: no NUL (PostgreSQL's TEXT cannot hold one),
    no lone surrogate (not UTF-8)."""
    if value is None:
        return None
    if "\x00" in value:
        raise StateError(f"{what} cannot be stored: it contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise StateError(f"{what} cannot be stored: it is not valid UTF-8") from None
    return value


def check_state(state: str) -> str:
    if state not in STATES:
        raise StateError(f"unknown job state {state!r} (one of {', '.join(STATES)})")
    return state


def check_stream(stream: str) -> str:
    if stream not in STREAMS:
        raise StateError(f"unknown log stream {stream!r} (one of {', '.join(STREAMS)})")
    return stream


def count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StateError(f"{what} must be a whole number, 0 or more, not {value!r}")
    return value


class SharedReads:
    """The queries both stores ask alike, mixed into each (``MARK``: its driver's placeholder;
    ``_conn``: its pooled read connection)."""

    MARK = "?"
    _conn: Callable[[], contextlib.AbstractContextManager[Any]]

    def counts(self) -> dict[str, int]:
        result = dict.fromkeys(STATES, 0)
        with self._conn() as conn:
            for state, n in conn.execute("SELECT state, count(*) FROM jobs GROUP BY state"):
                result[state] = n
        return result

    def durations(self, *, limit: int = 1000) -> list[tuple[str, float]]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT state, finished - started FROM jobs WHERE finished IS NOT NULL AND "
                f"started IS NOT NULL ORDER BY finished DESC LIMIT {self.MARK}",
                (count(limit, "limit"),),
            ).fetchall()
        return [(state, max(0.0, seconds)) for state, seconds in rows]
