"""One job from ``preparing`` to its final state: compile, workspace, cell, streamed logs.

``JobRun.run`` is one asyncio task. ``preparing``: the request (profiles applied) compiles to a
CellSpec, the workspace is made, the compiled files are written into the job dir and the plan
is made in a worker thread (a cold nix resolution must not stall the loop). ``running`` once the
cell's command runs (``execute_async``'s ``on_start``). The cell's stdout and stderr are pipes
read as they come (``logpipe``); the proxy's audit file is tailed into the ``proxy`` stream.
Cancelling the task kills every process of the cell (``execute_async`` guarantees it) and the
job ends ``cancelled`` with the canceller's reason. Whatever happens, the job reaches exactly
one terminal state: a NixcellError is ``error`` with its one line; anything else is ``error``
"internal error" with the traceback in the server's log only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import subprocess
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nixcell.errors import NixcellError
from nixcell.jobs import jobaudit
from nixcell.jobs.hub import Hub
from nixcell.jobs.logpipe import LogSink, read_lines
from nixcell.jobs.model import ACTIVE, Job, JobRequest
from nixcell.jobs.store import JobStore
from nixcell.jobs.workspace import Workspaces

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.jobs.config import ServerConfig
    from nixcell.runner import RunResult

log = logging.getLogger(__name__)

AUDIT_POLL = 0.25  # seconds between reads of a running job's audit file
START_GRACE = 30.0  # seconds a cancel waits for a starting cell's start before it cancels anyway
READ_GRACE = 10.0  # seconds the output may take to reach EOF once the cell has gone
Move = Callable[..., Awaitable[Job | None]]  # the service's transition-and-publish


@dataclass
class Context:
    """What a run needs from the service, fixed when the job starts (a SIGHUP reload applies
    to jobs not yet started)."""

    config: ServerConfig
    store: JobStore
    hub: Hub
    workspaces: Workspaces
    profiles: dict[str, Any]
    credential_policy: str | None
    move: Move
    decisions: dict[str, int] = field(default_factory=dict)  # proxy decisions (metrics)
    shared: Any = None  # a cluster's store: the artifacts go there too (clusterfiles.py)
    host_cache: Any = None  # a cluster's caches of its hosts' stores (hostcache.py)


_PREPARE: concurrent.futures.ThreadPoolExecutor | None = None


def _prepare_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Resolutions (nix builds, fetches: seconds, cold) run on threads of their own, never on
    the loop's default pool, which the API's store reads need (a burst of cold jobs starved
    them: submits waited minutes). Job concurrency bounds how many run at once."""
    global _PREPARE
    if _PREPARE is None:
        _PREPARE = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="nixcell-prepare")
    return _PREPARE


def job_dir(config: ServerConfig, job_id: int) -> str:
    return os.path.join(config.state_dir, "jobs", str(job_id))


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else "failed"


