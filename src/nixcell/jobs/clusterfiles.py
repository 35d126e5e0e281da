"""Uploads and artifacts that move with a job between hosts (scale-out, docs/scale-out.md).

An upload is unpacked (and so checked: ``tarsafe``) on the host that received it, and its tar
stream is kept in the shared store until the job ends, so whichever host claims the job unpacks
the same stream with the same checks. A finished job's artifacts (its workspace as a tar, read
no-follow by ``artifacts.tar_stream``) are put into the store by the host that ran it, before its
final state is stored, so any host serves them once the job is seen finished. Both are bounded
(``SHARED_LIMIT``): a bigger workspace's artifacts stay on the host that ran the job, and asking
another host for them says so in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from nixcell.jobs.contract import Conflict

log = logging.getLogger(__name__)

SHARED_LIMIT = 256 << 20  # bytes of one upload or one job's artifacts in the shared store


def keep_artifacts(store: Any, job_id: int, chunks: Iterator[bytes]) -> bool:
    """Store a finished job's artifacts tar; False (nothing stored) when it is over the limit."""
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > SHARED_LIMIT:
                return False
            parts.append(chunk)
    finally:
        closer = getattr(chunks, "close", None)
        if closer is not None:
            closer()
    store.put_artifacts(job_id, b"".join(parts))
    return True


def shared_artifacts(store: Any, job_id: int, host: str | None) -> Iterator[bytes]:
    """A job's artifacts from the shared store (the job ran on another host)."""
    data = store.get_artifacts(job_id)
    if data is None:
        where = f"host {host}" if host else "the host that ran it"
        raise Conflict(f"job {job_id}'s artifacts are only on {where} (none in the shared store)")
    for start in range(0, len(data), 1 << 16):
        yield data[start : start + (1 << 16)]
