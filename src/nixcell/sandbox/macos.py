"""The sandbox-exec (SBPL) profile of a plan: what a macOS backend would enforce, made today.

nixcell runs no cell on macOS yet (``platforms.py`` refuses); ``nixcell run --dry-run --sbpl``
prints this profile. It is a pure function of the plan, built like the plan itself: named pieces
(process, system libraries, devices, closure, places, network, terminal), each a list of forms
(``sbpl.py`` renders them and alone quotes paths). The profile starts from ``(deny default)``.

macOS has no namespaces, so the plan's mounts cannot be made; they become rules on the host paths
behind them. The mount table is replayed in the plan's order: a mount (or a hide, a generated
file, a link) at cell path D covers what the mount holding D showed there (a hole in it) and ends
the mounts at or inside D. What is visible at the end becomes allows of host paths, the holes
denies, shallowest first: SBPL's last matching rule wins, so the deepest rule above a path decides
it. A writable place's own directory can be neither removed nor replaced (as a mount point). The
cell's tmpfs areas (``/tmp``, its home, a fresh ``/workspace``, ``/dev/shm``) become directories
of one per-run ``cell_dir``. What is left to a backend — the cell's paths in env and cwd as host
paths, generated files (``/etc/passwd``, the CA bundle) written into ``cell_dir``, links like
``/bin/sh`` — is named in comments of the profile and in docs/security.md ("macOS").

Paths are matched after symlinks are resolved: ``/tmp``, ``/var`` and ``/etc`` are links into
``/private`` on macOS, so those prefixes are rewritten here; any other link in a path must be
resolved by the backend before planning (host.py refuses bind sources reached through links).
"""

from __future__ import annotations

import posixpath

from nixcell.plan import SCRATCH_AREAS
from nixcell.sandbox.sbpl import Form, Str, comment, render
from nixcell.sandbox.sbpl import quote as _q

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import MountOp, Plan

EXAMPLE_CELL_DIR = "/private/tmp/nixcell/cell"  # what --dry-run --sbpl shows; a backend: per run
_MACOS_LINKS = ("/tmp", "/var", "/etc")  # -> /private/...
_SCRATCH = {dest: name for name, dest, _mode in SCRATCH_AREAS}
_NIX_DAEMON = "/nix/var/nix/daemon-socket"  # the "shared" store mode's socket
_COVER = ("file-read*", "file-write*", "process-exec*", "file-map-executable")

# What libSystem, dyld and common runtimes read at start-up (CPU count and features, page and
# memory size, OS release for uname). Not kern.bootargs (the boot parameters: /proc/cmdline is
# masked in a Linux cell), not kern.proc.* (other processes).
SYSCTLS = (
    "hw.activecpu",
    "hw.byteorder",
    "hw.cachelinesize",
    "hw.cpufamily",
    "hw.cpusubtype",
    "hw.cputype",
    "hw.l1dcachesize",
    "hw.l2cachesize",
    "hw.logicalcpu",
    "hw.logicalcpu_max",
    "hw.machine",
    "hw.memsize",
    "hw.ncpu",
    "hw.nperflevels",
    "hw.pagesize",
    "hw.physicalcpu",
    "hw.physicalcpu_max",
    "kern.argmax",
    "kern.hostname",
    "kern.maxfilesperproc",
    "kern.ngroups",
    "kern.osproductversion",
    "kern.osrelease",
    "kern.ostype",
    "kern.osvariant_status",
    "kern.osversion",
    "kern.tcsm_available",
    "kern.tcsm_enable",
    "kern.usrstack64",
    "kern.version",
    "machdep.ptrauth_enabled",
    "security.mac.lockdown_mode_state",
    "sysctl.proc_cputype",
    "sysctl.proc_translated",
)
# The one sysctl written: V8 (node) writes it on Apple silicon when it sizes its threads
# (sandbox-runtime allows it for the same reason).
SYSCTLS_WRITTEN = ("kern.tcsm_enable",)
SYSCTL_PREFIXES = ("hw.optional.", "hw.perflevel", "machdep.cpu.")
# Mach services: user and group names (getpwuid, getgrgid) and libSystem's notifications. Not
# trustd, DNS (mDNSResponder: the proxy resolves), cfprefsd, launchservices, logd, the pasteboard.
MACH_SERVICES = (
    "com.apple.system.notification_center",
    "com.apple.system.opendirectoryd.libinfo",
)
SYSTEM_LIBRARIES = (  # libSystem and the dyld shared cache: no macOS process runs without them
    "/System/Cryptexes",  # the cache since macOS 13
    "/System/Library",
    "/System/Volumes/Preboot/Cryptexes",
    "/private/var/db/dyld",  # the cache before macOS 11
    "/private/var/db/oah",  # Rosetta's translations of x86_64 programs
    "/usr/lib",
)
TIMEZONE = ("/private/etc/localtime", "/private/var/db/timezone")
DEVICES_RW = ("/dev/null", "/dev/zero", "/dev/tty", "/dev/stdin", "/dev/stdout", "/dev/stderr")
DEVICES_RO = ("/dev/random", "/dev/urandom")
# A host home (/Users/NAME) seen by the cell keeps macOS's own private places hidden (beside what
# the project layer hides on every system): keychains, browser and mail data, the privacy database.
MACOS_PRIVATE = (
    "Library/Keychains",
    "Library/Cookies",
    "Library/Mail",
    "Library/Messages",
    "Library/Safari",
    "Library/Application Support/com.apple.TCC",
)