class JobRun:
    def __init__(self, job: Job, ctx: Context) -> None:
        self.job = job
        self.ctx = ctx
        self.dir = job_dir(ctx.config, job.id)
        self.cancel_reason: str | None = None
        self.cancellable = True  # False once the cell has ended: only the bookkeeping is left
        self.task: asyncio.Task[Job | None] | None = None
        self._running: asyncio.Future[Job | None] | None = None
        self._fds: list[int] = []
        self._starting = False  # the cell is being started: a cancel waits for its start
        self._entered = False  # run() has begun: before, a task.cancel() would skip its ending
        self._deferred: asyncio.TimerHandle | None = None
        self._tail: jobaudit.AuditTail | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.sink = LogSink(ctx.store, job.id, ctx.hub.notify, redact=_redactor(job.request))
        self.sink.last_seq = job.log_lines  # a re-run (retry) goes on after the first's lines

    def start(self) -> asyncio.Task[Job | None]:
        self.task = asyncio.ensure_future(self.run())
        return self.task

    def cancel(self, reason: str) -> bool:
        """Kill the job's cell (or stop its preparation); False when it is already ending."""
        if not self.cancellable or self.task is None or self.task.done():
            return False
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if not self._entered:  # its first step ends it (a cancelled task would never run it)
            return True
        if self._starting:  # bwrap is up but its child's pid is not known yet: see _on_start
            if self._deferred is None:
                loop = asyncio.get_running_loop()
                self._deferred = loop.call_later(START_GRACE, self._cancel_now)
            return True
        self.task.cancel()
        return True

    def _cancel_now(self) -> None:
        self._starting = False
        if self.cancellable and self.task is not None and not self.task.done():
            self.task.cancel()

    async def run(self) -> Job | None:
        """The whole job; returns it in its final state (None if the store lost it)."""
        self._entered = True
        self.sink.start()
        if self.cancel_reason is not None:  # cancelled before this first step: nothing started
            self.cancellable = False
            return await self._finish("cancelled", None, self.cancel_reason)
        exit_code = reason = None
        try:
            result = await self._run_cell()
        except asyncio.CancelledError:
            _uncancel()
            state, reason = "cancelled", self.cancel_reason or "cancelled: the server stopped"
        except NixcellError as exc:
            if self.cancel_reason is not None:  # cancelled while it started: what was asked
                state, reason = "cancelled", self.cancel_reason
            else:
                state, reason = "error", one_line(exc.message)
        except Exception:
            log.exception("job %d: internal error", self.job.id)
            state, reason = "error", "internal error"
        else:
            state, exit_code, reason = _outcome(result)
            for text in (result.message, result.network_summary):
                if text:
                    self.sink.add("system", text)
            if result.no_network is not None:
                self.sink.add("system", result.no_network.line())
        self.cancellable = False
        if reason is not None:  # no host path of the server's in an answer or a log line
            reason = reason.replace(self.ctx.config.state_dir, "<state dir>")
        return await self._finish(state, exit_code, reason)

    async def _finish(self, state: str, exit_code: int | None, reason: str | None) -> Job | None:
        self._close_fds()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._tail is not None:
            try:
                self._tail.poll()  # the records written since the last poll
            except OSError as exc:
                log.warning("job %d: audit: %s", self.job.id, exc)
            finally:
                self._tail.close()
        if self.ctx.shared is not None:
            await self._share_artifacts()
        self.sink.add("system", _final_line(state, exit_code, reason))
        try:
            await self.sink.close()
        except Exception:
            log.exception("job %d: could not store its last log lines", self.job.id)
        if self._running is not None:  # its event comes before the final one
            with contextlib.suppress(Exception):
                await self._running
        return await self.ctx.move(
            self.job.id, state, expect=ACTIVE, reason=reason, exit_code=exit_code
        )

    async def _share_artifacts(self) -> None:
        """In a cluster: the workspace's tar into the shared store before the final state, so
        any host serves it once the job shows finished."""
        from nixcell.jobs.artifacts import tar_stream
        from nixcell.jobs.clusterfiles import SHARED_LIMIT, keep_artifacts

        if not os.path.isdir(os.path.join(self.dir, "workspace")):
            return
        try:
            kept = await asyncio.to_thread(
                keep_artifacts, self.ctx.shared, self.job.id, tar_stream(self.dir)
            )
        except Exception as exc:
            log.warning("job %d: its artifacts were not shared: %s", self.job.id, exc)
            return
        if not kept:
            self.sink.add(
                "system",
                f"artifacts over {SHARED_LIMIT >> 20} MiB: only on host {self.job.host}",
            )

    async def _run_cell(self) -> RunResult:
        from nixcell import runner
        from nixcell.jobs import terminal
        from nixcell.jobs.compile import compile_request
        from nixcell.jobs.profiles import apply_profiles

        ctx = self.ctx
        _make_job_dir(self.dir, ctx.workspaces)
        request = JobRequest.model_validate(self.job.request)
        request = apply_profiles(request, list(request.profiles), ctx.profiles)
        prepared = await ctx.workspaces.prepare(self.job, request, self.dir)
        compiled = compile_request(
            request,
            ctx.config,
            job_dir=self.dir,
            workspace=prepared.path,
            cwd=prepared.cwd,
            credential_policy=ctx.credential_policy,
            audit=os.path.join(self.dir, jobaudit.AUDIT),
            extra_packages=prepared.packages,
        )
        _write_files(self.dir, compiled.files)
        spec = compiled.spec
        if spec.network is not None and spec.network.audit:  # the proxy stream
            self._tail = jobaudit.AuditTail(spec.network.audit, self._audited)
            self._watcher = asyncio.ensure_future(self._watch(self._tail))
        self.sink.add("system", f"resolving packages: {' '.join(spec.packages)}")
        loop = asyncio.get_running_loop()

        def progress(text: str) -> None:
            self.sink.add_threadsafe(loop, "system", text)

        from nixcell.jobs.hostcache import context_for
        from nixcell.nix.resolve import JOB_CACHES

        caches = context_for(ctx.host_cache, request)  # the submitting host's, if any
        try:  # in a copy of this context: this job's nix calls only
            call = contextvars.copy_context().run
            plan, closure = await loop.run_in_executor(
                _prepare_pool(), lambda: call(runner.prepare, spec, progress=progress)
            )
        finally:
            if caches is not None:
                JOB_CACHES.reset(caches)
        if ctx.host_cache is not None:
            ctx.host_cache.note_resolved(closure.paths)
        if request.interactive:
            from nixcell.jobs.logpipe import Lines

            lines = Lines("stdout", self.sink)  # the pty's output is the job's log
            self._starting = True
            try:
                return await terminal.run_interactive(
                    plan, self.job.id, lines.feed, on_start=self._on_start
                )
            finally:
                self._starting = False
                lines.end()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._fds = [out_w, err_w]
        readers = [
            asyncio.ensure_future(read_lines(out_r, "stdout", self.sink)),
            asyncio.ensure_future(read_lines(err_r, "stderr", self.sink)),
        ]
        self._starting = True
        try:
            result = await runner.execute_async(
                plan,
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                on_start=self._on_start,
            )
            self.cancellable = False  # the cell has ended: its last lines are not cut short
            return result
        finally:
            self._starting = False
            self._close_fds()  # the cell is gone: its ends were the last writers, EOF follows
            await self._drain(readers)

    async def _drain(self, readers: list[asyncio.Future[None]]) -> None:
        """The readers' EOF. The engine guarantees the cell's processes are gone, so EOF is
        immediate; should anything still hold a pipe, the job does not hang on it."""
        _, held = await asyncio.wait(readers, timeout=READ_GRACE)
        for reader in held:
            reader.cancel()
        if held:
            log.error("job %d: its output pipes stayed open after its cell ended", self.job.id)
            self.sink.add("system", "nixcell: the output was still held open after the cell ended")
        await asyncio.gather(*readers, return_exceptions=True)

    def _on_start(self, cell: Any, session: object | None) -> None:
        self._close_fds()  # bwrap holds its copies; ours would keep the readers from EOF
        self._starting = False
        if self._deferred is not None:  # a cancel came while it started: now it can kill all
            self._deferred.cancel()
            asyncio.get_running_loop().call_soon(self._cancel_now)
        self._mark_running(getattr(cell, "cell_id", None))

    def _mark_running(self, cell_id: str | None) -> None:
        self.sink.add("system", "cell started")
        self._running = asyncio.ensure_future(
            self.ctx.move(self.job.id, "running", expect=("preparing",), cell_id=cell_id)
        )

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def _watch(self, tail: jobaudit.AuditTail) -> None:
        """The proxy stream while the job runs: new audit records every ``AUDIT_POLL`` s."""
        while True:
            await asyncio.sleep(AUDIT_POLL)
            try:
                tail.poll()
            except OSError as exc:
                log.warning("job %d: audit: %s", self.job.id, exc)
                return

    def _audited(self, record: dict[str, Any]) -> None:
        self.sink.add("proxy", jobaudit.line(record))
        which = jobaudit.decision(record)
        self.ctx.decisions[which] = self.ctx.decisions.get(which, 0) + 1


