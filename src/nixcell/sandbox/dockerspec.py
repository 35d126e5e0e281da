"""A Plan's mounts, in order, as a Docker container's: pure (no daemon, no I/O), like the plan.

Each op kind, and what differs from bwrap:
- ro-bind / bind: bind mounts (``Mounts``). By fd (an ordinary user's workspace) is refused:
  dockerd and runc resolve the source path themselves (a ``/proc/PID/fd/N`` source was tried:
  runc's mount fails with EINVAL, the fd's mount belongs to another mount namespace). A
  root-run cell's staged binds become idmapped mounts nixcell attaches in a private host
  directory (``dockerhost.py``), named by that directory, which no cell can reach.
- tmpfs: ``Tmpfs`` with the op's mode and size, owned by the cell's uid, ``exec`` (Docker's
  default is noexec; bwrap's tmpfs allow exec). With ``--disk``: one host tmpfs of that size
  holds every writable area (``dockerhost.py``), each area bound in.
- data: a file nixcell writes in the private host directory, bound read-only (/etc/passwd and
  /etc/group name the container's uid for the cell user).
- symlink: the links of one directory in a host directory bound read-only at that directory
  (``/bin``, ``/usr/bin``): resolved inside the container, as under bwrap.
- dir: an empty root-owned tmpfs (the cell cannot write it; mounts beneath it can be made).
- proc: Docker's own /proc; the plan's covers are ``ReadonlyPaths`` and ``MaskedPaths`` (runc
  masks a file with /dev/null and a directory with an empty read-only tmpfs, as the plan does).
- dev: Docker's own /dev (null zero full random urandom tty, pts, mqueue, fd links): root-owned
  0755, so the cell cannot write it, as bwrap's read-only /dev.
- remount-ro: of ``/``: ``ReadonlyRootfs``; of a tmpfs or bind: that mount read-only.
Docker also mounts sysfs (masked here: the cell sees an empty /sys) and its own /etc/resolv.conf
(replaced by an empty file: names not in /etc/hosts go to 127.0.0.1:53, as under bwrap).
Docker mounts parents before children; a plan that mounts a parent after a child (which would
hide it under bwrap), or one path twice, is refused rather than reordered.
Docker's own places (``reserved``, docker only: gVisor's root is nixcell's): a mount at
``/sbin/docker-init`` or over ``/sbin`` replaces or hides Docker's init (runc would run the
user's file as PID 1, or fail), and one beneath ``/sys`` fails in runc (its sysfs is masked):
refused. ``/pause`` and ``/.dockerenv`` are only files of the image: a mount there is the plan's.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field

from nixcell.planview import SCRATCH_AREAS, STAGE_DIR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import MountOp, Plan

# Docker's own (oci/defaults.go): kept, the plan's added.
DOCKER_MASKED = (
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
)  # fmt: skip
DOCKER_READONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
RESOLV_CONF = "/etc/resolv.conf"
RESOLVERS = {"docker": "dockerd", "gvisor": "runsc"}  # who resolves a bind's source path


@dataclass
class Layout:
    """What the container gets, and what nixcell must make on the host for it (under ``top``:
    ``files/N`` data files, ``links/N`` symlink directories, ``stage/N`` idmapped binds,
    ``scratch`` the --disk tmpfs)."""

    top: str
    mounts: list[dict[str, object]] = field(default_factory=list)
    tmpfs: dict[str, str] = field(default_factory=dict)
    masked: list[str] = field(default_factory=lambda: [*DOCKER_MASKED, "/sys"])
    readonly: list[str] = field(default_factory=lambda: list(DOCKER_READONLY))
    files: dict[str, bytes] = field(default_factory=dict)  # name under files/ -> contents
    links: dict[str, dict[str, str]] = field(default_factory=dict)  # links/N -> {name: target}
    stage: list[tuple[int, str, bool]] = field(default_factory=list)  # (index, source, ro)
    scratch: int | None = None  # --disk bytes of the host tmpfs at scratch/
    readonly_root: bool = False
    refusals: list[str] = field(default_factory=list)


DOCKER_INIT = "/sbin/docker-init"


def not_utf8(plan: Plan, why: str = "the container's JSON spec would change it") -> str | None:
    """The first argument, environment entry, directory or mount path that is not UTF-8
    (bytes Python carries as surrogate escapes): the daemon's JSON, and runsc's OCI spec,
    carry only UTF-8, and Go decodes such a string to U+FFFD: the cell would run another
    command than asked. One line, or None."""
    items = [("an argument", a) for a in plan.command]
    items += [("an environment entry", f"{k}={v}") for k, v in plan.env.items()]
    items += [("the working directory", plan.cwd), ("the hostname", plan.hostname)]
    for op in plan.mounts:
        items += [("a mount path", op.dest), ("a mount source", str(op.src or ""))]
    for what, text in items:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            shown = ascii(text)[1:-1][:60]
            return f"{what} that is not UTF-8 ({shown}): {why}"
    return None


def reserved(plan: Plan) -> list[str]:
    """The plan's mounts at places Docker keeps for itself, one line each."""
    refused = []
    for op in plan.mounts:
        dest = posixpath.normpath(op.dest)
        if dest == "/" or op.kind == "remount-ro":
            continue
        if dest == DOCKER_INIT or _under(DOCKER_INIT, dest) or _under(dest, DOCKER_INIT):
            refused.append(f"a mount at {dest} (Docker's init, PID 1, is {DOCKER_INIT})")
        elif _under(dest, "/sys") or (dest == "/sys" and op.kind not in ("tmpfs", "dir")):
            refused.append(f"a mount at {dest} (Docker's /sys, masked: only an empty /sys)")
    return refused


