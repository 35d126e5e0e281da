"""The bubblewrap executor: turns a Plan into a running cell and guarantees its teardown.

Every option reaches bwrap through ``--args FD`` (a memfd), generated files through
``--ro-bind-data FD`` and the seccomp program through ``--seccomp FD``: nothing lands on disk and no
environment value shows up in the host's ``ps``. ``--info-fd`` tells us the host pid of the cell's
pid-1; killing it makes the kernel kill every process of the pid namespace, which is how a timeout
or Ctrl-C ends the whole cell. With limits, a tiny launcher joins the cell's cgroups before it
becomes bwrap, so no process of the cell ever runs outside them and the cell's cgroup namespace is
rooted at its own cgroup. A root-run cell starts as its own unprivileged uid (``identity.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field

from nixcell.errors import CellFailedError, SandboxError
from nixcell.sandbox.bwrapio import (
    bwrap_path,
    end_watch,
    exit_code_of,
    memfd,
    open_nofollow,
    parse_info,
    switched_to,
    which,
)
from nixcell.sandbox.nonet import NetProbe, block_pipe

__all__ = ["CellProcess", "bwrap_path", "exit_code_of", "finish_start", "parse_info", "spawn"]

TYPE_CHECKING = False  # not `import typing`: it costs CLI start-up time

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO

    _Stream = int | IO[bytes] | None

    from nixcell.plan import Plan
    from nixcell.sandbox.cgroups import CellCgroup


@dataclass
class CellProcess:
    """A started cell: the bwrap process, the cell's pid-1, and what must be cleaned up."""

    proc: subprocess.Popen[bytes]
    cell_id: str
    cgroup: CellCgroup | None = None
    child_pid: int | None = None
    _fds: list[int] = field(default_factory=list)
    probe: NetProbe | None = None  # the cell's network counters (sandbox/nonet.py)
    lent: list[tuple[int, int]] = field(default_factory=list)  # stdioowner.py

    def kill(self) -> None:
        """Kill every process of the cell: pid-1 of its namespace, then bwrap, then the cgroup."""
        if self.proc.poll() is None:
            if self.child_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child_pid, signal.SIGKILL)
                # bwrap reaps its child and exits by itself; killing it first would orphan the
                # child's zombie to the host's init, which may never reap it.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=2)
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.cgroup is not None:
            self.cgroup.kill_all()

    def reap(self) -> None:
        """After bwrap has exited: reap its pid-1 if it was orphaned to us (see ``reap``)."""
        if self.proc.returncode is not None:
            from nixcell.sandbox.reap import reap

            reap(self.child_pid)

    def close_fds(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()

    def close_probe(self) -> None:
        """After the cell: its network counters closed, its stdio pipes' bits taken back."""
        end_watch(self)


def prepare_fds(plan: Plan, seccomp_program: bytes) -> tuple[int, list[int]]:
    """Create the memfds bwrap reads; returns (args fd, all fds to pass)."""
    fds: dict[str, int] = {}
    for op in plan.mounts:
        if op.kind == "data":
            fds[f"data:{op.dest}"] = memfd("nixcell-data", (op.data or "").encode())
    try:
        for name, src in plan.paths():
            fds[name] = open_nofollow(src)
        fds["seccomp"] = memfd("nixcell-seccomp", seccomp_program)
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds, list(fds.values())  # type: ignore[return-value]


# Joins the cell's cgroups (the writer moves itself), then becomes the rest of its argv: bwrap
# then starts inside them, so its cgroup namespace is rooted at the cell's own cgroup and no
# process of the cell ever runs outside its limits. A failed join ends here (fail closed).
_JOIN = 'for f do [ "$f" = -- ] && break; echo 0 >"$f" || exit 125; shift; done; shift; exec "$@"'


def _shell() -> str:
    found = which("sh") or (os.path.exists("/bin/sh") and "/bin/sh")
    if not found:
        raise SandboxError("no /bin/sh on this host: nixcell needs one to start limited cells")
    return found


def spawn(
    plan: Plan,
    *,
    cell_id: str,
    seccomp_program: bytes,
    cgroup: CellCgroup | None = None,
    stdin: _Stream = None,
    stdout: _Stream = None,
    stderr: _Stream = None,
    launcher: list[str] | None = None,
    extra_fds: tuple[int, ...] | list[int] = (),
    user: tuple[int, int] | None = None,
    ctty_path: str | None = None,
) -> CellProcess:
    """Start bwrap for the plan. The caller must call ``finish_start`` (sync or async).

    ``launcher`` (nsenter into the cell's namespaces, switching to its uid) prefixes bwrap's
    argv; ``user`` is the (uid, gid) to start as when there is no launcher to switch. A plan with
    a network and no launcher is refused, since bwrap would share the host's network; a
    subordinate-identity plan with neither is refused, since the cell would run as root.
    ``ctty_path``: the stdio is the cell's own pty; the command (at this cell path) starts
    through ``ctty.py``'s helper, which makes it the controlling terminal of its session.
    """
    if plan.network is not None and not launcher:
        raise SandboxError("internal: a cell with a network needs its namespace launcher")
    if "net" not in plan.namespaces and plan.network is None and not plan.host_network:
        raise SandboxError("internal: a cell without a network must unshare the network")
    if plan.host_network and ("net" in plan.namespaces or plan.network is not None):
        raise SandboxError("internal: a host-network cell has no network namespace of its own")
    switches = bool(launcher) and "--setuid" in launcher  # type: ignore[operator]
    if plan.identity == "subordinate" and user is None and not switches:
        raise SandboxError("internal: a root-run cell needs its own uid")
    if plan.tty == "always" and ctty_path is None:  # asked for, not set up: refused, not ignored
        raise SandboxError(
            "a pseudo-terminal (tty = always) needs one set up: a blocking run or a terminal"
        )
    staged = plan.stage or plan.scratch is not None
    if staged and not (launcher and any(a.startswith("--mount=") for a in launcher)):
        raise SandboxError("internal: a cell with staged mounts needs its mount namespace")
    named, fds = prepare_fds(plan, seccomp_program)  # type: ignore[misc]
    info_r, info_w = os.pipe2(os.O_CLOEXEC)
    # the command waits until ``release`` has opened the cell's network counters (nonet.py)
    block_r, block_w = block_pipe()
    extra: list[str] = ["--info-fd", str(info_w), "--block-fd", str(block_r)]
    pass_fds = [*fds, info_w, block_r, *extra_fds]
    # bwrap reads options (not the command) from --args: the command goes on its real argv.
    args = [*extra, *plan.bwrap_args(named)]
    cut = len(args) - len(plan.command) - 1  # not the first "--": an env value may be one
    args, command = args[:cut], args[cut:]
    if ctty_path is not None:
        helper = _with_ctty(args, command, ctty_path)
        fds.append(helper)
        pass_fds.append(helper)
    args_fd = memfd("nixcell-args", b"\0".join(os.fsencode(a) for a in args) + b"\0")
    pass_fds.append(args_fd)
    argv = [*(launcher or ()), bwrap_path(), "--args", str(args_fd), *command]
    if user is not None:
        # nsenter drops to the cell's uid (after the cgroup join, which needs root), not
        # Popen(user=): that forbids vfork, and a full fork costs a large process (the job
        # daemon) 10-30 ms per cell, spent holding the GIL on its event loop.
        argv = [*_drop(user), *argv]
    if cgroup is not None:
        procs = [str(p) for p in cgroup.procs_files()]
        argv = [_shell(), "-c", _JOIN, "nixcell-join", *procs, "--", *argv]
    try:
        proc = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=pass_fds,
            env={},
            cwd="/",
            process_group=0,
        )
    except OSError as exc:
        for fd in (*fds, info_r, info_w, block_r, block_w, args_fd):
            os.close(fd)
        raise SandboxError(f"cannot start bubblewrap: {exc}") from None
    for fd in (*fds, info_w, block_r, args_fd):
        os.close(fd)
    cell = CellProcess(proc, cell_id, cgroup)
    cell._fds = [info_r, block_w]  # closing block_w lets the command run
    owner = user or switched_to(launcher)
    if owner is not None and owner[0] != os.geteuid():  # a root-run cell: lend it its pipes
        from nixcell.sandbox.stdioowner import lend

        streams = (proc.stdin, proc.stdout, proc.stderr)
        fds = [_fd_of(given, made, i) for i, (given, made) in
               enumerate(zip((stdin, stdout, stderr), streams, strict=True))]  # fmt: skip
        cell.lent = lend(fds)
    return cell


