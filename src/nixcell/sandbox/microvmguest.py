# ruff: noqa: E501 - the guest shell scripts read better with their lines whole
"""The microVM's guest side: ``/init`` (in the initramfs, ``microvminitrd.py``), and the
per-cell script that turns a Plan's mounts into the guest's root.

``/init`` is the same for every cell. Everything about one cell (mounts, env, uid, command,
limits) comes from ``cell.sh`` on a per-cell read-only 9p share: ``cell_script(plan)`` writes
it from the plan alone (pure; ``--dry-run --json`` shows it).

The guest: ``/init`` (root, PID 1) loads the modules, finds the serial ports by name, mounts the
closure (the ``store`` 9p share: only the closure's paths, staged by ``microvmhost.py``) at
``/nix/store`` and sources ``cell.sh``, which builds the plan's root in the initramfs itself,
then removes ``/init`` and ``/.nixcell`` (busybox goes on running as ``/proc/self/exe``), keeping
the exec helper (``microvmexec.c``) and the plan's seccomp program open as fds 9 and 8. The
helper starts the program as bwrap would: an empty bounding set, the cell's own host uid (never
root in the guest), no-new-privs, the plan's seccomp program; in a pids cgroup when ``--pids``
asks, its stdio on three virtio serial ports. Its exit status (128+N for
a signal) and whether the guest's OOM killer ran go back on a fourth port, then the guest
powers off.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shlex

from nixcell.errors import SandboxError

log = logging.getLogger(__name__)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan

PORTS = ("stdin", "stdout", "stderr", "ctl", "proxy")
STATUS_MARK = "nixcell-exit"
PROBE_MARK = "nixcell-kvm-ok"

INIT = r"""#!/.nixcell/busybox sh
# nixcell microVM init: generic; the cell's part is cell.sh on the cfg share.
export PATH=/.nixcell/none
/.nixcell/busybox mount -t proc proc /proc  # (applets run as /proc/self/exe from here on)
mount -t devtmpfs dev /dev
mount -t sysfs sys /sys
for m in /.nixcell/modules/*.ko; do insmod "$m" || echo "nixcell: insmod $m failed" >/dev/hvc0; done
if grep -q nixcell.probe /proc/cmdline; then
  echo nixcell-kvm-ok >/dev/hvc0; poweroff -f
fi
port() {
  for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "nixcell.$1" ] && { echo "/dev/${d##*/}"; return 0; }
  done
  return 1
}
n=0
while ! port ctl >/dev/null || [ ! -e "$(port ctl)" ]; do
  n=$((n+1)); [ $n -gt 2000 ] && { echo "nixcell: no control port" >/dev/hvc0; poweroff -f; }
  usleep 5000
done
for p in stdin stdout stderr; do
  while ! port $p >/dev/null || [ ! -e "$(port $p)" ]; do usleep 5000; done
