"""A plan as a transient systemd service: the unit's properties and the ``systemd-run`` argv.

Pure: no I/O. ``sandbox/systemd.py`` runs what this renders. Each part of the plan becomes the
property that enforces it (nix-jail's hardening set: ProtectSystem=strict, PrivateDevices,
ProtectKernel*, RestrictNamespaces, SystemCallFilter, NoNewPrivileges, an empty
CapabilityBoundingSet, cgroup limits), or a *refusal*: the backend then refuses the run (fail
closed). Where systemd can only be stricter than the bwrap plan, the unit is stricter and says
so in ``notes``. The target is systemd 252 (Debian 12): nothing newer is used.

Placeholders in a plan-only render (``--dry-run``): ``<uid>``/``<gid>`` for the cell's own host
uid (allocated when it runs), ``<rundir>`` for the host directory holding the generated files,
``<netns>`` for the lo-only namespace holding the proxy's listener.
"""

from __future__ import annotations

import errno
import math
import re

from nixcell.sandbox import seccomp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import MountOp, Plan

# A path systemd-run can take as a property value without quoting (store paths, usual homes).
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@=,/-]*")
# The bwrap plan hides parts of /proc with binds and tmpfs; ProcSubset=pid hides all of them
# (every file not about processes), so those ops need no mount of their own.
_PROC_COVERS = "/proc/"
# Mount ops a property makes: /proc (ProcSubset=pid), /dev (PrivateDevices=yes), a read-only
# root (ProtectSystem=strict and a read-only tmpfs) and /dev (root-owned: the cell is not root)
_GIVEN = {("proc", "/proc"), ("dev", "/dev"), ("remount-ro", "/"), ("remount-ro", "/dev")}
# Conditional seccomp rules (argument tests SystemCallFilter cannot make) and what enforces each
# here: the property named, exactly or more strictly.
_COVERED = {
    "clone": "RestrictNamespaces=yes",  # CLONE_NEW* flags
    "personality": "LockPersonality=yes",  # stricter: only the default persona, also for gdb
    "socket": "RestrictAddressFamilies",  # families; AF_NETLINK not at all (stricter)
    "socketpair": "RestrictAddressFamilies",
    "chmod": "RestrictSUIDSGID=yes",
    "fchmod": "RestrictSUIDSGID=yes",
    "fchmodat": "RestrictSUIDSGID=yes",
    "open": "RestrictSUIDSGID=yes",
    "openat": "RestrictSUIDSGID=yes",
    "creat": "RestrictSUIDSGID=yes",
    "mknod": "RestrictSUIDSGID=yes",
    "mknodat": "RestrictSUIDSGID=yes",
    # TIOCSTI/TIOCLINUX/TIOCSETD need a terminal: the unit's stdio is never one (the cell
    # refuses a terminal as stdio) and /dev/ptmx and /dev/pts are inaccessible
    "ioctl": "InaccessiblePaths=/dev/ptmx /dev/pts",
}
# Conditional rules systemd 252 cannot test, denied outright with the errno that makes libc
# fall back (glibc emulates fchmodat2's flags with fchmodat on ENOSYS).
_DENY_WHOLE = {"fchmodat2": errno.ENOSYS}
NETWORK_FAMILIES = "AF_UNIX AF_INET AF_INET6"
NOT_ABSOLUTE = "a command not given by absolute path"


def unit_name(cell_id: str) -> str:
    return f"nixcell-{cell_id}.service"


def syscall_filter(profiles: tuple[str, ...]) -> tuple[str, list[str]]:
    """(SystemCallFilter= value, refusals) for the plan's seccomp profiles."""
    denied: dict[str, int] = {}
    refused: list[str] = []
    for rule in seccomp.rules(profiles):
        if rule.when == ((),):
            denied[rule.syscall] = rule.errno
        elif rule.syscall in _DENY_WHOLE:
            denied[rule.syscall] = _DENY_WHOLE[rule.syscall]
        elif rule.syscall not in _COVERED:
            refused.append(f"the seccomp rule {rule.describe()}")
    words = [
        name if code == errno.EPERM else f"{name}:{errno.errorcode[code]}"
        for name, code in sorted(denied.items())
    ]
    return "~" + " ".join(words), refused


def _safe(path: str | None) -> bool:
    return path is not None and _SAFE_PATH.fullmatch(path) is not None and "//" not in path


