"""A job as the API shows it, and the checked filters of list and log queries.

``shown`` is the one place a Job becomes JSON (API.md): the request with ``secret_env`` values
replaced, no host path (the state dir is cut out of reasons), no cell id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from nixcell.jobs.contract import JobError
from nixcell.jobs.model import STATES, STREAMS, Job, JobRequest
from nixcell.jobs.requestcheck import shown as shown_value


def shown(job: Job, state_dir: str) -> dict[str, Any]:
    """The job as the API shows it (API.md): secrets hidden, no host path, no cell id."""
    try:
        request = JobRequest.model_validate(job.request).shown()
    except ValueError:  # stored by another version: show no env value at all
        request = {**job.request, "env": {k: "<secret>" for k in job.request.get("env") or {}}}
    end = job.finished if job.finished is not None else time.time()
    reason = job.reason.replace(state_dir, "<state dir>") if job.reason else job.reason
    return {
        "id": job.id,
        "state": job.state,
        "owner": job.owner_name,
        "name": job.request.get("name"),
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
        "duration": None if job.started is None else max(0.0, end - job.started),
        "exit_code": job.exit_code,
        "reason": reason,
        "host": job.host,
        "interactive": bool(job.request.get("interactive")),
        "log_lines": job.log_lines,
        "log_truncated": job.log_truncated,
        "request": request,
    }


def among_states(states: Iterable[str] | None) -> list[str] | None:
    return _among(states, STATES, "state")


def among_streams(streams: Iterable[str] | None) -> list[str] | None:
    return _among(streams, STREAMS, "stream")


def _among(values: Iterable[str] | None, known: tuple[str, ...], what: str) -> list[str] | None:
    """A query's filter, checked (an unknown name is a 400, never an empty answer)."""
    if values is None:
        return None
    wanted = list(values)
    for value in wanted:
        if value not in known:
            raise JobError(f"unknown {what} {shown_value(value)}: one of {', '.join(known)}")
    return wanted or None
