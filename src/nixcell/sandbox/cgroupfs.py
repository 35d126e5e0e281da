"""Where this process may create cgroups, decided from a few reads of /proc and the cgroupfs;
plus the kernel file formats and the few small operations on one cgroup directory.

The decisions (``discover``) only parse kernel text and inspect a directory tree, so they are
unit-tested against trees laid out like a cgroupfs in a temporary directory. The operations at
the bottom (``prepare_v2_base``, ``freeze``, ``lock_dir``…) are the only code here that writes.

Where cells go, per controller (a controller lives in exactly one hierarchy; on hybrid hosts
each controller mounted as cgroup v1 uses v1, the rest use the cgroup2 mount):

* v1: ``<hierarchy>/<own cgroup>/nixcell/<cell>``. Nesting under the cgroup nixcell itself runs
  in (``/`` on a plain v1 host, giving ``/sys/fs/cgroup/<ctrl>/nixcell/<cell>``) keeps a cell
  inside every limit that already applies to nixcell: moving it to the hierarchy root would let
  it escape them. v1 cannot be delegated safely, so it needs write access (in practice root).
* v2: ``<base>/nixcell-<cell>`` where base is ``NIXCELL_CGROUP_ROOT`` if set, else the cgroup
  this process is in (its parent if that is our own ``nixcell-main`` leaf). Base must be
  writable (delegated to us) and list the controllers in ``cgroup.controllers`` (the parent
  delegated them). Enabling them in ``cgroup.subtree_control`` hits the "no internal processes"
  rule when base holds processes (EBUSY): then every process of base — normally just nixcell,
  alone in its ``systemd-run --scope -p Delegate=yes`` scope — moves into the leaf
  ``<base>/nixcell-main`` first. That leaf stays while nixcell runs (nixcell lives in it) and
  goes away with the scope.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from nixcell.quiet import Frozen, LazyLogger

log = LazyLogger(__name__)  # (logging is imported only when something is logged)

LEAF = "nixcell-main"
V2_PREFIX = "nixcell-"
V1_PARENT = "nixcell"
ROOT_ENV = "NIXCELL_CGROUP_ROOT"
_DELEGATE_HINT = (
    "run under `systemd-run --user --scope -p Delegate=yes nixcell …` "
    f"or set {ROOT_ENV} to a delegated cgroup"
)
_OCTAL = frozenset("01234567")


class Mount(Frozen):
    """One cgroup filesystem mount from /proc/self/mountinfo."""

    _fields = ("mount_point", "root", "version", "controllers")
    __slots__ = _fields
    mount_point: Path
    root: str  # the cgroup shown at mount_point (not "/" for bind mounts of a subtree)
    version: str  # "v1" | "v2"
    controllers: frozenset[str]  # v1 only: from the super options

    def __init__(
        self, mount_point: Path, root: str, version: str, controllers: frozenset[str] = frozenset()
    ) -> None:
        self._set(mount_point=mount_point, root=root, version=version, controllers=controllers)


class ControllerSite(Frozen):
    """Where cells get a cgroup for one controller, or why they cannot."""

    _fields = ("controller", "version", "base", "reason")
    __slots__ = _fields
    controller: str
    version: str | None  # "v1" | "v2" | None when unusable
    base: Path | None  # v1: the ``nixcell`` parent dir; v2: the delegated cgroup
    reason: str | None  # None when usable: "why; how to fix"

    def __init__(
        self, controller: str, version: str | None, base: Path | None, reason: str | None = None
    ) -> None:
        self._set(controller=controller, version=version, base=base, reason=reason)

    @property
    def usable(self) -> bool:
        return self.reason is None

    def cell_dir(self, cell_id: str) -> Path:
        assert self.base is not None
        return self.base / (cell_id if self.version == "v1" else V2_PREFIX + cell_id)


class CgroupHost(Frozen):
    """What ``nixcell doctor`` and ``--dry-run`` show, keyed by controller.

    ``freezer`` appears only when usable: it is an optional helper of ``kill_all`` on v1."""

    _fields = ("version", "controllers")
    __slots__ = _fields
    version: str  # "v1" (any limit controller on v1, hybrid included) | "v2" | "none"
    controllers: Mapping[str, ControllerSite]

    def __init__(self, version: str, controllers: Mapping[str, ControllerSite] | None = None):
        self._set(version=version, controllers={} if controllers is None else controllers)


def _unescape(text: str) -> str:
    """mountinfo's ``\\ooo`` escapes (space, tab, newline, backslash) decoded; without ``re``,
    which the warm path does not otherwise import (~4 ms)."""
    first, *rest = text.split("\\")
    out = [first]
    for part in rest:
        if len(part) >= 3 and _OCTAL.issuperset(part[:3]):
            out.append(chr(int(part[:3], 8)) + part[3:])
        else:
            out.append("\\" + part)
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts, in mount order."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype = _unescape(fields[3]), Path(_unescape(fields[4])), tail[0]
        if fstype == "cgroup2":
            mounts.append(Mount(point, root, "v2"))
        elif fstype == "cgroup":
            options = frozenset(tail[2].split(",")) - {"rw", "ro"}
            mounts.append(Mount(point, root, "v1", options))
    return mounts


def parse_proc_cgroup(text: str) -> tuple[dict[str, str], str | None]:
    """(v1 controller -> cgroup path, v2 path or None) from /proc/<pid>/cgroup."""
    v1: dict[str, str] = {}
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if hid == "0" and not controllers:
            v2 = path
        else:
            for name in controllers.split(","):
                v1[name] = path
    return v1, v2


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (memory.events, memory.oom_control, cgroup.events, pids.events)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


def cgroup_dir(mount: Mount, path: str) -> Path | None:
    """The directory of cgroup ``path`` under ``mount``, or None if the mount does not show it."""
    root = mount.root.rstrip("/")
    if path != root and not path.startswith(root + "/"):
        return None
    return mount.mount_point / path[len(root) :].lstrip("/")


def read_text(path: Path) -> str:
    """Undecodable bytes kept as surrogates: /proc/self/mountinfo lists every host mount, and
    one mount point whose name is not UTF-8 (a user's directory, a FUSE or Docker volume) must
    not stop nixcell — a path read back this way still names the same bytes to ``os``."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def read_words(path: Path) -> set[str]:
    """Whitespace-separated words of a file; empty when it does not exist."""
    try:
        return set(read_text(path).split())
    except FileNotFoundError:
        return set()


def read_pids(path: Path) -> list[int]:
    """``cgroup.procs`` of a cgroup dir; empty when the dir is gone."""
    try:
        return [int(x) for x in read_text(path / "cgroup.procs").split()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def write_value(path: Path, value: str) -> None:
    """One write(2): cgroupfs parses each write on its own."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _writable(path: Path) -> bool:
    return os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0))


def _v1_site(controller: str, mount: Mount, own: str | None, uid: int) -> ControllerSite:
    own_dir = cgroup_dir(mount, own or "/")
    if own_dir is None:  # our cgroup lies outside what this mount shows: use what it shows
        own_dir = mount.mount_point
    base = own_dir / V1_PARENT
    probe = base if base.is_dir() else own_dir
    if not _writable(probe):
        return ControllerSite(
            controller,
            None,
            None,
            f"cgroup v1 {controller} hierarchy {probe} is not writable by uid {uid} "
            "(cgroup v1 cannot be delegated safely); run nixcell as root or on a cgroup v2 host",
        )
    return ControllerSite(controller, "v1", base)


def check_v2_base(base: Path, controller: str, uid: int, shown: str) -> str | None:
    """Why ``controller`` cannot be used in v2 cgroup ``base`` (``shown`` in messages), or None."""
    try:
        available = read_text(base / "cgroup.controllers").split()
    except OSError as e:
        return f"cgroup v2 subtree {shown} is unreadable ({e.strerror}); {_DELEGATE_HINT}"
    if not all(_writable(base / f) for f in (".", "cgroup.procs", "cgroup.subtree_control")):
        return f"cgroup v2 subtree {shown} is not delegated to uid {uid}; {_DELEGATE_HINT}"
    if controller not in available:
        return (
            f"the {controller} controller is not delegated to cgroup v2 subtree {shown} "
            f"(not in its cgroup.controllers); {_DELEGATE_HINT}"
        )
    return None


def v2_base(mount: Mount, own: str | None, env_root: str | None) -> tuple[Path | None, str]:
    """(base dir or None, how to name it in messages) for the cgroup2 hierarchy."""
    if env_root:
        return Path(env_root), env_root
    if own is None:
        return None, "(unknown)"
    if own.rstrip("/").endswith("/" + LEAF):
        own = own.rstrip("/").rsplit("/", 1)[0] or "/"
    return cgroup_dir(mount, own), own


def discover(
    mountinfo: str,
    proc_cgroup: str,
    *,
    env_root: str | None = None,
    uid: int | None = None,
    controllers: Iterable[str] = ("memory", "pids", "cpu", "freezer"),
) -> CgroupHost:
    """Decide per controller where cells may get a cgroup (no writes)."""
    uid = os.geteuid() if uid is None else uid
    mounts = parse_mountinfo(mountinfo)
    own_v1, own_v2 = parse_proc_cgroup(proc_cgroup)
    unified = next((m for m in mounts if m.version == "v2"), None)
    sites: dict[str, ControllerSite] = {}
    for ctrl in controllers:
        v1 = next((m for m in mounts if m.version == "v1" and ctrl in m.controllers), None)
        if v1 is not None:
            sites[ctrl] = _v1_site(ctrl, v1, own_v1.get(ctrl), uid)
            if ctrl == "freezer" and not sites[ctrl].usable:
                del sites[ctrl]
        elif ctrl == "freezer":
            continue  # optional; v2 has cgroup.freeze and cgroup.kill in every cgroup
        elif unified is None:
            reason = f"the {ctrl} controller is not mounted (neither cgroup v1 nor cgroup2)"
            sites[ctrl] = ControllerSite(ctrl, None, None, reason)
        else:
            base, shown = v2_base(unified, own_v2, env_root)
            if base is None:
                reason = f"this process's cgroup {shown} is not visible under {unified.mount_point}"
            else:
                reason = check_v2_base(base, ctrl, uid, shown)
            sites[ctrl] = ControllerSite(ctrl, None if reason else "v2", base, reason)
    limit_ctrls = {"memory", "pids", "cpu"}
    if any(m.version == "v1" and m.controllers & limit_ctrls for m in mounts):
        version = "v1"
    else:
        version = "v2" if unified is not None else "none"
    return CgroupHost(version, sites)


def describe_host(controllers: Iterable[str] = ("memory", "pids", "cpu", "freezer")) -> CgroupHost:
    """The running host, read from /proc/self (two reads plus a few stats per controller)."""
    return discover(
        read_text(Path("/proc/self/mountinfo")),
        read_text(Path("/proc/self/cgroup")),
        env_root=os.environ.get(ROOT_ENV) or None,
        controllers=controllers,
    )


def move_into_leaf(base: Path, leaf: str = LEAF, *, rounds: int = 50) -> int:
    """Move every process of ``base`` into ``base/leaf``; returns how many moved."""
    target = base / leaf
    target.mkdir(exist_ok=True)
    moved = 0
    for _ in range(rounds):  # a process may fork while we move: repeat until base is empty
        pids = read_pids(base)
        if not pids:
            return moved
        for pid in pids:
            try:
                write_value(target / "cgroup.procs", str(pid))
                moved += 1
            except ProcessLookupError:
                pass
    raise OSError(errno.EBUSY, f"processes keep appearing in {base}")


def prepare_v2_base(base: Path, controllers: Iterable[str]) -> None:
    """Enable ``controllers`` for children of ``base``, moving its processes to a leaf if needed."""
    wanted = sorted(set(controllers) - read_words(base / "cgroup.subtree_control"))
    if not wanted:
        return
    value = " ".join("+" + c for c in wanted)
    try:
        write_value(base / "cgroup.subtree_control", value)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        moved = move_into_leaf(base)
        log.info("moved %d process(es) of %s into %s (cgroup v2 rule)", moved, base, LEAF)
        write_value(base / "cgroup.subtree_control", value)


def oom_kills_v1(oom_control: str, failcnt: str = "0") -> int:
    """OOM kills from v1 ``memory.oom_control``; old kernels lack ``oom_kill``: infer from
    ``failcnt`` > 0 while ``under_oom``."""
    values = parse_keyed(oom_control)
    if "oom_kill" in values:
        return values["oom_kill"]
    return int(values.get("under_oom", 0) > 0 and int(failcnt.strip() or 0) > 0)


def oom_kills_v2(memory_events: str) -> int:
    return parse_keyed(memory_events).get("oom_kill", 0)


def read_oom_kills(path: Path, version: str) -> int:
    """OOM kills recorded by the memory cgroup at ``path``; 0 when it is gone."""
    try:
        if version == "v2":
            return oom_kills_v2(read_text(path / "memory.events"))
        failcnt = read_text(path / "memory.failcnt") if (path / "memory.failcnt").exists() else "0"
        return oom_kills_v1(read_text(path / "memory.oom_control"), failcnt)
    except (FileNotFoundError, NotADirectoryError):
        return 0


def freeze(path: Path, version: str, frozen: bool, timeout: float = 1.0) -> bool:
    """Freeze or thaw a cgroup (v1: a freezer dir); True once it reports frozen."""
    if version == "v1":
        name, value = "freezer.state", "FROZEN" if frozen else "THAWED"
    else:
        name, value = "cgroup.freeze", "1" if frozen else "0"
    write_value(path / name, value)
    deadline = time.monotonic() + timeout
    while frozen:
        if version == "v1" and read_text(path / name).strip() == "FROZEN":
            return True
        if version == "v2" and parse_keyed(read_text(path / "cgroup.events")).get("frozen"):
            return True
        if time.monotonic() >= deadline:
            log.warning("cgroup %s did not freeze within %.1fs", path, timeout)
            break
        time.sleep(0.005)
    return False


def lock_dir(path: Path, *, block: bool) -> int | None:
    """An fd holding ``flock`` on a cgroup dir; None when another process holds it or the
    dir is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def rmdir_if_empty(path: Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except OSError:  # busy (tasks or other cells), already gone, or not ours
        return False


def ensure_v1_parent(parent: Path, memory: bool) -> None:
    """Make the v1 ``nixcell`` parent; on pre-5.x kernels, make it account its children."""
    parent.mkdir(exist_ok=True)
    if memory:
        try:
            if read_text(parent / "memory.use_hierarchy").strip() == "0":
                write_value(parent / "memory.use_hierarchy", "1")
        except OSError as e:
            log.debug("memory.use_hierarchy of %s left alone: %s", parent, e)