def _fd_of(given: _Stream, made: IO[bytes] | None, index: int) -> int | None:
    """The host fd the cell has as stdio ``index``: Popen's pipe, the fd or file given, or
    nixcell's own (inherited); None for /dev/null (anyone may open it)."""
    if made is not None:
        return made.fileno()
    if given is None:
        return index
    if isinstance(given, int):
        return None if given < 0 else given  # subprocess.DEVNULL is -3
    return given.fileno()


def _with_ctty(args: list[str], command: list[str], path: str) -> int:
    """Put the terminal helper in the cell's /dev (bwrap's own tmpfs, before it turns read-only)
    and start the command through it. Returns the helper's memfd."""
    from nixcell.sandbox import ctty

    program = ctty.program()
    dev = next((i for i in range(len(args) - 1) if args[i : i + 2] == ["--dev", "/dev"]), None)
    if program is None or dev is None:
        raise SandboxError("internal: this cell cannot have a pseudo-terminal")
    fd = memfd("nixcell-tty", program)
    args[dev + 2 : dev + 2] = ["--perms", "0555", "--ro-bind-data", str(fd), ctty.CELL_PATH]
    command[1:] = ctty.command(path, tuple(command[1:]))
    return fd


def _drop(user: tuple[int, int]) -> list[str]:
    """``nsenter`` with no namespace: switch to the cell's uid/gid, drop supplementary groups."""
    from nixcell.sandbox.holder import nsenter_path

    return [nsenter_path(), "--setuid", str(user[0]), "--setgid", str(user[1]), "--"]


def release(cell: CellProcess, info: bytes, before: Callable[[int], None] | None = None) -> None:
    """Record pid-1 (the cell already runs inside its cgroups: the launcher joined them), open
    its network counters, then let its command run (closing the block fd). ``before(pid-1)``
    runs while the command still waits (``--debug`` attaches strace); if it fails, the cell is
    killed before its command ever ran."""
    cell.child_pid = parse_info(info)
    try:
        if cell.child_pid is None:
            raise CellFailedError("bubblewrap failed before the cell started")
        cell.probe = NetProbe.open(cell.child_pid)
        if before is not None:
            before(cell.child_pid)
    except BaseException:
        cell.kill()
        raise
    finally:
        cell.close_fds()


def finish_start(cell: CellProcess, before: Callable[[int], None] | None = None) -> None:
    """Blocking variant: read bwrap's info (its pid-1), then release the cell."""
    chunks = []
    while chunk := os.read(cell._fds[0], 4096):
        chunks.append(chunk)
    release(cell, b"".join(chunks), before)
