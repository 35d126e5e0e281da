"""Which queued job starts next: FIFO per owner, fair between owners, pure (no I/O).

The rule (issue 11): with room for one more job, the next to start is the oldest queued job of
the owner with the fewest running jobs; ties between owners go to the oldest job. ``per_user``
caps how many jobs of one owner run at once (None: no cap). Job ids grow with submit order
(the store's AUTOINCREMENT), so "oldest" is "smallest id".

The queue mirrors the store's queued jobs in memory (one deque per owner) so a pick costs
O(owners), not a database scan of a 10 000-job queue; the store stays the truth: the service
claims a picked job with a compare-and-set transition and skips it when that fails.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping


class FairQueue:
    def __init__(self) -> None:
        self._by_owner: dict[str, deque[int]] = {}
        self._owner_of: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._owner_of)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._owner_of

    def push(self, job_id: int, owner: str) -> None:
        """Queue a job (ids arrive in increasing order per owner, as the store numbers them)."""
        if job_id in self._owner_of:
            return
        jobs = self._by_owner.setdefault(owner, deque())
        if jobs and jobs[-1] > job_id:  # out of order (a load after pushes): keep it sorted
            items = sorted([*jobs, job_id])
            jobs.clear()
            jobs.extend(items)
        else:
            jobs.append(job_id)
        self._owner_of[job_id] = owner

    def owner(self, job_id: int) -> str | None:
        return self._owner_of.get(job_id)

    def remove(self, job_id: int) -> bool:
        """Take a job out (cancelled while queued); False when it was not queued here."""
        owner = self._owner_of.pop(job_id, None)
        if owner is None:
            return False
        jobs = self._by_owner[owner]
        jobs.remove(job_id)
        if not jobs:
            del self._by_owner[owner]
        return True

    def pick(self, running: Mapping[str, int], per_user: int | None = None) -> int | None:
        """The job to start next (still queued: ``remove`` it once claimed), or None."""
        best: tuple[int, int] | None = None
        for owner, jobs in self._by_owner.items():
            busy = running.get(owner, 0)
            if per_user is not None and busy >= per_user:
                continue
            key = (busy, jobs[0])
            if best is None or key < best:
                best = key
        return None if best is None else best[1]

    def ids(self) -> Iterable[int]:
        return self._owner_of.keys()