def host_path(path: str) -> str:
    """The path macOS matches: ``/tmp``, ``/var`` and ``/etc`` resolved into ``/private``."""
    if any(_within(path, link) for link in _MACOS_LINKS):
        return "/private" + path
    return path


def profile(
    plan: Plan,
    *,
    cell_dir: str = EXAMPLE_CELL_DIR,
    proxy_port: int | None = None,
    tty: str | None = None,
) -> str:
    """The SBPL profile for ``plan``. ``cell_dir``: the per-run directory holding the cell's
    writable areas (canonical: no link in it); ``proxy_port``: the host loopback port of the
    cell's proxy (default: the plan's); ``tty``: the terminal device the cell is given."""
    if not cell_dir.startswith("/"):
        raise ValueError(f"the cell dir must be an absolute path, got {cell_dir!r}")
    if proxy_port is not None and not 0 < proxy_port < 65536:
        raise ValueError(f"not a port: {proxy_port!r}")
    cell_dir = host_path(posixpath.normpath(cell_dir))
    places, notes = _places(plan, cell_dir)
    notes += _limit_notes(plan)
    files, reachable = _file_rules(places)
    forms: list[Form | str] = [
        ("version", 1),
        comment("nixcell cell profile for sandbox-exec (nixcell run --dry-run --sbpl)"),
        comment("the cell's writable areas are directories of its cell dir " + _q(cell_dir)),
        *notes,
        ("deny", "default"),
        *_process(),
        *_system(),
        *_devices(),
        *_closure(plan),
        *files,
        _ancestors([*plan.closure, *reachable, *SYSTEM_LIBRARIES, *TIMEZONE, *DEVICES_RW]),
        *_network(plan, cell_dir, places, proxy_port),
        *_terminal(tty),
    ]
    return "\n".join(f if isinstance(f, str) else render(f) for f in forms) + "\n"


# -- the pieces --------------------------------------------------------------------------------


def _process() -> list[Form | str]:
    return [
        comment("processes: fork; signals and process info only within this sandbox"),
        ("allow", "process-fork"),
        ("allow", "signal", ("target", "same-sandbox")),
        ("allow", "process-info*", ("target", "same-sandbox")),
        ("allow", "sysctl-read", *[("sysctl-name", Str(n)) for n in SYSCTLS],
         *[("sysctl-name-prefix", Str(n)) for n in SYSCTL_PREFIXES]),
        ("allow", "sysctl-write", *[("sysctl-name", Str(n)) for n in SYSCTLS_WRITTEN]),
        ("allow", "mach-lookup", *[("global-name", Str(n)) for n in MACH_SERVICES]),
        comment("POSIX semaphores and shared memory (multiprocessing): names are host-wide"),
        ("allow", "ipc-posix-sem"),
        ("allow", "ipc-posix-shm"),
    ]  # fmt: skip