def _mount_props(
    plan: Plan, uid: str, gid: str, rundir: str
) -> tuple[list[tuple[str, str]], list[str]]:
    """The plan's mounts in order, as unit properties; what cannot be mounted is refused."""
    props: list[tuple[str, str]] = [("TemporaryFileSystem", "/:ro")]
    refused: list[str] = []
    links = {op.dest: op.src for op in plan.mounts if op.kind == "ro-bind"}
    for index, op in enumerate(plan.mounts):
        if (op.kind, op.dest) in _GIVEN or op.dest.startswith(_PROC_COVERS):
            continue  # given by a property, or hidden by ProcSubset=pid
        if not _safe(op.dest):
            refused.append(f"a mount at a path systemd cannot quote ({op.dest!r})")
            continue
        if op.kind in ("bind", "ro-bind"):
            refused += _bind_refusals(plan, op)
            key = "BindPaths" if op.kind == "bind" else "BindReadOnlyPaths"
            props.append((key, f"{op.src}:{op.dest}"))
        elif op.kind == "tmpfs":
            opts = [f"mode={op.perms or '0755'}"]
            if op.size is not None:
                opts.append(f"size={op.size}")
            if op.dest not in ("/tmp", "/dev/shm"):
                opts += [
                    f"uid={uid}",
                    f"gid={gid}",
                ]  # bwrap's are the cell's: its home, its /workspace
            props.append(("TemporaryFileSystem", f"{op.dest}:{','.join(opts)}"))
        elif op.kind == "dir":
            props.append(("TemporaryFileSystem", f"{op.dest}:ro,mode={op.perms or '0755'}"))
        elif op.kind == "remount-ro":
            props.append(("ReadOnlyPaths", op.dest))
        elif op.kind == "data":
            props.append(("BindReadOnlyPaths", f"{rundir}/data/{index}:{op.dest}"))
        elif op.kind == "symlink":
            target = _link_source(op, links)
            if target is None:
                refused.append(f"a symbolic link it cannot make ({op.dest} -> {op.src})")
            else:  # the link's target itself, bound at the link's place
                props.append(("BindReadOnlyPaths", f"{target}:{op.dest}"))
        else:
            refused.append(f"a mount of kind {op.kind!r}")
    return props, refused


def _bind_refusals(plan: Plan, op: MountOp) -> list[str]:
    if op.by_fd:  # systemd resolves the path itself, after nixcell's checks (TOCTOU)
        return [f"a bind made by fd ({op.dest})"]
    if plan.stage and plan.host_source(op) != op.src:
        return [f"an idmapped bind of a host directory ({op.dest}: --workdir or -v as root)"]
    if op.src in plan.volumes:
        return [f"a session volume ({op.dest})"]
    if not _safe(op.src):
        return [f"a bind of a path systemd cannot quote ({op.src!r})"]
    return []


def _link_source(op: MountOp, binds: dict[str, str | None]) -> str | None:
    """The host path of a link's target, when it lies in a read-only bind of the plan."""
    target = op.src or ""
    for dest, src in binds.items():
        if src and (target == dest or target.startswith(dest + "/")):
            found = src + target[len(dest) :]
            return found if _safe(found) else None
    return None


def _limit_props(plan: Plan) -> list[tuple[str, str]]:
    lim = plan.limits
    props: list[tuple[str, str]] = []
    if lim.memory is not None:
        props += [("MemoryMax", str(lim.memory)), ("MemorySwapMax", "0")]
    if lim.pids is not None:
        props.append(("TasksMax", str(lim.pids)))
    if lim.cpus is not None:
        props.append(("CPUQuota", f"{math.ceil(lim.cpus * 100)}%"))
    if lim.timeout is not None:
        # a backstop for a killed nixcell: the engine's own timer kills the unit at the limit
        props.append(("RuntimeMaxSec", str(math.ceil(lim.timeout) + 5)))
    return props


def _hardening(plan: Plan) -> list[tuple[str, str]]:
    profiles = set(plan.seccomp_profiles)
    props = [
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "tmpfs"),  # binds below /home stay possible (the cell's home is one)
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateIPC", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectProc", "invisible"),  # the cell's own uid: it sees only its own processes
        ("ProcSubset", "pid"),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RemoveIPC", "yes"),
        ("KeyringMode", "private"),
        ("UMask", "0022"),
        ("SystemCallArchitectures", "native"),
        ("SystemCallErrorNumber", "EPERM"),
        ("InaccessiblePaths", "/dev/ptmx /dev/pts"),
        ("OOMPolicy", "kill"),
        ("CoredumpFilter", "0"),
        ("LimitCORE", "0"),
    ]
    if "nested-sandbox" not in profiles:
        props.append(("RestrictNamespaces", "yes"))
    if "jit-runtime" not in profiles:
        props.append(("MemoryDenyWriteExecute", "yes"))
    return props


def _network_props(plan: Plan, netns: str) -> tuple[list[tuple[str, str]], list[str]]:
    if plan.host_network:  # no namespace of its own: exactly the host's
        return [("RestrictAddressFamilies", NETWORK_FAMILIES)], []
    if plan.network is None:  # lo only, and no IP sockets at all; AF_UNIX stays (socketpair)
        return [("PrivateNetwork", "yes"), ("RestrictAddressFamilies", "AF_UNIX")], []
    return [
        ("NetworkNamespacePath", netns),
        ("RestrictAddressFamilies", NETWORK_FAMILIES),
    ], []


