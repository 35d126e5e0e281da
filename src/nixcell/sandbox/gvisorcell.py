"""One gVisor cell: its bundle, its cgroup, ``runsc run``, its stdio, and removing all of it.

``runsc run`` is started attached (its sandbox dies with it) with PDEATHSIG (it dies with
nixcell), inside the cell's cgroup (``cgroups.py``: it and everything it starts, gofer, sentry
and ptrace stubs, are limited and killed together; runsc's own cgroup code is off). The network:
the engine's lo-only namespace holding the proxy listener, given to runsc as the OCI network
namespace path with ``--network=host`` (the sentry uses that namespace's stack, which has only
lo); no policy: ``--network=none`` (gVisor's own stack, lo only). Timeout and cancel kill the
cgroup; ``close`` kills what is left, ``runsc delete --force``-s a container whose state is
still there, and removes the cgroup, the bundle and the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess

from nixcell.errors import LimitUnavailableError, NixcellError, SandboxError
from nixcell.sandbox import dockerhost, dockerspec, gvisorio, gvisormounts, gvisorspec
from nixcell.sandbox.backends import BackendExit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.backends import CellIO
    from nixcell.sandbox.cgroups import CellCgroup
    from nixcell.sandbox.dockerspec import Layout

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
SIGKILL = 9


def state_dir() -> str:
    """runsc's ``--root`` for this nixcell process: its owner tag names it (``sweep``)."""
    from nixcell.leftovers import owner_tag

    return os.path.join(dockerhost.root_dir("gvisor-state"), owner_tag())


