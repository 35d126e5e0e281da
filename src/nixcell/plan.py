"""plan(spec, closure, host) -> Plan: every decision about a cell, made without touching the OS.

Like bubblewrap's own setup-op list, a Plan is data first: namespaces, an ordered list of mount
operations, the environment, limits, the seccomp profiles. The executor (``sandbox/bwrap.py``)
turns it into a bwrap invocation and adds no decisions of its own. ``--dry-run --json`` prints it.

This module imports no pydantic and does no I/O, so the CLI fast path can load a cached plan.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from nixcell.planstore import host_network_mounts, store_binds, store_env, store_mounts
from nixcell.planview import (  # (the cell's home and writable areas, for the warm path too)
    CELL_HOME,
    PLAN_FORMAT,
    SCRATCH_AREAS,
    STAGE_DIR,
    staged_source,
)
from nixcell.shellcmd import command_for

TYPE_CHECKING = False  # not `import typing`: it costs CLI start-up time

if TYPE_CHECKING:
    from nixcell.host import HostFacts
    from nixcell.nix.closure import Closure
    from nixcell.spec import CellSpec

CELL_USER = "cell"
CELL_UID = 1000
CELL_GID = 1000
HOSTNAME = "cell"
NAMESPACES = ("user", "pid", "ipc", "uts", "net", "cgroup")

# "dns" with no resolv.conf: a name not in /etc/hosts is asked of 127.0.0.1:53, in the cell's own
# namespace, where nothing listens. It fails as fast as "files" alone, but the kernel counts the
# refused datagram: that is how nixcell tells a program tried the network (sandbox/nonet.py).
_NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n"
PROXY_PORT = 3128  # inside the cell's own network namespace, so any fixed port is free
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# What runc and Docker cover in /proc (runc's config.json defaults, Docker's oci/defaults.go),
# plus kernel-wide files of the same kind: read-only, or masked (unreadable) altogether.
PROC_READ_ONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PROC_MASKED = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/kpagecount",
    "/proc/kpageflags",
    "/proc/kpagecgroup",
    "/proc/vmallocinfo",
    "/proc/slabinfo",
    "/proc/pagetypeinfo",
    "/proc/config.gz",
    "/proc/acpi",
    "/proc/asound",
    "/proc/scsi",
    "/proc/driver",
    "/proc/tty/driver",
    "/proc/pressure",  # host-wide stall figures, and writable: triggers
    "/proc/cmdline",  # the host kernel's boot parameters
)


@dataclass(frozen=True)
class MountOp:
    """One bwrap setup operation, in order.

    kind: ro-bind | bind | tmpfs | proc | dev | dir | symlink | data | remount-ro
    ``data`` ops carry file contents that reach bwrap through a memfd (``--ro-bind-data``).
    ``by_fd`` binds reach bwrap as an O_PATH fd the executor opens without following links
    (``--bind-fd``): bwrap would resolve a path itself, after the checks, and a cell sharing the
    directory (a concurrent run of the same project) could swap in a link meanwhile.
    """

    kind: str
    dest: str
    src: str | None = None
    size: int | None = None
    perms: str | None = None
    data: str | None = None
    by_fd: bool = False


@dataclass(frozen=True)
class StageOp:
    """A host path a root-run cell gets through an idmapped mount (``sandbox/idmap.py``).

    The executor attaches it at ``STAGE/<index>`` inside the cell's own mount namespace, where
    on-disk files of the invoking user appear owned by the cell's unprivileged host uid; the
    mount op binding it into the cell names that stage path as its source.
    """

    index: int
    source: str
    readonly: bool
    is_dir: bool = True


@dataclass(frozen=True)
class PlanLimits:
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    timeout: float | None = None
    disk: int | None = None

    @property
    def needs_cgroup(self) -> bool:
        return any(v is not None for v in (self.memory, self.cpus, self.pids))


@dataclass(frozen=True)
class Plan:
    command: tuple[str, ...]
    mounts: tuple[MountOp, ...]
    env: dict[str, str]
    cwd: str
    limits: PlanLimits
    seccomp_profiles: tuple[str, ...]
    closure: tuple[str, ...]
    path_dirs: tuple[str, ...]
    namespaces: tuple[str, ...] = NAMESPACES
    uid: int = CELL_UID
    gid: int = CELL_GID
    hostname: str = HOSTNAME
    disable_userns: bool = True
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    programs: tuple[str, ...] = ()  # what the cell's PATH holds, for command decisions
    shell: str | None = None  # the closure's bash/sh/dash, if any
    # With a network: the spec's Network (policy sources) plus the proxy port. The executor puts
    # the cell in a namespace holding only lo and the proxy's listener (net/netns.py).
    network: dict[str, object] | None = None
    # "invoker": the cell's uid 1000 is the host uid that runs nixcell (an ordinary user);
    # "subordinate": nixcell runs as root, so each cell gets its own unprivileged host uid
    # (sandbox/identity.py) and its binds come through the idmapped ``stage``.
    identity: str = "invoker"
    stage: tuple[StageOp, ...] = ()
    # sources that must be volumes of the namespaces the cell is started in (never the host's)
    volumes: tuple[str, ...] = ()
    # --disk: the size of the one tmpfs (at HostFacts.scratch_dir, in the cell's own mount
    # namespace) holding every writable area of SCRATCH_AREAS
    scratch: int | None = None
    # auto | always | never: whether the executor gives the cell its own pty (ttymode.py)
    tty: str = "never"
    # the host paths the plan was made for, as HostFacts.checked: (role, path, kind)
    checked: tuple[tuple[str, str, str], ...] = ()
    # the host variables passed through (--pass-env, a project's passthrough_env), each with
    # whether the host had it: their values are in ``env``, so a cached plan is stale when the
    # host's differ (plancheck.py)
    passed_env: tuple[tuple[str, bool], ...] = ()
    # (path, mtime_ns, size, inode) of the files whose contents shaped the plan (policy files:
    # their cidr rules set NO_PROXY), as HostFacts.stamps; a cached plan is stale when one changed
    stamps: tuple[tuple[str, int, int, int], ...] = ()
    # what the cell sees of /nix/store (planstore.py); copy modes: the copy's directory and its
    # manifest's stamp (a cached plan made for another copy is stale: plancheck.py)
    store: str = "closure"
    store_dir: str | None = None
    store_stamp: str | None = None
    host_network: bool = False  # the host's network namespace: no "net" in namespaces
    # the backend that runs it (sandbox/backends.py); the plan itself stays backend-neutral:
    # each backend turns these same fields into its own argv/spec, or refuses what it cannot
    backend: str = "bwrap"
    # a Nix root of the host's own (nix/storeroot.py): closure path P is bound from nix_root + P
    nix_root: str | None = None

    def store_source(self, path: str) -> str:
        """The host file behind the store path ``path`` (under the host's Nix root, if any)."""
        return (self.nix_root or "") + path

    def host_source(self, op: MountOp) -> str | None:
        """The host path behind a bind op (a root-run cell's binds come through the stage)."""
        return staged_source(self.stage, op.src)

    def with_command(self, command: tuple[str, ...] | list[str]) -> Plan:
        """The same cell running another command (shell builtins go through the shell)."""
        import dataclasses

        return dataclasses.replace(self, command=command_for(tuple(command), self))

    # -- rendering -------------------------------------------------------------------------
    def fd_names(self) -> list[str]:
        """Names of the file descriptors the executor must supply, in argv order."""
        names = [f"data:{op.dest}" for op in self.mounts if op.kind == "data"]
        return [*names, *(name for name, _ in self.paths()), "seccomp"]

    def paths(self) -> list[tuple[str, str]]:
        """(fd name, host path) of the bind sources bwrap gets as fds (``MountOp.by_fd``), each
        source once: the executor opens them without following links."""
        sources = dict.fromkeys(str(op.src) for op in self.mounts if op.by_fd)
        return [(f"path:{src}", src) for src in sources]

    def bwrap_args(self, fds: Mapping[str, int] | None = None) -> list[str]:
        """The exact bwrap arguments (after ``bwrap``); without ``fds`` they show as <fd:NAME>."""

        def fd(name: str) -> str:
            return str(fds[name]) if fds is not None else f"<fd:{name}>"

        args: list[str] = [f"--unshare-{ns}" for ns in self.namespaces]
        args += ["--uid", str(self.uid), "--gid", str(self.gid), "--hostname", self.hostname]
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if self.disable_userns:
            args.append("--disable-userns")
        for op in self.mounts:
            args += _render_mount(op, fd)
        args += ["--clearenv"]
        for key, value in self.env.items():
            args += ["--setenv", key, value]
        args += ["--chdir", self.cwd, "--seccomp", fd("seccomp"), "--", *self.command]
        return args

    # -- serialisation ---------------------------------------------------------------------
    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["bwrap_args"] = self.bwrap_args()
        data["format"] = PLAN_FORMAT
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Plan:
        fields = dict(data)
        if fields.pop("format", None) != PLAN_FORMAT:
            raise ValueError("a plan of another nixcell version")
        fields.pop("bwrap_args", None)
        fields["mounts"] = tuple(MountOp(**m) for m in fields["mounts"])  # type: ignore[union-attr]
        fields["limits"] = PlanLimits(**fields["limits"])  # type: ignore[arg-type]
        fields["stage"] = tuple(StageOp(**s) for s in fields.get("stage") or ())  # type: ignore[union-attr]
        fields["checked"] = tuple(tuple(c) for c in fields.get("checked") or ())  # type: ignore[union-attr]
        fields["passed_env"] = tuple(tuple(c) for c in fields.get("passed_env") or ())  # type: ignore[union-attr]
        fields["stamps"] = tuple(tuple(c) for c in fields.get("stamps") or ())  # type: ignore[union-attr]
        tuples = (
            "command",
            "seccomp_profiles",
            "closure",
            "path_dirs",
            "namespaces",
            "notes",
            "programs",
            "volumes",
        )
        for key in tuples:
            fields[key] = tuple(fields.get(key, ()))  # type: ignore[arg-type]
        return cls(**fields)  # type: ignore[arg-type]


def _render_mount(op: MountOp, fd) -> list[str]:
    pre: list[str] = []
    if op.perms is not None:
        pre += ["--perms", op.perms]
    if op.size is not None:
        pre += ["--size", str(op.size)]
    match op.kind:
        case "ro-bind" | "bind" if op.by_fd:
            return [*pre, f"--{op.kind}-fd", fd(f"path:{op.src}"), op.dest]
        case "ro-bind" | "bind":
            return [*pre, f"--{op.kind}", str(op.src), op.dest]
        case "tmpfs" | "proc" | "dev" | "dir" | "remount-ro":
            return [*pre, f"--{op.kind}", op.dest]
        case "symlink":
            return [*pre, "--symlink", str(op.src), op.dest]
        case "data":
            return [*pre, "--ro-bind-data", fd(f"data:{op.dest}"), op.dest]
    raise ValueError(f"unknown mount op {op.kind}")


# -- the planner -------------------------------------------------------------------------------


def plan(spec: CellSpec, closure: Closure, host: HostFacts, proxied_cidrs: tuple = ()) -> Plan:
    """Decide everything about the cell. Pure: no I/O, no clock, no randomness.

    ``proxied_cidrs``: the networks the compiled policy's allow rules grant (policy files
    included, which plan() does not read); the flags' ``--allow-cidr`` are added here."""
    disk = spec.limits.disk
    profiles = tuple(spec.hardening_profiles)
    _check_disk_bounds(spec, host.volumes)
    mounts: list[MountOp] = store_mounts(spec, closure, host.nix_root)
    mounts.append(MountOp("proc", "/proc"))
    if "nested-sandbox" not in profiles:  # a covered /proc stops a nested sandbox's own /proc
        mounts += _proc_covers(host)
    mounts.append(MountOp("dev", "/dev"))
    areas = [a for a in SCRATCH_AREAS if a[0] != "workspace" or spec.workdir is None]
    for name, dest, mode in areas:
        if disk is None:  # each its own tmpfs (they count against --memory)
            mounts.append(MountOp("tmpfs", dest, perms=f"{mode:04o}"))
        else:  # one tmpfs of --disk bytes (and inodes in proportion) holds them all
            mounts.append(MountOp("bind", dest, src=f"{host.scratch_dir}/{name}"))
    # bwrap's /dev is an unsized tmpfs the cell owns: read-only (devices still work, /dev/shm
    # and /dev/pts are mounts of their own)
    mounts.append(MountOp("remount-ro", "/dev"))
    identity = "subordinate" if host.uid == 0 else "invoker"
    binds = store_binds(spec, host)  # (dest, host source, writable): a store's own first
    if spec.workdir is None:
        pass
    else:
        binds.append(("/workspace", spec.workdir, True))
    binds += [(m.target, m.source, m.writable) for m in spec.mounts]
    stage: list[StageOp] = []
    for dest, source, writable in binds:
        if identity == "subordinate":
            op = StageOp(len(stage), source, not writable, host.kinds.get(source) != "file")
            stage.append(op)
            source = f"{STAGE_DIR}/{op.index}"
        # an ordinary user's binds by fd (a root-run cell's come through the idmapped stage,
        # opened the same way); a volume's path means something only in the cell's namespaces
        by_fd = identity == "invoker" and source not in host.volumes
        mounts.append(MountOp("bind" if writable else "ro-bind", dest, source, by_fd=by_fd))
    mounts += _hides(spec, host)
    has_bin_sh = any(closure.has_program(name) for name in _SH_PROGRAMS)
    login_shell = f"{closure.env}/bin/bash" if closure.has_program("bash") else "/bin/sh"
    mounts += _etc_files(host, login_shell)
    mounts += _standard_links(closure)
    mounts.append(MountOp("remount-ro", "/"))

    path_dirs: tuple[str, ...] = (f"{closure.env}/bin",)
    if has_bin_sh and not closure.has_program("sh"):  # `sh` finds /bin/sh -> dash, as on Debian
        path_dirs += ("/bin",)
    if not closure.has_program("env") and "env" in closure.tools:  # `env` finds /usr/bin/env
        path_dirs += ("/usr/bin",)
    shell = next(
        (f"{closure.env}/bin/{sh}" for sh in ("bash", "sh", "dash") if closure.has_program(sh)),
        None,
    )
    env = {
        "PATH": ":".join(path_dirs),
        "HOME": CELL_HOME,
        "USER": CELL_USER,
        "LOGNAME": CELL_USER,
        "TERM": host.term,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    if has_bin_sh:  # SHELL only names a shell the cell has (and /etc/passwd the same)
        env["SHELL"] = login_shell
    if closure.site_packages:  # a buildEnv's python3 links to its own prefix, not the env's
        env["PYTHONPATH"] = ":".join(closure.site_packages)
    env.update(store_env(spec))
    network = None
    namespaces = NAMESPACES
    if spec.host_network:  # asked for: the host's namespace, no proxy, nothing in between
        namespaces = tuple(ns for ns in NAMESPACES if ns != "net")
        user_ca = any(_within(CA_BUNDLE, m.target) for m in spec.mounts)
        mounts[-1:-1] = host_network_mounts(host, None if user_ca else CA_BUNDLE)
    elif spec.network is not None:
        network = {"port": PROXY_PORT, **spec.network.model_dump()}
        namespaces = tuple(ns for ns in NAMESPACES if ns != "net")  # the executor's netns
        from nixcell.net.policy import policy_from_flags

        flags = policy_from_flags([], [], spec.network.allow_cidrs).proxied_cidrs()
        env.update(proxy_env(PROXY_PORT, (*flags, *proxied_cidrs)))
        mounts.insert(-1, MountOp("data", CA_BUNDLE, data=host.ca_pem or ""))
    elif not any(_within(CA_BUNDLE, m.target) for m in spec.mounts):
        # no CA to trust, but the file (unless the user binds one): Debian's pip refuses to
        # start without it, and would never get as far as the network (nor the no-network hint)
        mounts.insert(-1, MountOp("ro-bind", CA_BUNDLE, src="/dev/null"))
    env.update(host.passed_env)
    env.update(spec.env)
    limits = PlanLimits(**spec.limits.model_dump())
    return Plan(
        command=(),
        mounts=tuple(mounts),
        env=dict(sorted(env.items())),
        cwd=spec.cwd,
        limits=limits,
        seccomp_profiles=profiles,
        closure=tuple(sorted(closure.paths)),
        path_dirs=path_dirs,
        disable_userns="nested-sandbox" not in profiles,
        source=closure.source,
        programs=closure.programs,
        shell=shell,
        network=network,
        namespaces=namespaces,
        identity=identity,
        stage=tuple(stage),
        volumes=tuple(v for v in host.volumes if any(v == source for _, source, _ in binds)),
        scratch=disk,
        tty=spec.tty,
        checked=host.checked,
        passed_env=tuple((n, n in host.passed_env) for n in spec.pass_env if n not in spec.env),
        stamps=host.stamps,
        store=spec.store,
        store_dir=spec.store_dir,
        store_stamp=host.store_stamp,
        host_network=spec.host_network,
        backend=host.backend,
        nix_root=host.nix_root,
    ).with_command(spec.command)


def proxy_env(port: int, proxied_cidrs: tuple = ()) -> dict[str, str]:
    """Every spelling clients look for, so no client quietly goes direct (DESIGN.md §4).

    NO_PROXY names the cell's own loopback (servers the cell starts for itself) — unless the
    policy (flag or file) grants loopback addresses of the host, i.e. an allowed network
    (``ipaddress`` networks) overlaps 127.0.0.0/8 or holds ::1: then loopback goes through the
    proxy, since a client sending it "direct" would only reach the cell's empty lo (srt's
    mistake, §6).
    """
    url = f"http://127.0.0.1:{port}"
    env: dict[str, str] = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "FTP_PROXY"):
        env[name] = env[name.lower()] = url
    local = ["localhost", "127.0.0.1", "::1"]
    if any(_holds_loopback(net) for net in proxied_cidrs):
        local = []
    env["NO_PROXY"] = env["no_proxy"] = ",".join(local)
    env["NODE_USE_ENV_PROXY"] = "1"
    env["npm_config_proxy"] = env["npm_config_https_proxy"] = url
    env["PIP_PROXY"] = url
    for name in (
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "CARGO_HTTP_CAINFO",
        "PIP_CERT",
        "npm_config_cafile",
        "AWS_CA_BUNDLE",
        "DENO_CERT",
    ):
        env[name] = CA_BUNDLE
    return env


def _holds_loopback(net) -> bool:  # an ipaddress network
    import ipaddress

    if net.version == 4:
        return net.overlaps(ipaddress.IPv4Network("127.0.0.0/8"))
    return ipaddress.IPv6Address("::1") in net


def _check_disk_bounds(spec: CellSpec, volumes: tuple[str, ...]) -> None:
    """--disk bounds every writable place: a host directory bound writable cannot be bounded
    (a volume — a sized tmpfs in the namespaces the cell starts in — is bounded already)."""
    if spec.limits.disk is None:
        return
    from nixcell.errors import UsageError

    if "nested-sandbox" in spec.hardening_profiles:
        raise UsageError(
            "--disk cannot be enforced with --hardening-profile nested-sandbox: the cell could "
            "mount tmpfs of its own; use --memory to bound what it stores in memory"
        )
    writable = [spec.workdir] if spec.workdir is not None else []
    writable += [m.source for m in spec.mounts if m.writable]
    writable = [path for path in writable if path not in volumes]
    if writable:
        raise UsageError(
            f"--disk cannot bound the host directory {writable[0]} bound writable into the cell; "
            "drop --disk, or bind it read-only (--ro-bind)"
        )


def _proc_covers(host: HostFacts) -> list[MountOp]:
    """Kernel-wide /proc files: read-only binds of themselves, or masked by an empty mount."""
    ops = []
    for path in PROC_READ_ONLY:
        if path in host.proc_entries:
            ops.append(MountOp("ro-bind", path, src=path))
    for path in PROC_MASKED:
        kind = host.proc_entries.get(path)
        if kind == "file":
            ops.append(MountOp("ro-bind", path, src="/dev/null"))
        elif kind == "dir":
            ops += [MountOp("tmpfs", path, perms="0555", size=4096), MountOp("remount-ro", path)]
    return ops


def _hides(spec: CellSpec, host: HostFacts) -> list[MountOp]:
    ops = []
    for hidden in spec.hide:
        target = _cell_path_of(spec, hidden)
        if host.kinds.get(hidden) == "file":
            ops.append(MountOp("ro-bind", target, src="/dev/null"))
        else:
            ops.append(MountOp("tmpfs", target, perms="0000", size=4096))
    return ops


def _within(path: str, target: str) -> bool:
    return path == target or path.startswith(target.rstrip("/") + "/")


def _cell_path_of(spec: CellSpec, path: str) -> str:
    """--hide takes the cell path, or a host path inside a mount source (mapped to the cell)."""
    binds = [(m.source, m.target) for m in spec.mounts]
    if spec.workdir is not None:
        binds.append((spec.workdir, "/workspace"))
    targets = {t for _, t in binds}
    if any(path == t or path.startswith(t + "/") for t in targets):
        return path
    for source, target in sorted(binds, key=lambda b: -len(b[0])):
        if path == source or path.startswith(source + "/"):
            return posixpath.normpath(target + path[len(source) :])
    return path


def _etc_files(host: HostFacts, login_shell: str) -> list[MountOp]:
    passwd = (
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"{CELL_USER}:x:{CELL_UID}:{CELL_GID}:cell:{CELL_HOME}:{login_shell}\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
    )
    group = f"root:x:0:\n{CELL_USER}:x:{CELL_GID}:\nnogroup:x:65534:\n"
    hosts = f"127.0.0.1\tlocalhost {HOSTNAME}\n::1\tlocalhost ip6-localhost {HOSTNAME}\n"
    return [
        MountOp("data", "/etc/passwd", data=passwd),
        MountOp("data", "/etc/group", data=group),
        MountOp("data", "/etc/hosts", data=hosts),
        # glibc's default is "multi off": only the first /etc/hosts line of a name, so
        # `localhost` would give 127.0.0.1 alone, never ::1 (Debian ships this line too)
        MountOp("data", "/etc/host.conf", data="multi on\n"),
        MountOp("data", "/etc/hostname", data=f"{HOSTNAME}\n"),
        MountOp("data", "/etc/nsswitch.conf", data=_NSSWITCH),
    ]


# What /bin/sh may point at, best first: the packages' own sh (bash's, busybox's), else dash
# (added to the closure unless --no-sh: spec.closure_packages).
_SH_PROGRAMS = ("sh", "bash", "dash")


def _standard_links(closure: Closure) -> list[MountOp]:
    """/bin/sh, /bin/bash and /usr/bin/env, only when the closure has programs to point them
    at."""
    ops = []
    bin_dir = f"{closure.env}/bin"
    sh = next((name for name in _SH_PROGRAMS if closure.has_program(name)), None)
    if sh is not None:
        ops.append(MountOp("symlink", "/bin/sh", src=f"{bin_dir}/{sh}"))
    if closure.has_program("bash"):  # `#!/bin/bash`: where every distribution but NixOS has it
        ops.append(MountOp("symlink", "/bin/bash", src=f"{bin_dir}/bash"))
    if closure.has_program("env"):
        ops.append(MountOp("symlink", "/usr/bin/env", src=f"{bin_dir}/env"))
    elif "env" in closure.tools:  # busybox's, by itself: argv[0] "env" picks the applet
        ops.append(MountOp("symlink", "/usr/bin/env", src=closure.tools["env"]))
    return ops
