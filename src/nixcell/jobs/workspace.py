"""Job workspaces: git clones, uploads, artifacts, a flake's devShell (docs/jobs-workspaces.md).

A job's ``/workspace`` is ``{job_dir}/workspace``, a host directory the server makes and fills
(a copy of a cached clone or of an upload) before the cell starts, and the cell then owns: a
root-run cell reaches it through an idmapped bind, so what the server made (root's) is the
cell's inside, and what the cell writes is root's on disk — which is why nothing here ever
trusts it again. Every host-side walk of it (copy, artifacts, removal) is fd-relative and
no-follow (``treewalk.py``, ``treeremove.py``); a job without a repo or upload gets an empty
one, unless it has a disk limit (a host directory cannot be bounded: it gets a tmpfs then).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO, Any

from nixcell.errors import NixcellError
from nixcell.fsio import private_dir, remove_tree
from nixcell.jobs import tarsafe
from nixcell.jobs.artifacts import tar_stream
from nixcell.jobs.contract import JobError
from nixcell.jobs.gitclone import Cloner
from nixcell.jobs.gitrefs import check_subpath, shown
from nixcell.jobs.model import Caller, Job, JobRequest, Workspace
from nixcell.jobs.treewalk import DIR_FLAGS, copy_tree
from nixcell.quiet import suppress

log = logging.getLogger(__name__)

UPLOAD_LIMIT = 256 << 20
UPLOAD_MEMBERS = 10_000
_UPLOAD_ID = re.compile(r"u-[0-9a-f]{32}")
_META = "owner.json"
_TREE = "tree"


@dataclass(frozen=True)
class Prepared:
    path: str | None  # host dir bound read-write at /workspace; None = tmpfs
    cwd: str | None  # the cell's start dir (``workspace.path`` under /workspace); None = default
    packages: tuple[str, ...] = ()  # from the workspace's flake devShell (``flake_shell``)


class Workspaces:
    """Host-side work on paths a cell controls: every walk is no-follow (THREATS.md)."""

    def __init__(self, config: object, shared: Any = None) -> None:
        self.config = config
        self.cloner = Cloner(config)
        self.shared = shared  # a cluster's store: uploads move through it (clusterfiles.py)

    @property
    def state_dir(self) -> str:
        return str(getattr(self.config, "state_dir"))  # noqa: B009 - any config object

    @property
    def limits(self) -> tarsafe.Limits:
        return tarsafe.Limits(
            max_bytes=int(getattr(self.config, "upload_limit", None) or UPLOAD_LIMIT),
            max_members=int(getattr(self.config, "upload_members", None) or UPLOAD_MEMBERS),
        )

    def _uploads(self) -> str:
        return private_dir(os.path.join(self.state_dir, "uploads"))

    # -- prepare ---------------------------------------------------------------------------

    def check(self, request: JobRequest) -> None:
        """At submit: a workspace the job could never get is a 400 now, not an error later."""
        ws = request.workspace
        _check_shape(ws)
        if ws.repo:
            self.cloner.check(ws.repo, ws.ref, ws.git_credential)

    async def prepare(self, job: Job, request: JobRequest, job_dir: str) -> Prepared:
        """Make ``job_dir``/workspace from the request (clone, upload, or nothing)."""
        ws = request.workspace
        sub = _check_shape(ws)
        if not (ws.repo or ws.upload) and _disk_limited(request, self.config):
            return Prepared(None, None)
        try:
            return await asyncio.to_thread(self._prepare, job.owner, request, job_dir, sub)
        except OSError as exc:  # the server's own trouble (disk full...): one line, no path
            raise JobError(
                f"cannot make the workspace: {exc.strerror or exc}", status=500
            ) from None

    def _prepare(
        self, owner: str, request: JobRequest, job_dir: str, sub: tuple[str, ...]
    ) -> Prepared:
        ws = request.workspace
        source: str | None = None
        if ws.repo:
            clone = self.cloner.clone(ws.repo, ws.ref, ws.git_credential, owner)
            with suppress(OSError):
                os.utime(clone.path)  # recently used: gc keeps it
            source = clone.path
        elif ws.upload:
            source = os.path.join(self._upload_here(owner, ws.upload), _TREE)
        path = os.path.join(job_dir, "workspace")
        top = _fresh_dir(job_dir, "workspace")
        try:
            if source is not None:
                src = os.open(source, DIR_FLAGS)
                try:
                    copy_tree(src, top)
                finally:
                    os.close(src)
            cwd = _subdir(top, sub, ws.path) if sub else None
        finally:
            os.close(top)
        packages: tuple[str, ...] = ()
        if ws.flake_shell:
            from nixcell.jobs.flakeshell import devshell_packages

            nixpkgs = request.nixpkgs or getattr(self.config, "nixpkgs", None)
            packages = devshell_packages(path, state_dir=self.state_dir, nixpkgs=nixpkgs)
        return Prepared(path, cwd, packages)

    # -- uploads ---------------------------------------------------------------------------

    async def store_upload(self, caller: Caller, body: AsyncIterator[bytes]) -> str:
        """Unpack a tar stream into a new upload owned by ``caller``; its id."""
        limits = self.limits
        raw_limit = limits.max_bytes + 2048 * (limits.max_members + 2) + (1 << 20)
        with tempfile.TemporaryFile(dir=self._uploads()) as spool:
            total = 0
            async for chunk in body:
                total += len(chunk)
                if total > raw_limit:
                    raise tarsafe.refuse(f"the upload is over {raw_limit} bytes", 413)
                await asyncio.to_thread(spool.write, chunk)
            spool.seek(0)
            upload_id = await asyncio.to_thread(self._unpack, caller.key, spool, limits)
            if self.shared is not None:
                await asyncio.to_thread(self._share, caller.key, upload_id, spool, total)
            return upload_id

    def _share(self, owner: str, upload_id: str, spool: IO[bytes], size: int) -> None:
        """Keep the (checked) tar stream in the cluster's store for the host that runs it."""
        from nixcell.jobs.clusterfiles import SHARED_LIMIT

        if size > SHARED_LIMIT:
            with suppress(NixcellError, OSError):
                remove_tree(os.path.join(self._uploads(), upload_id))
            raise tarsafe.refuse(f"in a cluster an upload is at most {SHARED_LIMIT} bytes", 413)
        spool.seek(0)
        self.shared.put_upload(upload_id, owner, spool.read())

    def _upload_here(self, owner: str, upload_id: str) -> str:
        """The upload's dir on this host; in a cluster, unpacked here from the shared store
        when another host received it (the same tar checks run again)."""
        try:
            return self._upload_dir(owner, upload_id)
        except JobError:
            if self.shared is None or not _UPLOAD_ID.fullmatch(upload_id):
                raise
        data = self.shared.take_upload(upload_id, owner)
        if data is None:
            raise JobError(f"no upload {upload_id}")
        import io

        self._unpack(owner, io.BytesIO(data), self.limits, upload_id=upload_id)
        return self._upload_dir(owner, upload_id)

    def _unpack(
        self,
        owner: str,
        spool: IO[bytes],
        limits: tarsafe.Limits,
        *,
        upload_id: str | None = None,
    ) -> str:
        uploads = self._uploads()
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=uploads)
        try:
            top = _fresh_dir(tmp, _TREE)
            try:
                tarsafe.unpack(spool, top, limits)
            finally:
                os.close(top)
            meta = json.dumps({"owner": owner, "created": time.time()})
            fd = os.open(os.path.join(tmp, _META), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(meta)
            upload_id = upload_id or f"u-{secrets.token_hex(16)}"
            os.chmod(tmp, 0o700)
            try:
                os.rename(tmp, os.path.join(uploads, upload_id))
            except OSError:  # another job unpacked the same shared upload first
                if not os.path.isdir(os.path.join(uploads, upload_id)):
                    raise
                remove_tree(tmp)
            return upload_id
        except BaseException:
            with suppress(NixcellError, OSError):
                remove_tree(tmp)
            raise

    def check_upload(self, caller: Caller, upload_id: str) -> None:
        """At submit: the upload exists and is the caller's (else JobError 400)."""
        try:
            self._upload_dir(caller.key, upload_id)
        except JobError:
            if self.shared is None or not _UPLOAD_ID.fullmatch(upload_id):
                raise
            if not self.shared.has_upload(upload_id, caller.key):
                raise

    def _upload_dir(self, owner: str, upload_id: object) -> str:
        if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
            raise JobError(f"workspace.upload {shown(str(upload_id), 40)} is not an upload id")
        directory = os.path.join(self._uploads(), upload_id)
        meta = _read_meta(directory)
        if meta is None or meta.get("owner") != owner:
            raise JobError(f"no upload {upload_id}")  # another's: not confirmed either
        return directory

    # -- after the job ---------------------------------------------------------------------

    def artifacts(self, job_dir: str) -> Iterator[bytes]:
        """A tar stream of ``job_dir``/workspace, read without following links."""
        return tar_stream(job_dir)

    def remove(self, job_dir: str) -> None:
        """Remove a job's dir (cell-written parts included) without following links."""
        remove_tree(job_dir)

    def gc(self, *, older_than: float) -> dict[str, int]:
        """Expired uploads and cached clones; counts removed. ``older_than`` is a unix time
        (or, below 10^9, an age in seconds)."""
        cutoff = time.time() - older_than if older_than < 1e9 else older_than
        uploads = 0
        directory = self._uploads()
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            meta = _read_meta(path) if _UPLOAD_ID.fullmatch(name) else None
            created = meta.get("created") if meta else None
            if not isinstance(created, (int, float)):
                with suppress(OSError):
                    created = os.lstat(path).st_mtime
            if isinstance(created, (int, float)) and created < cutoff:
                with suppress(NixcellError):
                    remove_tree(path)
                    uploads += meta is not None
        if self.shared is not None:  # a cluster's uploads in the database: by age too
            try:
                uploads += self.shared.expire_uploads(cutoff)
            except NixcellError as exc:
                log.warning("could not expire the shared uploads: %s", exc)
        return {"uploads": uploads, "clones": self.cloner.gc(cutoff)}


def _check_shape(ws: Workspace) -> tuple[str, ...]:
    """Field combinations and ``path``, before any work: one line each."""
    if ws.repo and ws.upload:
        raise JobError("a workspace comes from workspace.repo or workspace.upload, not both")
    if not ws.repo and (ws.ref or ws.git_credential):
        field = "ref" if ws.ref else "git_credential"
        raise JobError(f"workspace.{field} needs workspace.repo")
    if (ws.path or ws.flake_shell) and not (ws.repo or ws.upload):
        field = "path" if ws.path else "flake_shell"
        raise JobError(f"workspace.{field} needs workspace.repo or workspace.upload")
    return check_subpath(ws.path)


def _disk_limited(request: JobRequest, config: object) -> bool:
    defaults: Any = getattr(config, "defaults", None) or {}
    return request.disk is not None or (isinstance(defaults, dict) and bool(defaults.get("disk")))


def _fresh_dir(parent: str, name: str) -> int:
    """An fd of a new, empty ``parent``/``name`` (0755; a leftover is removed first)."""
    pfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(name, 0o755, dir_fd=pfd)
        except FileExistsError:
            remove_tree(os.path.join(parent, name))
            os.mkdir(name, 0o755, dir_fd=pfd)
        os.chmod(name, 0o755, dir_fd=pfd, follow_symlinks=False)
        return os.open(name, DIR_FLAGS, dir_fd=pfd)
    finally:
        os.close(pfd)


def _subdir(top: int, parts: tuple[str, ...], shown_path: str | None) -> str:
    """``/workspace/<path>`` if every part is a real directory (no symlink anywhere)."""
    fd = os.dup(top)
    try:
        for part in parts:
            try:
                sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError:
                raise JobError(
                    f"workspace.path {shown(shown_path or '')}: not a directory of the workspace "
                    "(missing, a file, or through a symlink)"
                ) from None
            os.close(fd)
            fd = sub
    finally:
        os.close(fd)
    return "/workspace/" + "/".join(parts)


def _read_meta(directory: str) -> dict[str, Any] | None:
    try:
        fd = os.open(os.path.join(directory, _META), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = json.loads(os.read(fd, 4096))
    except ValueError:
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None