def _under(path: str, parent: str) -> bool:
    return parent == "/" or path.startswith(parent.rstrip("/") + "/")


def _cell_files(op: MountOp, user: tuple[int, int]) -> bytes:
    text = op.data or ""
    from nixcell.plan import CELL_GID, CELL_UID, CELL_USER

    uid, gid = user
    if op.dest == "/etc/passwd":
        text = text.replace(
            f"\n{CELL_USER}:x:{CELL_UID}:{CELL_GID}:", f"\n{CELL_USER}:x:{uid}:{gid}:"
        )
    elif op.dest == "/etc/group":
        text = text.replace(f"\n{CELL_USER}:x:{CELL_GID}:", f"\n{CELL_USER}:x:{gid}:")
    return text.encode()


def layout(
    plan: Plan, user: tuple[int, int], top: str, scratch_dir: str | None, backend: str = "docker"
) -> Layout:
    """The container's side of ``plan`` for a cell running as host ``user`` (uid, gid);
    ``backend``: the one whose refusals these are (``docker``, ``gvisor``)."""
    out = Layout(top)
    bad = not_utf8(plan)
    if bad is not None:
        out.refusals.append(bad)
    uid, gid = user
    binds: dict[str, dict[str, object]] = {}
    tmpfs: dict[str, list[str]] = {}
    masked_tmpfs: set[str] = set()
    seen: list[str] = []
    link_dirs: dict[str, str] = {}
    ops = list(plan.mounts)
    if not any(op.dest == RESOLV_CONF for op in ops):
        from nixcell.plan import MountOp

        ops.insert(len(ops) - 1, MountOp("ro-bind", RESOLV_CONF, src="/dev/null"))

    def place(dest: str) -> bool:
        """Record a new mount at ``dest``; False (refused) if Docker would order it otherwise."""
        if dest in seen:
            out.refusals.append(f"two mounts at {dest}")
            return False
        hidden = [d for d in seen if _under(d, dest)]
        if hidden:
            out.refusals.append(f"a mount at {dest} after one beneath it ({hidden[0]})")
            return False
        seen.append(dest)
        return True

    for op in ops:
        dest = posixpath.normpath(op.dest)
        if op.kind == "remount-ro":
            if dest == "/":
                out.readonly_root = True
            elif dest in tmpfs:
                tmpfs[dest].append("ro")
            elif dest in binds:
                binds[dest]["ReadOnly"] = True
            elif dest not in masked_tmpfs and dest != "/dev":
                out.refusals.append(f"a read-only remount of {dest}")
            continue
        if dest == "/proc" or dest.startswith("/proc/"):
            if op.kind == "proc" and dest == "/proc":
                continue
            if op.kind == "ro-bind" and op.src == dest:
                out.readonly.append(dest)
            elif op.kind == "ro-bind" and op.src == "/dev/null":
                out.masked.append(dest)
            elif op.kind == "tmpfs":
                out.masked.append(dest)
                masked_tmpfs.add(dest)
            else:
                out.refusals.append(f"a {op.kind} mount at {dest}")
            continue
        if op.kind == "dev":
            if dest != "/dev":
                out.refusals.append(f"a device directory at {dest}")
            continue
        if op.kind == "proc":
            out.refusals.append(f"a proc mount at {dest}")
            continue
        if op.kind == "symlink":
            parent, name = posixpath.split(dest)
            if parent == "/":
                out.refusals.append(f"a symlink at {dest} (in /)")
                continue
            key = link_dirs.get(parent)
            if key is None:
                if not place(parent):
                    continue
                key = link_dirs[parent] = f"links/{len(link_dirs)}"
                out.links[key] = {}
                binds[parent] = _bind(f"{top}/{key}", parent, True)
            out.links[key][name] = str(op.src)
            continue
        if any(_under(dest, p) for p in link_dirs):
            out.refusals.append(f"a mount at {dest} beside the symlinks there")
            continue
        if not place(dest):
            continue
        if op.kind == "tmpfs":
            opts = [f"mode={op.perms or '0755'}", f"uid={uid}", f"gid={gid}", "exec"]
            if op.size is not None:
                opts.append(f"size={op.size}")
            tmpfs[dest] = opts
        elif op.kind == "dir":
            tmpfs[dest] = [f"mode={op.perms or '0755'}", "size=4096", "nr_inodes=64"]
        elif op.kind == "data":
            name = f"files/{len(out.files)}"
            out.files[name] = _cell_files(op, user)
            binds[dest] = _bind(f"{top}/{name}", dest, True)
        elif op.kind in ("ro-bind", "bind"):
            source = _source(plan, op, top, scratch_dir, out, backend)
            if source is not None:
                binds[dest] = _bind(source, dest, op.kind == "ro-bind")
        else:
            out.refusals.append(f"a mount op of kind {op.kind}")
    out.mounts = list(binds.values())
    out.tmpfs = {dest: ",".join(opts) for dest, opts in tmpfs.items()}
    return out