def _valid_text(text: str) -> bool:
    """What D-Bus and systemd's environment checks accept: UTF-8, no control characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text)


def properties(
    plan: Plan,
    host_id: tuple[int, int] | None = None,
    rundir: str = "<rundir>",
    netns: str = "<netns>",
) -> tuple[list[tuple[str, str]], list[str]]:
    """(the unit's properties in order, refusals)."""
    uid, gid = (str(host_id[0]), str(host_id[1])) if host_id else ("<uid>", "<gid>")
    refused: list[str] = []
    props: list[tuple[str, str]] = [("User", uid), ("Group", gid)]
    props += _hardening(plan)
    filt, bad = syscall_filter(plan.seccomp_profiles)
    props.append(("SystemCallFilter", filt))
    refused += bad
    net, bad = _network_props(plan, netns)
    props += net
    refused += bad
    mounts, bad = _mount_props(plan, uid, gid, rundir)
    props += mounts
    refused += bad
    if plan.scratch is not None:
        refused.append("--disk (one tmpfs of that size holding every writable area)")
    props += _limit_props(plan)
    if not _safe(plan.cwd):
        refused.append(f"a working directory systemd cannot quote ({plan.cwd!r})")
    props.append(("WorkingDirectory", plan.cwd))
    for name, value in plan.env.items():
        if not (_valid_text(name) and _valid_text(value)) or "=" in name:
            refused.append(f"an environment variable systemd cannot carry ({name!r})")
    if not plan.command or not plan.command[0].startswith("/"):
        refused.append(NOT_ABSOLUTE)
    if not all(_valid_text(arg) for arg in plan.command):
        refused.append("a command argument that is not text (D-Bus carries UTF-8 only)")
    return props, refused


def notes(plan: Plan) -> list[str]:
    """Where the unit is stricter than, or differs from, the bwrap cell (never weaker)."""
    out = [
        "no pid namespace on systemd 252: /proc shows only the cell's own processes "
        "(ProtectProc=invisible, its own uid)",
        "uname's nodename is the host's (ProtectHostname=yes keeps it); /etc/hostname is cell",
        "/bin/sh and other links are bind mounts of their targets, not symbolic links",
        "no ptys inside (/dev/ptmx is inaccessible); /proc holds only process entries",
    ]
    if "jit-runtime" not in plan.seccomp_profiles:
        out.append("MemoryDenyWriteExecute=yes: JIT runtimes (node) need the jit-runtime profile")
    if "debugger" in plan.seccomp_profiles:
        out.append("debugger: personality(ADDR_NO_RANDOMIZE) stays denied (LockPersonality)")
    return out


def _escape_dollars(arg: str) -> str:
    """systemd expands $NAME in ExecStart at exec time; "$$" is a literal "$"."""
    return arg.replace("$", "$$")


def argv(
    plan: Plan,
    props: list[tuple[str, str]],
    cell_id: str,
    description: str,
    systemd_run: str = "systemd-run",
) -> list[str]:
    """``systemd-run`` for one cell: waits for it, gives it our stdio fds (``--pipe``)."""
    out = [
        systemd_run, f"--unit={unit_name(cell_id)}", f"--description={description}",
        "--wait", "--pipe", "--quiet", "--service-type=exec",
    ]  # fmt: skip
    out += [f"--property={key}={value}" for key, value in props]
    out += [f"--setenv={name}={value}" for name, value in plan.env.items()]
    return [*out, "--", *(_escape_dollars(a) for a in plan.command)]


def data_files(plan: Plan, host_id: tuple[int, int] | None) -> dict[int, str]:
    """The generated files (``data`` ops) by mount index; the cell's uid/gid 1000 in
    /etc/passwd and /etc/group become its host uid/gid (the unit runs as that uid)."""
    files = {}
    for index, op in enumerate(plan.mounts):
        if op.kind == "data":
            text = op.data or ""
            if host_id is not None and op.dest in ("/etc/passwd", "/etc/group"):
                text = _remap(text, plan, host_id, op.dest == "/etc/passwd")
            files[index] = text
    return files


def _remap(text: str, plan: Plan, host_id: tuple[int, int], passwd: bool) -> str:
    lines = []
    for line in text.splitlines():
        fields = line.split(":")
        if passwd and len(fields) >= 4 and fields[2] == str(plan.uid):
            fields[2], fields[3] = str(host_id[0]), str(host_id[1])
        elif not passwd and len(fields) >= 3 and fields[2] == str(plan.gid):
            fields[2] = str(host_id[1])
        lines.append(":".join(fields))
    return "\n".join(lines) + "\n"
