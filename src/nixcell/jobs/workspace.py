"""Job workspaces: git clones, uploads, artifacts (part E of issue 11 replaces this stub).

The service calls only ``Workspaces``; until the real module lands every method refuses, so a
request that needs a workspace fails closed with one line.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from nixcell.jobs.contract import JobError
from nixcell.jobs.model import Caller, Job, JobRequest


@dataclass(frozen=True)
class Prepared:
    path: str | None  # host dir bound read-write at /workspace; None = tmpfs
    cwd: str | None  # the cell's start dir (``workspace.path`` under /workspace); None = default
    packages: tuple[str, ...] = ()  # from the workspace's flake devShell (``flake_shell``)


class Workspaces:
    """Host-side work on paths a cell controls: every walk is no-follow (THREATS.md)."""

    def __init__(self, config: object) -> None:
        self.config = config

    async def prepare(self, job: Job, request: JobRequest, job_dir: str) -> Prepared:
        """Make ``job_dir``/workspace from the request (clone, upload, or nothing)."""
        ws = request.workspace
        if ws.repo or ws.upload or ws.flake_shell or ws.path:
            raise JobError("workspaces are not built yet")
        return Prepared(None, None)

    async def store_upload(self, caller: Caller, body: AsyncIterator[bytes]) -> str:
        """Unpack a tar stream into a new upload owned by ``caller``; its id."""
        raise JobError("uploads are not built yet")

    def check_upload(self, caller: Caller, upload_id: str) -> None:
        """At submit: the upload exists and is the caller's (else JobError 400)."""
        raise JobError("uploads are not built yet")

    def artifacts(self, job_dir: str) -> Iterator[bytes]:
        """A tar stream of ``job_dir``/workspace, read without following links."""
        raise JobError("artifacts are not built yet", status=409)

    def remove(self, job_dir: str) -> None:
        """Remove a job's dir (cell-written parts included) without following links."""

    def gc(self, *, older_than: float) -> dict[str, int]:
        """Expired uploads and cached clones; counts removed."""
        return {"uploads": 0, "clones": 0}