done
exec 3<"$(port stdin)" 4>"$(port stdout)" 5>"$(port stderr)" 6>"$(port ctl)"
PROXY_PORT_DEV=$(port proxy)
mkdir -p /nix/store /.nixcell/cfg
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose store /nix/store
mount -t 9p -o trans=virtio,version=9p2000.L,ro cfg /.nixcell/cfg
ip link set lo up
fail() { rc=$1; shift; echo "nixcell: $*" >&5; printf '%s %s 0\n' nixcell-exit "$rc" >&6; poweroff -f; }
. /.nixcell/cfg/cell.sh
"""

# cell.sh's fixed tail: runs ``$@`` (set by the head) and reports.
RUN = r"""
resolve() {
  case "$1" in */*) echo "$1"; return 0;; esac
  old=$IFS; IFS=:
  for d in $CELL_PATH; do [ -f "$d/$1" ] && [ -x "$d/$1" ] && { IFS=$old; echo "$d/$1"; return 0; }; done
  IFS=$old; return 1
}
prog=$(resolve "$1") || fail 127 "$1: command not found in the cell"
shift
before=$(awk '$1=="oom_kill"{print $2}' /proc/vmstat)
(
  [ -n "$CELL_PIDS" ] && { echo 0 >&7 || { echo "nixcell: cannot join the pids cgroup" >&2; exit 126; }; }
  cd "$CELL_CWD" || exit 126
  exec 7>&-
  exec env -i "$@"
) <&3 >&4 2>&5 3<&- 4>&- 5>&- 6>&- &
child=$!
exec 8<&- 9<&-
"""

TAIL = r"""
wait $child
rc=$?
after=$(awk '$1=="oom_kill"{print $2}' /proc/vmstat)
kill -9 -1 2>/dev/null
oom=0; [ "$after" != "$before" ] && oom=1
printf '%s %s %s\n' nixcell-exit "$rc" "$oom" >&6
poweroff -f
"""


def _q(text: str) -> str:
    return shlex.quote(text)


def cell_script(
    plan: Plan, user: tuple[int, int] | None = None, data_dir: str = "/.nixcell/cfg/data"
) -> tuple[str, dict[str, bytes]]:
    """``cell.sh`` for ``plan`` and the data files it copies (name -> bytes): the guest's root
    built op by op, as the plan orders it. The plan must have no refusals (``refusals``).

    ``user``: the uid/gid the program runs as in the guest: the cell's own host uid (QEMU's),
    so that files of a host directory shared over 9p (idmapped to that uid) are its own; the
    plan's /etc/passwd and /etc/group name it (as under docker)."""
    from nixcell.planview import SCRATCH_AREAS
    from nixcell.sandbox.dockerspec import _cell_files

    uid, gid = user if user is not None else (plan.uid, plan.gid)
    shares = {dest: index for index, (dest, _, _) in enumerate(host_binds(plan))}
    lines = [
        "# nixcell cell.sh: generated from the plan",
        f"hostname {_q(plan.hostname)}",
        "sysctl -qw vm.overcommit_memory=1 kernel.dmesg_restrict=1 kernel.kptr_restrict=2",
    ]
    if plan.disable_userns:
        lines.append("sysctl -qw user.max_user_namespaces=0")
    if plan.limits.pids is not None:
        lines += [
            "mkdir -p /.nixcell/cg && mount -t cgroup2 none /.nixcell/cg",
            "echo +pids >/.nixcell/cg/cgroup.subtree_control; mkdir /.nixcell/cg/cell",
            f"echo {int(plan.limits.pids)} >/.nixcell/cg/cell/pids.max",
            "exec 7>/.nixcell/cg/cell/cgroup.procs; umount -l /.nixcell/cg; rmdir /.nixcell/cg",
        ]
    areas = {dest: (name, mode) for name, dest, mode in SCRATCH_AREAS}
    if plan.scratch is not None:
        size = int(plan.scratch)
        lines.append(
            f"mkdir -p /.nixcell/scratch && mount -t tmpfs -o size={size},mode=0755 "
            "scratch /.nixcell/scratch"
        )
    if plan.network is not None:
        from nixcell.plan import PROXY_PORT

        port = int(plan.network.get("port") or PROXY_PORT)  # type: ignore[call-overload]
        lines.append(
            '[ -x /.nixcell/relay ] && [ -n "$PROXY_PORT_DEV" ] || fail 126 "no guest relay"'
        )
        lines.append(
            f'nsenter -S 65534 -G 65534 -- /.nixcell/relay 127.0.0.1 {port} 8<>"$PROXY_PORT_DEV"'
            " </dev/null >/dev/null 2>&5 3<&- 4>&- 6>&- &"
        )
        listening = f":{port:04X} 00000000:0000 0A"
        lines.append(
            f"n=0; until grep -q '{listening}' /proc/net/tcp; do n=$((n+1)); "
            '[ $n -gt 1000 ] && fail 126 "the guest relay did not start"; usleep 5000; done'
        )
    files: dict[str, bytes] = {}
    dev_done = False
    for op in plan.mounts:
        dest = posixpath.normpath(op.dest)
        d = _q(dest)
        if op.kind == "ro-bind" and op.src == plan.store_source(dest) and _in_closure(plan, dest):
            continue  # the store share holds exactly the closure
        if op.kind == "proc":
            lines.append(f"mkdir -p {d}; mountpoint -q {d} || mount -t proc proc {d}")
        elif op.kind == "dev":
            dev_done = True
            lines += _dev(d)
        elif op.kind == "tmpfs":
            mode = op.perms or "0755"
            owner = "" if dest.startswith("/proc/") else f",uid={uid},gid={gid}"
            size = f",size={op.size}" if op.size is not None else ""
            lines.append(f"mkdir -p {d} && mount -t tmpfs -o mode={mode}{owner}{size} tmpfs {d}")
        elif op.kind == "bind" and scratch_area(plan, op) is not None:
            name, mode = areas[dest]
            s = f"/.nixcell/scratch/{name}"
            lines.append(
                f"mkdir -p {d} {s} && chmod {mode:o} {s} && chown {uid}:{gid} {s} && "
                f"mount --bind {s} {d}"
            )
        elif op.kind == "dir":
            lines.append(f"mkdir -p {d} && chmod {op.perms or '0755'} {d}")
        elif op.kind == "symlink":
            lines.append(f"mkdir -p {_q(posixpath.dirname(dest))} && ln -sfn {_q(str(op.src))} {d}")
        elif op.kind == "data":
            name = str(len(files))
            files[name] = _cell_files(op, (uid, gid))
            lines.append(
                f"mkdir -p {_q(posixpath.dirname(dest))} && cp {data_dir}/{name} {d} && "
                f"chmod {op.perms or '0444'} {d}"
            )
        elif op.kind == "ro-bind" and op.src in ("/dev/null", dest):
            src = _q(str(op.src))
            lines.append(
                f"[ -e {d} ] && mount --bind {src} {d} && mount -o remount,bind,ro {d}"
                " 2>/dev/null || true"
            )
        elif op.kind in ("bind", "ro-bind") and dest in shares:
            ro = "ro" if op.kind == "ro-bind" else "rw"
            lines.append(
                f"mkdir -p {d} && mount -t 9p -o trans=virtio,version=9p2000.L,{ro},"
                f"msize=262144 bind{shares[dest]} {d}"
            )
        elif op.kind == "ro-bind" and host_file(_source(plan, op)) is not None:
            name = str(len(files))
            files[name] = host_file(_source(plan, op)) or b""
            lines.append(
                f"mkdir -p {_q(posixpath.dirname(dest))} && cp {data_dir}/{name} {d} && chmod 0444 {d}"
            )
        elif op.kind == "remount-ro":
            if dest == "/":
                lines.append(_HIDE_INIT)
            lines.append(f"mount -o remount,ro {d} 2>/dev/null || mount -o remount,bind,ro {d}")
        else:
            raise SandboxError(f"the microvm backend cannot make a {op.kind} mount at {dest}")
    if not dev_done:
        lines += _dev("/dev")
    if not any(op.kind == "remount-ro" and op.dest == "/" for op in plan.mounts):
        lines.append(_HIDE_INIT)
    env = [f"{k}={v}" for k, v in plan.env.items()]
    lines += [
        f"CELL_PATH={_q(plan.env.get('PATH', ''))}",
        f"CELL_CWD={_q(plan.cwd)}",
        f"CELL_PIDS={'1' if plan.limits.pids is not None else ''}",
        "set -- " + " ".join(_q(a) for a in plan.command),
    ]
    run = RUN.replace(
        'exec env -i "$@"',
        "exec env -i " + " ".join(_q(e) for e in env)
        + f' {EXEC_FD_PATH} {int(uid)} {int(gid)} {FILTER_FD} "$prog" "$@"',
    )  # fmt: skip
    return "\n".join(lines) + "\n" + run + TAIL, files


# The plan's seccomp program on the cfg share (written by the host launcher, bytes as bwrap's
# --seccomp FD gets them) and the exec helper in the initramfs: kept open across the hiding below
# (fds 8 and 9; the helper marks every fd above 2 close-on-exec before the program runs).
SECCOMP_FILE = "seccomp.bpf"
FILTER_FD, EXEC_FD = 8, 9
EXEC_FD_PATH = f"/proc/self/fd/{EXEC_FD}"
_KEEP_EXEC = (
    f"[ -f /.nixcell/exec ] && [ -s /.nixcell/cfg/{SECCOMP_FILE} ] || "
    'fail 126 "the guest has no exec helper or seccomp program: refusing to run unfiltered"; '
    f"exec {FILTER_FD}</.nixcell/cfg/{SECCOMP_FILE} {EXEC_FD}</.nixcell/exec; "
)
# After the root is built: the init's own files go (busybox keeps running from memory).
_HIDE_INIT = _KEEP_EXEC + (
    "chmod 0755 /; rmdir /root 2>/dev/null; umount -l /.nixcell/cfg; rmdir /.nixcell/cfg; umount -l /.nixcell/scratch 2>/dev/null; rmdir /.nixcell/scratch 2>/dev/null; umount -l /sys 2>/dev/null; rmdir /sys 2>/dev/null; "
    "rm -rf /init /.nixcell/modules /.nixcell/busybox /.nixcell/relay /.nixcell/exec; rmdir /.nixcell"
)


def _dev(d: str) -> list[str]:
    """A minimal /dev (bwrap's set), on a tmpfs over the devtmpfs (which init's fds still hold)."""
    return [
        f"umount -l {d}; mount -t tmpfs -o mode=0755,size=65536 dev {d}",
        f"cd {d} && mknod -m 666 null c 1 3 && mknod -m 666 zero c 1 5 && mknod -m 666 full c 1 7"
        " && mknod -m 666 random c 1 8 && mknod -m 666 urandom c 1 9 && mknod -m 666 tty c 5 0"
        " && ln -s /proc/self/fd fd && ln -s fd/0 stdin && ln -s fd/1 stdout && ln -s fd/2 stderr"
        " && mkdir -m 1777 shm && mkdir pts && cd /",
    ]


MAX_COPY = 4 << 20


def host_file(path: str) -> bytes | None:
    """A small regular host file a ro-bind names (the proxy's CA bundle): copied into the
    guest, read-only. Opened without following links; None for anything else."""
    import stat

    if not path.startswith("/") or path == "/dev/null" or path.startswith("/proc/"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_COPY:
            return None
        return os.read(fd, MAX_COPY)
    finally:
        os.close(fd)


def _source(plan: Plan, op: object) -> str:
    from nixcell.planview import staged_source

    return str(staged_source(plan.stage, str(getattr(op, "src", ""))))


def host_binds(plan: Plan) -> list[tuple[str, str, bool]]:
    """(dest, host source, read-only) of each host directory the plan binds: one 9p share each
    (a root-run cell's staged binds resolved to their sources)."""
    import stat

    from nixcell.planview import staged_source

    found = []
    for op in plan.mounts:
        if op.kind not in ("bind", "ro-bind") or scratch_area(plan, op) is not None:
            continue
        src = str(op.src)
        if src == "/dev/null" or src.startswith("/proc/") or _in_closure(plan, src):
            continue
        source = str(staged_source(plan.stage, src))
        try:
            is_dir = stat.S_ISDIR(os.lstat(source).st_mode)
        except OSError:
            is_dir = False
        if is_dir:
            found.append((posixpath.normpath(op.dest), source, op.kind == "ro-bind"))
    return found


def scratch_area(plan: Plan, op: object) -> str | None:
    """The --disk area a bind op stands for (its host source is the scratch tmpfs), or None."""
    from nixcell.planview import SCRATCH_AREAS

    src, dest = str(getattr(op, "src", "")), posixpath.normpath(str(getattr(op, "dest", "")))
    if plan.scratch is None:
        return None
    for name, where, _ in SCRATCH_AREAS:
        if dest == where and posixpath.basename(src) == name:
            return name
    return None


def _in_closure(plan: Plan, path: str) -> bool:
    """``path`` (a store path, or the host file behind one under the Nix root) is the
    closure's."""
    root = plan.nix_root
    if root and path.startswith(root + "/nix/store/"):
        path = path[len(root) :]
    return any(path == p or path.startswith(p + "/") for p in plan.closure)
