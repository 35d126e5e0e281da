"""Before a cell starts: does its command exist on its PATH, and does its ``--cwd`` exist?

bwrap would find out too, but only after setting the cell up, and it says so in its own words
("execvp …", "Can't chdir …"). The plan already knows every mount, so the cell's view of a path
can be worked out on the host: under a bind it is the host path below the bind's source, looked
up one component at a time *without following symlinks on the host* — a symlink found there (one
the cell may have planted in a bound directory) is followed the way the cell would follow it,
as a cell path, through the plan's mounts again. Under a tmpfs or ``--dir`` only the mount point
exists at start; above every mount point the directories bwrap creates exist; anything else
(``/proc``, ``/dev`` internals) is "unknown" and left for bwrap to decide.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

from nixcell.errors import CommandNotFoundError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import MountOp, Plan

DIR, FILE, MISSING, UNKNOWN = "dir", "file", "missing", "unknown"
_MAX_LINKS = 40  # like the kernel's ELOOP limit


def check(plan: Plan) -> None:
    """Raise a one-line error when the command or the working directory does not exist (or
    when no cell can run on this system at all: every executor checks here first)."""
    from nixcell.platforms import refuse_cells

    refuse_cells()
    if not plan.command or not plan.command[0]:
        raise UsageError("no command given: put the program and its arguments after `--`")
    cwd_kind = lookup(plan, plan.cwd)
    if cwd_kind == MISSING:
        raise UsageError(f"--cwd {plan.cwd} does not exist in the cell")
    if cwd_kind == FILE:
        raise UsageError(f"--cwd {plan.cwd} is not a directory in the cell")
    _check_program(plan)


def _check_program(plan: Plan) -> None:
    """The command, and the interpreter its ``#!`` line names (a script from a bound host
    directory: the closure's own scripts name store paths of the closure). Without this a
    `#!/bin/bash` script in a cell without bash fails with bwrap's "execvp …: No such file"."""
    path = program_path(plan)
    op = _covering(plan.mounts, path)
    if op is None or op.dest in plan.closure:
        return
    first = head(plan, path)
    if first is None or not first.startswith(b"#!"):
        return
    line = first[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    interpreter, _, arg = line.partition(" ")
    if not interpreter.startswith("/"):
        return
    name = plan.command[0]
    if lookup(plan, interpreter) in (MISSING, DIR):
        raise CommandNotFoundError(
            f"command '{name}' starts with #!{interpreter}, which does not exist in the cell; "
            f"add the package that provides {posixpath.basename(interpreter)} with -p"
        )
    arg = arg.strip()
    by_env = posixpath.basename(interpreter) == "env" and not arg.startswith("-")
    if by_env and arg and " " not in arg and "=" not in arg and _on_path(plan, arg) is None:
        raise CommandNotFoundError(
            f"command '{name}' starts with #!{interpreter} {arg}, and '{arg}' is not on the "
            f"cell's PATH; add the package that provides {arg} with -p"
        )


def head(plan: Plan, cell_path: str) -> bytes | None:
    """The first bytes of ``cell_path`` when it is a regular file under a bind (read by fd,
    never following a host symlink, never blocking on a FIFO); else None."""
    found: list[bytes] = []
    lookup(plan, cell_path, head_into=found)
    return found[0] if found else None


def _on_path(plan: Plan, name: str) -> str | None:
    search = plan.env.get("PATH", "/bin:/usr/bin")  # execvp's default when PATH is unset
    for directory in search.split(":"):  # an empty entry is the working directory
        where = posixpath.join(plan.cwd, directory)
        path = posixpath.normpath(posixpath.join(where, name))
        if lookup(plan, path) in (FILE, UNKNOWN):
            return path
    return None


def program_path(plan: Plan) -> str:
    """The cell path execvp would run for the command (the first match on the cell's PATH);
    a one-line error (exit 127) when there is none."""
    name = plan.command[0]
    if "/" in name:
        path = posixpath.normpath(posixpath.join(plan.cwd, name))
        if lookup(plan, path) in (MISSING, DIR):
            raise CommandNotFoundError(f"command '{name}' does not exist in the cell")
        return path
    found = _on_path(plan, name)
    if found is not None:
        return found
    search = plan.env.get("PATH", "/bin:/usr/bin")
    default = ":".join(plan.path_dirs)
    if search != default:
        raise CommandNotFoundError(
            f"command '{name}' not found on the cell's PATH ({search}); the packages' programs "
            f"are in {default}"
        )
    raise CommandNotFoundError(
        f"command '{name}' not found in the cell's packages; add the package that provides it "
        "with -p"
    )


def lookup(
    plan: Plan, cell_path: str, links: int = 0, head_into: list[bytes] | None = None
) -> str:
    """What ``cell_path`` (absolute, normalised) is in the cell at start: DIR, FILE, MISSING or
    UNKNOWN. ``head_into``: gets the first bytes of a regular file found under a bind."""
    if links > _MAX_LINKS:
        return UNKNOWN
    path = posixpath.normpath(cell_path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    if _above_a_mount(plan.mounts, path):
        return DIR  # bwrap creates every directory on the way to a mount point
    op = _covering(plan.mounts, path)
    if op is None:
        return MISSING
    rest = path[len(op.dest) :].lstrip("/") if op.dest != "/" else path.lstrip("/")
    if op.kind in ("bind", "ro-bind") and op.src:
        made = made_by_nixcell(plan, op)
        if made is not None:  # not a host directory: a tmpfs of the cell's own (or a volume's)
            return DIR if not rest else made
        return _host_lookup(plan, op, rest, links, head_into)
    if rest:
        return MISSING if op.kind in ("tmpfs", "dir") else UNKNOWN  # else: /proc, /dev
    if op.kind in ("tmpfs", "dir", "proc", "dev"):
        return DIR
    if op.kind == "data":
        return FILE
    if op.kind == "symlink" and op.src:
        target = posixpath.join(posixpath.dirname(path), op.src)
        return lookup(plan, target, links + 1, head_into)
    return UNKNOWN


def made_by_nixcell(plan: Plan, op: MountOp) -> str | None:
    """For a bind of nixcell's own making, what lies below its root at start: MISSING for the
    fresh --disk scratch areas, UNKNOWN for a volume (its files are the session's); None for a
    bind of a host path."""
    if plan.scratch is not None:
        from nixcell.planview import SCRATCH_AREAS  # (plan.py's json and dataclasses: not here)

        areas = SCRATCH_AREAS
        if any(op.dest == dest and str(op.src).endswith(f"/{name}") for name, dest, _ in areas):
            return MISSING
    if plan.host_source(op) in plan.volumes:
        return UNKNOWN
    return None


def _covering(mounts: tuple[MountOp, ...], path: str) -> MountOp | None:
    """The last mount op at or above ``path`` (later ops cover earlier ones, as in bwrap)."""
    found = None
    for op in mounts:
        if op.kind == "remount-ro":
            continue
        if op.dest == "/" or path == op.dest or path.startswith(op.dest + "/"):
            found = op
    return found


def _above_a_mount(mounts: tuple[MountOp, ...], path: str) -> bool:
    prefix = path.rstrip("/") + "/"
    return path == "/" or any(op.dest.startswith(prefix) for op in mounts)


def _host_lookup(
    plan: Plan, op: MountOp, rest: str, links: int, head_into: list[bytes] | None = None
) -> str:
    """Walk ``rest`` below the bind's host source by fd, never following a host symlink."""
    assert op.src is not None
    try:  # the source itself: as bwrap binds it
        fd = os.open(str(plan.host_source(op)), os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return UNKNOWN
    try:
        parts = [p for p in rest.split("/") if p]
        if not parts:
            return DIR if stat.S_ISDIR(os.fstat(fd).st_mode) else FILE
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return MISSING
            except OSError as exc:
                return MISSING if exc.errno == errno.ENOTDIR else UNKNOWN
            if stat.S_ISLNK(st.st_mode):  # resolve it in the cell, not on the host
                target = os.readlink(part, dir_fd=fd)
                here = posixpath.join(op.dest, *parts[:i])
                cell = target if target.startswith("/") else posixpath.join(here, target)
                cell = posixpath.join(cell, *parts[i + 1 :])
                return lookup(plan, cell, links + 1, head_into)
            last = i == len(parts) - 1
            if last:
                if head_into is not None and stat.S_ISREG(st.st_mode):
                    head_into += _read_head(fd, part)
                return DIR if stat.S_ISDIR(st.st_mode) else FILE
            if not stat.S_ISDIR(st.st_mode):
                return MISSING
            try:
                nfd = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                return UNKNOWN
            os.close(fd)
            fd = nfd
        return UNKNOWN
    finally:
        os.close(fd)


def _read_head(dir_fd: int, name: str) -> list[bytes]:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return []
    try:
        return [os.pread(fd, 256, 0)] if stat.S_ISREG(os.fstat(fd).st_mode) else []
    except OSError:
        return []
    finally:
        os.close(fd)
