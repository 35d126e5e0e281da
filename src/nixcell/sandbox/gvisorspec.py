"""A Plan as a gVisor OCI bundle and ``runsc`` argv: pure (no runsc, no I/O), like the plan.

The mounts are ``dockerspec.layout``'s, op by op (the same refusals: by-fd binds, a parent
mounted after its child, ...), written as OCI mounts instead of Docker's; what differs:
- the root is an empty directory of nixcell's (``bundle/rootfs``, read-only) holding only the
  mount points: the cell sees the closure binds and the plan's mounts, nothing of the host.
- /proc is gVisor's own (the sentry's, listing only the sandbox's processes). The plan's /proc
  covers name host-kernel files (``/proc/kcore``, ``/proc/keys``, ...) that gVisor's /proc does
  not have; its read-only ones are the sentry's emulation, root-owned, which the cell's
  unprivileged uid cannot write. So they are dropped, said in ``notes``; runsc could not bind
  onto its /proc anyway (the sandbox fails to start).
- /sys is an empty read-only tmpfs (gVisor would mount its own sysfs); /dev is gVisor's own
  (null zero full random urandom tty ptmx pts shm fd), root-owned: the cell cannot write it.
- seccomp: the plan's filter goes to runsc's ``--oci-seccomp`` (enforced by the sentry, inside
  the sandbox). This runsc returns EPERM for every OCI rule (it ignores ``errnoRet``), so only
  the EPERM rules are given to it; a rule with another errno is kept only where the sentry
  itself already answers that syscall with that errno (``NATIVE``, verified for the runsc
  versions in ``VERIFIED``), else the plan is refused. ``socket`` families: the sentry knows
  only unix, inet, inet6, netlink and packet (EAFNOSUPPORT for the rest); AF_PACKET gets an
  EPERM rule (bwrap's filter says EAFNOSUPPORT: both refuse).
- limits: ``--pids N`` is RLIMIT_NPROC inside the sentry (the cell's uid is the sandbox's only
  uid, so it counts the cell's processes and threads); memory, CPU and a host pids backstop are
  a cgroup holding the whole sandbox (``gvisorcell.py``).
"""

from __future__ import annotations

import json
import posixpath

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.dockerspec import Layout

RUNSC = "/usr/bin/runsc"
UNSHARE = "/usr/bin/unshare"
VERIFIED = ("0.0~20221219.0",)  # runsc versions whose NATIVE answers were checked here
NATIVE = {("clone3", 38), ("openat2", 38), ("socket", 97), ("socketpair", 97)}
AF_PACKET = 17
EPERM = 1
# the host pids backstop: runsc's own tasks (gofer, sentry, a ptrace stub: ~50 measured) and
# about five host tasks per cell task (its ptrace stub); the cell's own limit is RLIMIT_NPROC
RUNSC_TASKS = 256
HOST_TASKS_PER_TASK = 8
PID_MAX = 4_000_000  # no --pids: about the kernel's own ceiling (4194304)
CAPS = ("bounding", "effective", "inheritable", "permitted", "ambient")
EMPTY = ("ro", "nosuid", "nodev", "noexec", "mode=0555", "size=4096", "nr_inodes=16")
NO_DEVICE = "bundle/no-device"  # an empty 0444 file bound over gVisor's /dev/fuse
SYS_TMPFS = {"destination": "/sys", "type": "tmpfs", "source": "tmpfs",
             "options": ["ro", "nosuid", "nodev", "noexec", "mode=0555", "size=4096"]}  # fmt: skip


def seccomp(profiles: tuple[str, ...], version: str) -> tuple[dict[str, object], list[str]]:
    """The OCI seccomp section for the plan's profiles, and what of it cannot be enforced."""
    from nixcell.errors import LimitUnavailableError
    from nixcell.sandbox import dockerseccomp

    try:
        docker = json.loads(dockerseccomp.profile(tuple(profiles)))
    except LimitUnavailableError as exc:
        return {}, [exc.message]
    keep: list[dict[str, object]] = []
    refused: list[str] = []
    native: set[str] = set()
    for entry in docker["syscalls"]:
        name, errno = entry["names"][0], entry.get("errnoRet", EPERM)
        if errno == EPERM:
            keep.append(entry)
        elif (name, errno) in NATIVE and version in VERIFIED:
            native.add(name)
        else:
            why = "(this runsc answers every OCI seccomp rule with EPERM"
            if (name, errno) in NATIVE:
                why += f"; the sentry's own errno {errno} was verified for runsc {VERIFIED[0]}"
            refused.append(f"the seccomp rule on {name} with errno {errno} {why})")
    for name in sorted(native & {"socket", "socketpair"}):
        keep.append({"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                     "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": AF_PACKET,
                               "valueTwo": 0}]})  # fmt: skip
    body = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": docker["architectures"],
            "syscalls": keep}  # fmt: skip
    return body, sorted(set(refused))


def refusals(layout: Layout) -> list[str]:
    """What of the layout gVisor cannot give (beyond ``dockerspec``'s own refusals)."""
    refused = list(layout.refusals)
    for path in (*layout.masked, *layout.readonly):
        if not (path == "/sys" or path.startswith(("/proc/", "/sys/"))):
            refused.append(f"a masked or read-only path outside /proc: {path}")
    return refused