def _bind(source: str, target: str, readonly: bool) -> dict[str, object]:
    return {"Type": "bind", "Source": source, "Target": target, "ReadOnly": readonly}


def _source(
    plan: Plan, op: MountOp, top: str, scratch_dir: str | None, out: Layout, backend: str
) -> str | None:
    src = str(op.src)
    if op.by_fd:
        resolver = RESOLVERS.get(backend, backend)
        out.refusals.append(
            f"a bind of {src} made by fd ({resolver} would resolve the path itself, after the "
            f"checks); run nixcell as root for binds under {backend}"
        )
        return None
    if src.startswith(STAGE_DIR + "/"):
        index = int(src[len(STAGE_DIR) + 1 :])
        stage = next((s for s in plan.stage if s.index == index), None)
        if stage is None:
            out.refusals.append(f"a bind from {src} (no such stage entry)")
            return None
        out.stage.append((index, stage.source, stage.readonly))
        return f"{top}/stage/{index}"
    if plan.scratch is not None and scratch_dir is not None:
        parent, name = posixpath.split(src)
        if parent == scratch_dir and name in {a[0] for a in SCRATCH_AREAS}:
            out.scratch = plan.scratch
            return f"{top}/scratch/{name}"
    if src in plan.volumes:
        out.refusals.append(f"a bind of the session volume {src}")
        return None
    return src