def _system() -> list[Form | str]:
    return [
        comment("macOS system libraries and time zone data (the closure cannot bring libSystem)"),
        ("allow", "file-read*", "file-map-executable",
         *[("subpath", Str(p)) for p in SYSTEM_LIBRARIES]),
        ("allow", "file-read*", ("literal", Str(TIMEZONE[0])), ("subpath", Str(TIMEZONE[1]))),
    ]  # fmt: skip


def _devices() -> list[Form | str]:
    return [
        ("allow", "file-read*", "file-write*", "file-ioctl",
         *[("literal", Str(d)) for d in DEVICES_RW], ("subpath", Str("/dev/fd"))),
        ("allow", "file-read*", *[("literal", Str(d)) for d in DEVICES_RO]),
    ]  # fmt: skip


def _closure(plan: Plan) -> list[Form | str]:
    if not plan.closure:
        return []
    paths = [("subpath", Str(host_path(p))) for p in plan.closure]
    return [
        comment("the closure: read, and the only programs and libraries the cell may run"),
        ("allow", "file-read*", "process-exec*", "file-map-executable", *paths),
    ]


class _Place:
    """A plan mount op as macOS sees it: the cell path, the host path behind it (None: nothing
    of the host, e.g. a hide or a generated file) and whether it is writable."""

    def __init__(self, dest: str, host: str | None, writable: bool) -> None:
        self.dest, self.host, self.writable = dest, host, writable
        self.holes: list[str] = []  # host paths under ``host`` that later places cover


def _places(plan: Plan, cell_dir: str) -> tuple[list[_Place], list[str]]:
    closure = set(plan.closure)
    places: list[_Place] = []
    notes: list[str] = []
    for op in plan.mounts:
        if op.kind in ("proc", "dev", "dir", "remount-ro") or _within(op.dest, "/proc"):
            continue  # no /proc on macOS; devices have rules of their own; dirs are made
        if op.kind == "ro-bind" and op.src == op.dest and op.dest in closure:
            continue  # the closure's own piece
        scratch = _scratch_name(plan, op)
        source = plan.host_source(op) if op.kind in ("bind", "ro-bind") else None
        if scratch is not None:
            place = _Place(op.dest, f"{cell_dir}/{scratch}", True)
        elif source is None or source == "/dev/null":
            place = _Place(op.dest, None, False)
            if op.kind in ("data", "symlink") or (op.kind == "tmpfs" and op.perms != "0000"):
                what = {"data": "generated file", "symlink": "link"}.get(op.kind, "fresh tmpfs")
                notes.append(comment(f"for the backend: {what} at {_q(op.dest)}"))
        else:
            place = _Place(op.dest, host_path(source), op.kind == "bind")
        if place.host is not None and place.host != place.dest:
            notes.append(comment(f"for the backend: {_q(place.dest)} is {_q(place.host)}"))
        places.append(place)
        if place.host is not None and _is_home(place.host):
            places += [_Place(place.dest + "/" + p, None, False) for p in MACOS_PRIVATE]
    return places, notes


def _limit_notes(plan: Plan) -> list[str]:
    """What a profile cannot hold: a backend enforces it by other means or refuses."""
    held = {"memory": plan.limits.memory, "cpus": plan.limits.cpus, "pids": plan.limits.pids,
            "disk": plan.limits.disk}  # fmt: skip
    notes = [
        comment(f"for the backend: --{name} is set; sandbox-exec cannot bound it (refuse)")
        for name, value in held.items()
        if value is not None
    ]
    store = getattr(plan, "store", "closure")  # (the store modes' plans carry it)
    if getattr(plan, "nix_root", None):
        notes.append(comment(f"for the backend: a Nix root of its own ({plan.nix_root}): "
                             "its paths cannot be shown at /nix/store here (refuse)"))  # fmt: skip
    if store in ("copy", "isolated"):
        notes.append(comment(f"for the backend: store mode {store}: no copy can be shown at "
                             "/nix/store without a mount namespace (refuse)"))  # fmt: skip
    return notes


def _is_home(path: str) -> bool:
    """A user's home on macOS: /Users/NAME."""
    parent, name = posixpath.split(path)
    return parent == "/Users" and name not in ("", "Shared")


def _scratch_name(plan: Plan, op: MountOp) -> str | None:
    """The SCRATCH_AREAS name of a tmpfs area (or of its bind from --disk's tmpfs)."""
    name = _SCRATCH.get(op.dest)
    if name is None:
        return None
    if op.kind == "tmpfs" and op.perms != "0000":
        return name
    if op.kind == "bind" and plan.scratch is not None and (op.src or "").endswith("/" + name):
        return name
    return None