def runsc_error(path: str, cause: bool = False) -> str | None:
    """The last error runsc logged, one line; ``cause``: with the first one too, when it differs
    (the gofer's or the sandbox's, which ``runsc run``'s last one only follows from)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            errors = log_errors(f.read())
    except OSError:
        return None
    if not errors:
        return None
    if cause and errors[0] != errors[-1]:
        return f"{errors[-1]} (first: {errors[0]})"
    return errors[-1]


def log_errors(text: str) -> list[str]:
    """The ``error``/``fatal`` messages of runsc's JSON log, one line each. Its records are not
    always one per line (the gofer's, the sandbox's and ``runsc run``'s may follow each other
    with no newline between them): the log is read as a stream of JSON values."""
    decoder = json.JSONDecoder()
    found: list[str] = []
    at = 0
    while (start := text.find("{", at)) >= 0:
        try:
            record, at = decoder.raw_decode(text, start)
        except ValueError:
            at = start + 1
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "fatal"):
            lines = str(record.get("msg", "")).strip().splitlines()
            if lines:
                found.append(lines[0])
    return found


class GvisorCell:
    def __init__(self, plan: Plan, cell_id: str, user: tuple[int, int], version: str) -> None:
        self.cell_id = cell_id
        self.plan = plan
        self.user = user
        self.version = version
        self.top = dockerhost.cell_dir(cell_id, "gvisor")
        self.bundle = os.path.join(self.top, "bundle")
        self.state = state_dir()
        self.container = f"nixcell-{cell_id}"
        self.cgroup: CellCgroup | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.copies: list[gvisorio.Copy] = []  # stdin's (if any) and the outputs'
        self.outputs: list[gvisorio.Copy] = []
        self._exit: BackendExit | None = None
        self._killed = False
        self._pids: set[int] = set()  # the sandbox's host processes when it was killed
        self._closed = False

    async def network(self) -> None:
        return None  # the engine's lo-only namespace with the proxy listener

    async def start(self, plan: Plan, io: CellIO) -> None:
        from nixcell.sandbox.cgroups import CgroupLimits, create_cell_cgroup
        from nixcell.sandbox.holder import scratch_dir

        self.plan = plan
        layout = dockerspec.layout(plan, self.user, self.top, scratch_dir(), "gvisor")
        filt, refused = gvisorspec.seccomp(tuple(plan.seccomp_profiles), self.version)
        refused = gvisorspec.refusals(layout) + refused
        if refused:  # (checked before: the network session may have added mounts)
            raise LimitUnavailableError(f"the gvisor backend cannot enforce {'; '.join(refused)}")
        netns = None
        if plan.network is not None:
            net = getattr(io.session, "net", None)
            if net is None or getattr(net, "netns_fd", None) is None:
                raise SandboxError("the gvisor backend got no network namespace for the cell")
            netns = f"/proc/{os.getpid()}/fd/{net.netns_fd}"
        body = gvisorspec.spec(plan, layout, self.user, netns, filt)
        await asyncio.to_thread(self._prepare, layout, body)
        lim = plan.limits
        rootless = os.geteuid() != 0
        if not rootless or lim.memory is not None or lim.cpus is not None:
            # root: always (the host pids backstop; kill and sweep by cgroup); an ordinary user
            # only for memory and CPU (their --pids is RLIMIT_NPROC alone)
            host_pids = None if rootless else gvisorspec.host_pids(lim.pids)
            self.cgroup = await asyncio.to_thread(
                create_cell_cgroup, self.cell_id, CgroupLimits(lim.memory, host_pids, lim.cpus)
            )
        procs = [str(p) for p in self.cgroup.procs_files()] if self.cgroup is not None else []
        argv = gvisorspec.argv(
            self.state, self.bundle, self.container, netns is not None, self._log_path(),
            rootless,
        )  # fmt: skip
        theirs = self._stdio(io)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[2],
                preexec_fn=lambda: _child(procs), start_new_session=True,
            )  # fmt: skip
        finally:
            for fd in set(theirs):
                os.close(fd)

    def _log_path(self) -> str:
        return os.path.join(self.bundle, "runsc.log")

    def _prepare(self, layout: Layout, body: dict[str, object]) -> None:
        """The host directory (``dockerhost``), the bundle and its empty root's mount points."""
        dockerhost.prepare(layout, self.user, swap=True)  # the gofer creates files as root
        os.makedirs(self.state, mode=0o700, exist_ok=True)
        os.mkdir(self.bundle, 0o700)
        root = os.path.join(self.bundle, "rootfs")
        os.mkdir(root, 0o755)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(os.path.join(self.top, gvisorspec.NO_DEVICE), flags, 0o444))
        files = set()
        for mount in body["mounts"]:  # type: ignore[attr-defined]
            if mount["type"] == "bind" and not os.path.isdir(mount["source"]):
                files.add(mount["destination"])
        staged = {f"{self.top}/stage/{index}": source for index, source, _ in layout.stage}
        gvisormounts.make(gvisorspec.nested_points(body, files), staged)
        for path, is_dir in gvisorspec.mount_points(body, files):
            target = root + path
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            if is_dir:
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif not os.path.exists(target):
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        with open(os.open(os.path.join(self.bundle, "config.json"), flags, 0o600), "w") as f:
            json.dump(body, f)

    def _stdio(self, io: CellIO) -> list[int]:
        """runsc's fds 0-2 (ours to close once it has them): pipes, with copying threads."""
        out: list[int] = []
        for index, fd in enumerate((io.stdin, io.stdout, io.stderr)):
            if fd is None and index < 2:
                out.append(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
                continue
            if fd is not None and index < 2 and gvisorio.is_pipe(fd):
                out.append(os.dup(fd))
                continue
            r, w = os.pipe2(os.O_CLOEXEC)
            if index == 0:
                self.copies.append(gvisorio.Copy(os.dup(fd), w, close_dst=True))  # type: ignore[arg-type]
                out.append(r)
                continue
            dst = os.dup(fd) if fd is not None else os.open(os.devnull, os.O_WRONLY)
            filt = gvisorio.StderrFilter() if index == 2 else None
            reason = (lambda: runsc_error(self._log_path())) if index == 2 else None
            copy = gvisorio.Copy(r, dst, True, filt, reason)
            self.copies.append(copy)
            self.outputs.append(copy)
            out.append(w)
        return out

    async def wait(self) -> BackendExit:
        if self._exit is not None:
            return self._exit
        if self.proc is None:
            raise SandboxError("the gvisor sandbox was never started")
        code = await self.proc.wait()
        for copy in self.outputs:  # all output delivered before the exit is reported
            await asyncio.to_thread(copy.done.wait, 10)
        oom = self.cgroup is not None and self.cgroup.oom_kills() > 0
        if oom or self._killed:
            self._exit = BackendExit(137, oom=oom)
            return self._exit
        if code < 0:
            self._exit = BackendExit(128 - code)
            return self._exit
        error = runsc_error(self._log_path(), cause=True) if code == 128 else None
        if error is not None:
            raise SandboxError(f"gVisor could not run the cell: {error}")
        self._exit = BackendExit(code & 0xFF)
        return self._exit

    async def kill(self) -> None:
        self._killed = True
        if self.cgroup is not None:
            self._pids.update(self.cgroup.pids())  # reaped after (``_reap``)
            await asyncio.to_thread(self.cgroup.kill_all)
        elif self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc is not None and self.proc.returncode is None:
            await self.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.proc.wait(), 10)
        await asyncio.to_thread(self._remove_all)

    def _remove_all(self) -> None:
        name = f"{self.container}_sandbox:{self.container}.state"
        if os.path.exists(os.path.join(self.state, name)):  # runsc run did not delete it
            self._reap(os.path.join(self.state, name))
            delete(self.state, self.container)
        if self.cgroup is not None:
            try:
                self.cgroup.remove()
            except NixcellError as exc:
                log.warning("%s (nixcell gc sweeps it)", exc)
        for copy in self.outputs:
            copy.done.wait(2)
        try:
            dockerhost.remove(self.top)
        except OSError as exc:
            log.warning("cannot remove %s: %s (nixcell gc sweeps it)", self.top, exc)
        with contextlib.suppress(OSError):
            os.rmdir(self.state)  # empty unless another cell of this process runs

    def _reap(self, state_file: str) -> None:
        """A killed ``runsc run``'s processes (sandbox, gofer, runsc's own re-executions) are
        orphans: when nixcell is their subreaper (the CLI, the servers) they stay zombies of
        ours, and ``runsc delete`` waited 5 s for the sandbox to "stop", then gave up. Once the
        cgroup is empty, the processes it held and the two runsc's state names are reaped, each
        only if it is an exited child of ours (``reap_zombie``)."""
        from nixcell.sandbox.reap import reap_zombie

        if self.cgroup is not None and not self.cgroup.wait_empty(2.0):
            return  # still running: runsc delete kills it
        pids = set(self._pids)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            with open(state_file, "rb") as f:  # runsc's own, in nixcell's private state dir
                record = json.load(f)
            pids.update({record.get("goferPid"), (record.get("sandbox") or {}).get("pid")})
        for pid in pids:
            if isinstance(pid, int) and pid > 0:
                reap_zombie(pid)


def delete(state: str, container: str) -> None:
    """``runsc delete --force``: the sandbox killed, its state removed."""
    argv = [*gvisorspec.runsc_prefix(os.geteuid() != 0), "--root", state]
    argv += ["delete", "--force", container]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


def _child(procs: list[str]) -> None:
    """In runsc's process before exec: into the cell's cgroup; killed when nixcell dies."""
    import ctypes

    for path in procs:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, SIGKILL)