def _outcome(result: RunResult) -> tuple[str, int | None, str | None]:
    """(state, exit code, reason) of a cell that ran to its end."""
    if result.timed_out:
        return "timed_out", result.exit_code, one_line(result.message or "timed out")
    if result.exit_code == 0:
        return "succeeded", 0, None
    return "failed", result.exit_code, one_line(result.message) if result.message else None


def _final_line(state: str, exit_code: int | None, reason: str | None) -> str:
    text = f"job {state}"
    if exit_code is not None:
        text += f" (exit code {exit_code})"
    return f"{text}: {reason}" if reason else text


def _redactor(request: dict[str, Any]) -> Callable[[str], str] | None:
    """Replaces the job's secret env values (``secret_env``) in its log lines."""
    env = request.get("env") or {}
    secrets = sorted(
        {env[k] for k in request.get("secret_env") or () if len(env.get(k) or "") >= 4},
        key=len,
        reverse=True,
    )
    if not secrets:
        return None

    def redact(text: str) -> str:
        for value in secrets:
            text = text.replace(value, "<secret>")
        return text

    return redact


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def remove_job_dir(path: str, workspaces: Workspaces) -> bool:
    """Remove a job's dir (the cell wrote its workspace: no link is followed); False if none."""
    from nixcell.fsio import remove_tree

    if not os.path.lexists(path):
        return False
    workspaces.remove(path)
    if os.path.lexists(path):  # what Workspaces does not know of (the job's own files)
        remove_tree(path)
    return True


def _make_job_dir(path: str, workspaces: Workspaces) -> None:
    """The job's dir, 0700 and ours; a leftover of the same id (a reset store) is removed."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        remove_job_dir(path, workspaces)
        os.mkdir(path, 0o700)


def _write_files(directory: str, files: dict[str, bytes]) -> None:
    """The compiled files (the script...), written through the job dir's fd, no link followed.
    World-readable inside a 0700 dir: the cell's own uid reads them through its bind."""
    from nixcell.fsio import write_atomic

    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name, data in files.items():
            write_atomic(name, data, mode=0o644, dir_fd=dfd)
    finally:
        os.close(dfd)