def _depth(mount: dict[str, object]) -> tuple[int, str]:
    dest = str(mount["destination"])
    return (0 if dest == "/" else dest.count("/"), dest)


def mounts(layout: Layout) -> list[dict[str, object]]:
    """The OCI mounts, parents before children (the layout refused every other order)."""
    out: list[dict[str, object]] = [{"destination": "/proc", "type": "proc", "source": "proc"},
                                    dict(SYS_TMPFS)]  # fmt: skip
    out += [{"destination": "/dev/net", "type": "tmpfs", "source": "tmpfs", "options": list(EMPTY)},
            {"destination": "/dev/fuse", "type": "bind", "source": f"{layout.top}/{NO_DEVICE}",
             "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}]  # fmt: skip
    for bind in layout.mounts:
        ro = "ro" if bind["ReadOnly"] else "rw"
        out.append({"destination": bind["Target"], "type": "bind", "source": bind["Source"],
                    "options": ["rbind", ro, "nosuid", "nodev"]})  # fmt: skip
    for dest, opts in layout.tmpfs.items():
        options = [o for o in opts.split(",") if o and o != "exec"]
        out.append({"destination": dest, "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "nodev", *options]})  # fmt: skip
    return [out[0], out[1], *sorted(out[2:], key=_depth)]


def host_pids(pids: int | None) -> int:
    """The sandbox cgroup's pids.max for a cell limited to ``pids`` tasks (None: no limit)."""
    return PID_MAX if pids is None else RUNSC_TASKS + HOST_TASKS_PER_TASK * pids


def spec(
    plan: Plan, layout: Layout, user: tuple[int, int], netns: str | None, filt: dict[str, object]
) -> dict[str, object]:
    """The bundle's config.json. ``netns``: the network namespace path (a policy), or None."""
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    process: dict[str, object] = {
        "terminal": False,
        "user": {"uid": user[0], "gid": user[1]},
        "args": list(plan.command),
        "env": [f"{k}={v}" for k, v in plan.env.items()],
        "cwd": plan.cwd,
        "capabilities": {k: [] for k in CAPS},
        "noNewPrivileges": True,
    }
    if plan.limits.pids is not None:
        nproc = plan.limits.pids
        process["rlimits"] = [{"type": "RLIMIT_NPROC", "hard": nproc, "soft": nproc}]
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs", "readonly": layout.readonly_root},
        "hostname": plan.hostname,
        "mounts": mounts(layout),
        "linux": {"namespaces": namespaces, "seccomp": filt},
    }


def mount_points(spec_body: dict[str, object], files: set[str]) -> list[tuple[str, bool]]:
    """(path under the root, is a directory) to make in the empty root for each mount that is
    not inside another mount; ``files``: the destinations whose source is a file."""
    dests = [str(m["destination"]) for m in spec_body["mounts"]]  # type: ignore[attr-defined]
    made: list[tuple[str, bool]] = []
    for dest in dests:
        if dest == "/dev" or dest.startswith("/dev/"):
            continue  # gVisor's own /dev
        inside = [d for d in dests if d != dest and dest.startswith(d.rstrip("/") + "/")]
        if inside:
            continue  # gVisor makes it in the mount above (a tmpfs of its own)
        made.append((posixpath.normpath(dest), dest not in files))
    return made


def nested_points(
    spec_body: dict[str, object], files: set[str]
) -> list[tuple[str, str, str, bool]]:
    """(destination, source of the bind it lies in, its path inside that source, is a
    directory) for each mount whose nearest enclosing mount is a bind: its mount point is in a
    host directory (a workdir, a ``--mount``), which nixcell makes itself (``gvisormounts``):
    runsc would follow a link planted there and make it as the cell's raw uid."""
    mounts = [m for m in spec_body["mounts"] if m["destination"] != "/"]  # type: ignore[attr-defined]
    found: list[tuple[str, str, str, bool]] = []
    for mount in mounts:
        dest = posixpath.normpath(str(mount["destination"]))
        if dest == "/dev" or dest.startswith("/dev/"):
            continue
        above = [m for m in mounts if dest.startswith(str(m["destination"]).rstrip("/") + "/")]
        if not above:
            continue  # in the bundle's own root (``mount_points``)
        parent = max(above, key=lambda m: len(str(m["destination"])))
        if parent["type"] != "bind":
            continue  # in a tmpfs the sandbox makes (nothing planted there)
        rel = dest[len(str(parent["destination"]).rstrip("/")) + 1 :]
        found.append((dest, str(parent["source"]), rel, str(mount["destination"]) not in files))
    return found


def runsc_prefix(rootless: bool) -> list[str]:
    """runsc as root; an ordinary user's inside a user namespace of its own where they are
    root (``unshare -U -r``), with ``--rootless`` (DESIGN.md section 8)."""
    return [UNSHARE, "-U", "-r", RUNSC, "--rootless"] if rootless else [RUNSC]


def argv(
    state: str, bundle: str, container: str, network: bool, log: str, rootless: bool = False
) -> list[str]:
    """``runsc run``, attached: the sandbox dies with it (and it with nixcell: PDEATHSIG)."""
    return [
        *runsc_prefix(rootless), "--root", state, "--network", "host" if network else "none",
        "--oci-seccomp", "--ignore-cgroups", "--log", log, "--log-format", "json",
        "run", "--bundle", bundle, container,
    ]  # fmt: skip
