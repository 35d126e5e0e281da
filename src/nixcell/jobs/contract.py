"""What the HTTP layer (``api.py``) may ask of the service (``service.py``): the one seam.

Every method takes the ``Caller`` and checks it: a job the caller may not see is ``NotFound``
(never "forbidden": ids of other users' jobs are not confirmed). Errors are ``JobError``s with a
one-line message and an HTTP status; the API turns them into ``{"error": message}``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import IO, Protocol

from nixcell.errors import NixcellError
from nixcell.jobs.model import Caller, Event, Job, JobRequest, LogLine


class JobError(NixcellError):
    """A refused API request; ``status`` is its HTTP status."""

    status = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class NotFound(JobError):
    status = 404


class Conflict(JobError):  # e.g. cancel of a finished job, attach to a non-interactive one
    status = 409


class Unavailable(JobError):  # shutting down, queue full
    status = 503


class Terminal(Protocol):
    """An interactive job's terminal (the daemon holds the pty's master side)."""

    async def read(self) -> bytes:
        """The next output chunk; b"" once the job has ended."""

    async def write(self, data: bytes) -> None: ...

    def resize(self, rows: int, cols: int) -> None: ...

    def detach(self) -> None:
        """This attachment ends; the job goes on."""


class Service(Protocol):
    async def upload(self, caller: Caller, body: AsyncIterator[bytes]) -> str:
        """Unpack a tar stream (checked: no ``..``, no links out, no devices) into a new upload
        owned by the caller; its id goes in ``workspace.upload``. Unused ones expire."""

    async def submit(self, caller: Caller, request: JobRequest) -> Job:
        """Compile-check the request (a bad one is a JobError now, not a failed job later),
        store it durably, queue it."""

    def get(self, caller: Caller, job_id: int) -> Job: ...

    def list(
        self,
        caller: Caller,
        *,
        states: Iterable[str] | None = None,
        limit: int = 100,
        all_users: bool = True,  # admins: everyone's jobs; others always only their own
    ) -> list[Job]: ...

    def shown(self, caller: Caller, job: Job) -> dict:
        """The job as JSON for this caller: request with secrets hidden, no host paths."""

    async def cancel(self, caller: Caller, job_id: int) -> Job: ...

    def logs(
        self,
        caller: Caller,
        job_id: int,
        *,
        after: int = 0,
        tail: int | None = None,
        streams: Iterable[str] | None = None,
    ) -> list[LogLine]: ...

    def follow(
        self, caller: Caller, job_id: int, *, after: int = 0, streams: Iterable[str] | None = None
    ) -> AsyncIterator[LogLine | Event]:
        """Stored lines after ``after``, then live ones and the job's events, until the job is
        terminal and every line is out (the last item is the terminal state's Event)."""

    def events(self, caller: Caller, job_id: int | None = None) -> AsyncIterator[Event]:
        """Live events of one job, or of every job the caller may see (the web list)."""

    def audit(self, caller: Caller, job_id: int) -> list[dict]:
        """The job's policy decisions (the proxy's audit records, credentials never shown)."""

    def artifacts(self, caller: Caller, job_id: int) -> IO[bytes]:
        """A tar stream of the job's workspace after it ended (read without following links)."""

    async def terminal(self, caller: Caller, job_id: int) -> Terminal: ...

    async def gc(self, caller: Caller) -> dict[str, int]:
        """Admins: apply retention now; counts of what was removed."""

    def metrics(self) -> str:
        """Prometheus text format."""