def _file_rules(places: list[_Place]) -> tuple[list[Form | str], list[str]]:
    """Rules for the places that end up visible, and their host paths.

    First the mount table the plan makes, in its order: a place at cell path D makes a hole in
    the place that showed D (the host path there), and ends every place at or inside D. Then
    each visible place's host path is allowed and each hole denied, shallowest first (at one
    path a hole, then a read-only allow, then a read-write one): the deepest rule above a path
    decides it, so a path is open when any visible place shows it, shut when its hole is
    deepest — where two views of one host path disagree, the narrower one wins."""
    live: list[_Place] = []  # places with a host path the cell still sees
    for place in places:
        holder = next((p for p in reversed(live) if _strictly_within(place.dest, p.dest)), None)
        if holder is not None:
            holder.holes.append(str(holder.host) + place.dest[len(holder.dest) :])
        live = [p for p in live if not _within(p.dest, place.dest)]
        if place.host is not None:
            live.append(place)
    facts = {(h, 0) for p in live for h in p.holes}
    facts |= {(str(p.host), 2 if p.writable else 1) for p in live}
    rules: list[Form | str] = [comment("the plan's mounts as seen at the end, deepest last")]
    for path, rank in sorted(facts, key=lambda f: (f[0].count("/"), f[1], f[0])):
        if rank == 0:
            rules.append(("deny", *_COVER, ("subpath", Str(path))))
        elif rank == 1:
            rules.append(("allow", "file-read*", ("subpath", Str(path))))
        else:  # its own directory stays, as a mount point does
            rules.append(("allow", "file-read*", "file-write*", ("subpath", Str(path))))
            rules.append(("deny", "file-write-unlink", "file-write-create",
                          ("literal", Str(path))))  # fmt: skip
    return rules, sorted({str(p.host) for p in live})


def _ancestors(paths: list[str]) -> Form:
    """Metadata of the directories above every reachable path (realpath walks them), and of
    macOS's own links into /private."""
    above: set[str] = {"/", *_MACOS_LINKS}
    for path in paths:
        while path not in ("/", ""):  # (every path here is absolute)
            path = posixpath.dirname(path)
            above.add(path)
    return ("allow", "file-read-metadata", *[("literal", Str(p)) for p in sorted(above)])


def _network(plan: Plan, cell_dir: str, places: list[_Place], port: int | None) -> list:
    rules: list[Form | str] = [
        comment("unix sockets: made freely, bound and reached only in the cell dir"),
        ("allow", "system-socket", ("socket-domain", "AF_UNIX")),
        ("allow", "network-bind", ("local", "unix-socket", ("subpath", Str(cell_dir)))),
        ("allow", "network-outbound", ("remote", "unix-socket", ("subpath", Str(cell_dir)))),
    ]
    daemon = [p.host for p in places if p.host and _within(p.host, _NIX_DAEMON)]
    if daemon:
        rules.append(comment("the Nix daemon (store mode shared)"))
        sockets = [("remote", "unix-socket", ("subpath", Str(h))) for h in daemon]
        rules.append(("allow", "network-outbound", *sockets))
    if plan.network is not None:
        port = int(port if port is not None else plan.network["port"])  # type: ignore[call-overload]
        rules.append(comment("network: the cell's proxy alone, on the host's loopback"))
        rules.append(("allow", "network-outbound", ("remote", "ip", Str(f"localhost:{port}"))))
    elif getattr(plan, "host_network", False) or "net" not in plan.namespaces:
        rules.append(comment("network: the host's (asked for: host network)"))
        rules.append(("allow", "network*"))
    else:
        rules.append(comment("network: none"))
    return rules


def _terminal(tty: str | None) -> list[Form | str]:
    if tty is None:
        return []
    return [
        comment("the terminal the backend gives the cell (no other pty: no /dev/ttys*)"),
        ("allow", "file-read*", "file-write*", "file-ioctl", ("literal", Str(host_path(tty)))),
    ]


def _within(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _strictly_within(path: str, top: str) -> bool:
    return path != top and _within(path, top)
