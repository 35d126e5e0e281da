"""Pure data of the job service: states, requests, jobs, events, log lines, callers.

Shared by every layer and by the client (which must stay cheap to import: no pydantic here
except ``JobRequest``, which the client only builds when it submits).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JobState = Literal[
    "queued", "preparing", "running", "succeeded", "failed", "cancelled", "timed_out", "error"
]
STATES: tuple[str, ...] = (
    "queued",
    "preparing",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "error",
)
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "error"})
ACTIVE = frozenset({"preparing", "running"})  # a cell is being made or runs

Stream = Literal["stdout", "stderr", "proxy", "system"]
STREAMS: tuple[str, ...] = ("stdout", "stderr", "proxy", "system")


class Workspace(BaseModel):
    """Where the job's /workspace comes from: a git clone, an upload, or nothing (tmpfs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    repo: str | None = None  # https://, http://, file:// (server config decides which)
    ref: str | None = None  # a branch, a tag or a 40-hex commit; None = the remote's HEAD
    path: str | None = None  # a subdirectory of the clone to start in (relative, no '..')
    git_credential: str | None = None  # a server credential by name, used only for the clone
    upload: str | None = None  # an upload id from POST /api/v1/uploads (the caller's own)
    flake_shell: bool = False  # the workspace's flake.nix devShell's packages are added


class JobRequest(BaseModel):
    """What a client asks for. Every field is checked again when it compiles to a CellSpec
    (``compile.py``); this model only fixes the shape. Host paths never appear here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    packages: list[str] = Field(default_factory=list)
    nixpkgs: str | None = None
    command: list[str] = Field(default_factory=list)  # argv; or ``script``
    script: str | None = None  # run by the cell's bash (or sh) as a file
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: list[str] = Field(default_factory=list)  # names in ``env`` never shown back
    allow_hosts: list[str] = Field(default_factory=list)
    deny_hosts: list[str] = Field(default_factory=list)
    allow_cidrs: list[str] = Field(default_factory=list)
    policies: list[str] = Field(default_factory=list)  # server policies by name
    credentials: list[str] = Field(default_factory=list)  # server credentials by name
    memory: str | int | None = None
    cpus: float | str | None = None
    pids: int | str | None = None
    timeout: float | str | None = None
    disk: str | int | None = None
    hardening: list[str] = Field(default_factory=list)
    backend: str | None = None  # None = the server's default
    workspace: Workspace = Field(default_factory=Workspace)
    cwd: str | None = None
    profiles: list[str] = Field(default_factory=list)
    interactive: bool = False
    name: str | None = None  # a label for listings
    on_host: str | None = None  # scale-out: only this host runs it (None: any host)
    # scale-out: re-runs allowed when its host is lost (idempotent jobs only); strict: a JSON
    # true or "3" is refused, not read as a count
    retry: int = Field(default=0, strict=True)
    # scale-out: the cache of the host that took the submit (set by that host, never a client:
    # hostcache.py); the host that runs the job fetches the closure paths it lacks from there
    via_cache: str | None = None

    def shown(self) -> dict[str, Any]:
        """The request as the API shows it: secret env values replaced."""
        data = self.model_dump()
        data["env"] = {k: ("<secret>" if k in self.secret_env else v) for k, v in self.env.items()}
        return data


@dataclass(frozen=True)
class Caller:
    """Who sent an API request: a unix peer (SO_PEERCRED) or a TCP token's name."""

    key: str  # "uid:1000" or "token:ci": jobs are owned by this
    name: str  # "alice" or "token ci", for display
    admin: bool = False  # sees and cancels every job

    def may_see(self, owner: str) -> bool:
        return self.admin or owner == self.key


@dataclass(frozen=True)
class Job:
    """One job as stored. ``request`` is the JobRequest's dump (env secrets included: the API
    shows ``JobRequest.shown()``, never this dict)."""

    id: int
    owner: str  # Caller.key
    owner_name: str
    request: dict[str, Any]
    state: str
    created: float  # unix time
    started: float | None = None  # entered running
    finished: float | None = None  # entered a terminal state
    exit_code: int | None = None
    reason: str | None = None  # for error/timed_out/cancelled: one line
    host: str | None = None  # the worker host (scale-out); None on a single host
    cell_id: str | None = None
    log_lines: int = 0  # stored log lines
    log_truncated: bool = False

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass(frozen=True)
class Event:
    """A state change (or another job event): every one is stored with its time."""

    job_id: int
    seq: int  # per job, from 1
    time: float
    kind: str  # "state" | "attach" | ...
    state: str | None = None
    detail: str | None = None
    exit_code: int | None = None  # a terminal state's event as the service shows it (not stored)


@dataclass(frozen=True)
class LogLine:
    job_id: int
    seq: int  # per job, from 1, no gaps
    time: float
    stream: str  # one of STREAMS
    text: str  # one line without its newline; bytes decoded with replacement
    extra: dict[str, Any] = field(default_factory=dict)
