"""The microvm backend: a cell as a QEMU virtual machine with a kernel of its own.

Debian's QEMU and kernel, an initramfs nixcell builds from busybox (``microvmguest.py``), the
closure — only its paths — over a read-only 9p share staged in a private mount namespace
(``microvmhost.py``), no NIC at all (``-nodefaults``, no ``-netdev``). stdin, stdout, stderr
and a control port are virtio serial ports on socket pairs nixcell holds (``microvmcell.py``);
the exit status comes back on the control port. ``--memory`` is the guest's whole RAM (its
kernel counts against it), ``--cpus`` its vCPUs, ``--pids`` a pids cgroup inside, ``--disk``
the size of the one tmpfs holding every writable area. The program runs as bwrap would start
it: an empty bounding set, no-new-privs, the plan's own seccomp program (``microvmexec.c``, a
static helper in the initramfs; without gcc to build it every plan is refused). QEMU runs as
the cell's unprivileged host uid. KVM when ``/dev/kvm`` boots a real guest (probed once, the
answer cached), else TCG with a one-line notice. Direct kernel boot, ``quiet``, q35 (``-M
microvm`` hangs under TCG here: DESIGN.md 8). Never chosen by ``--backend auto``.
"""

from __future__ import annotations

import logging
import math
import os
import shutil

from nixcell.errors import SandboxError
from nixcell.sandbox.backends import Availability

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan

log = logging.getLogger(__name__)
QEMU = "qemu-system-x86_64"
STAGE = "/run/nixcell/microvm/stage"  # empty on the host; each cell's own tmpfs in its namespace
MIN_MEMORY = 96 << 20  # the guest kernel and init need ~45 MiB of the guest's RAM
DEFAULT_MEMORY = 512 << 20
NAME_PREFIX = "nixcell-vm."
CMDLINE = (
    "console=hvc0 quiet loglevel=3 panic=-1 rdinit=/init tsc=reliable no_timer_check "
    "i8042.noaux i8042.nomux i8042.nopnp i8042.noprobe 8250.nr_uarts=0 random.trust_cpu=on"
)
SHARE = "security_model=none,readonly=on"
CHANNELS = ("console", "stdin", "stdout", "stderr", "ctl", "proxy")


INITRD_NOTE = "/proc/self/fd/<initramfs memfd>"
NAME_NOTE = f"{NAME_PREFIX}<owner pid-start>.<cell id>"


def qemu_path() -> str | None:
    return shutil.which(QEMU)


def guest_memory(plan: Plan) -> int:
    """The guest's RAM in MiB: ``--memory`` rounded down (never more than asked)."""
    memory = plan.limits.memory if plan.limits.memory is not None else DEFAULT_MEMORY
    return int(memory) >> 20


def vcpus(plan: Plan) -> int:
    return 1 if plan.limits.cpus is None else max(1, math.floor(plan.limits.cpus))


def qemu_argv(
    plan: Plan, accel: str, fds: dict[str, int | str], initrd: str, kernel: str, name: str,
    stage: str = STAGE,
) -> list[str]:  # fmt: skip
    """QEMU's argv for ``plan``: ``fds`` maps each of CHANNELS to the fd QEMU holds."""
    argv = [
        qemu_path() or QEMU, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-machine", "q35,accel=" + accel, "-cpu", "host" if accel == "kvm" else "max",
        "-m", f"{guest_memory(plan)}M", "-smp", str(vcpus(plan)),
        "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE,
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-fsdev", f"local,id=store,path={stage}/store,{SHARE},multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=store,mount_tag=store",
        "-fsdev", f"local,id=cfg,path={stage}/cfg,{SHARE}",
        "-device", "virtio-9p-pci,fsdev=cfg,mount_tag=cfg",
        "-device", "virtio-serial-pci,id=vs,max_ports=8",
    ]  # fmt: skip
    from nixcell.sandbox.microvmguest import host_binds

    for index, (_, _, readonly) in enumerate(host_binds(plan)):
        ro = ",readonly=on" if readonly else ""
        argv += [
            "-fsdev",
            f"local,id=bind{index},path={stage}/binds/{index},security_model=none{ro}",
        ]
        argv += ["-device", f"virtio-9p-pci,fsdev=bind{index},mount_tag=bind{index}"]
    for nr, channel in enumerate(CHANNELS):
        if channel == "proxy" and plan.network is None:
            continue
        argv += ["-chardev", f"socket,id={channel},fd={fds[channel]}"]
        if channel == "console":
            argv += ["-device", "virtconsole,bus=vs.0,nr=0,chardev=console"]
        else:
            port = f"virtserialport,bus=vs.0,nr={nr},chardev={channel},name=nixcell.{channel}"
            argv += ["-device", port]
    return argv


def accel() -> tuple[str, str]:
    """("kvm" | "tcg", why): KVM only when /dev/kvm boots a real guest (``microvmkvm``)."""
    from nixcell.sandbox import microvmkvm

    return microvmkvm.choose()


class MicrovmBackend:
    name = "microvm"

    def availability(self) -> Availability:
        from nixcell.sandbox import microvminitrd

        if qemu_path() is None:
            return Availability(False, f"no {QEMU} (apt install qemu-system-x86)")
        if os.geteuid() != 0:
            return Availability(
                False, "root only (the closure is staged with mounts in a private namespace)"
            )
        if not os.path.exists(microvminitrd.BUSYBOX):
            return Availability(False, "no static busybox (apt install busybox-static)")
        try:
            _, version = microvminitrd.kernel()
        except SandboxError as exc:
            return Availability(False, exc.message)
        mode, why = accel()
        return Availability(True, f"QEMU {mode.upper()} ({why}), kernel {version}")

    def refusals(self, plan: Plan) -> list[str]:
        from nixcell.sandbox import microvmguest, microvminitrd

        refused: list[str] = []
        if plan.host_network:
            refused.append("the host's network (a microVM has no NIC)")
        if plan.limits.cpus is not None and plan.limits.cpus != math.floor(plan.limits.cpus):
            refused.append(f"--cpus {plan.limits.cpus} (vCPUs are whole: ask 1, 2, ...)")
        if plan.limits.memory is not None and plan.limits.memory < MIN_MEMORY:
            refused.append(f"--memory below {MIN_MEMORY >> 20}M (the guest kernel needs it)")
        if not microvminitrd.can_filter():
            refused.append("the seccomp filter (no gcc here to build the guest's exec helper)")
        if plan.network is not None and not microvminitrd.can_relay():
            refused.append("a network policy (no gcc here to build the guest's relay)")
        if plan.volumes:
            refused.append("session volumes")
        from nixcell.sandbox.dockerspec import not_utf8

        odd = not_utf8(plan, "the guest's cell script is UTF-8 text")
        if odd is not None:
            refused.append(odd)
        shared = {dest for dest, _, _ in microvmguest.host_binds(plan)}
        for op in plan.mounts:
            if op.kind == "bind" and microvmguest.scratch_area(plan, op) is not None:
                continue
            if op.kind in ("bind", "ro-bind") and op.by_fd:
                refused.append(f"a bind made by fd ({op.dest})")
                continue
            if op.kind in ("bind", "ro-bind") and op.dest in shared:
                continue  # a 9p share of its own, idmapped to the cell's uid
            if op.kind in ("bind", "ro-bind"):
                src = str(op.src)
                if op.kind == "ro-bind" and (
                    src == "/dev/null"
                    or (src == op.dest and op.dest.startswith("/proc/"))
                    or (src == plan.store_source(op.dest) and _closure(plan, op.dest))
                ):
                    continue
                if (
                    op.kind == "ro-bind"
                    and microvmguest.host_file(microvmguest._source(plan, op)) is not None
                ):
                    continue  # copied in, read-only
                refused.append(
                    f"a bind of {op.dest} (only host directories, small read-only files)"
                )
        return refused

    def render(self, plan: Plan) -> dict[str, object]:
        from nixcell.sandbox import microvmguest, microvminitrd

        try:
            kernel, version = microvminitrd.kernel()
        except SandboxError as exc:
            kernel, version = f"<{exc.message}>", "?"
        mode, why = accel() if qemu_path() else ("tcg", "no QEMU here")
        fds = {c: f"<{c} socket>" for c in CHANNELS}
        try:
            script, files = microvmguest.cell_script(plan, _render_user())
        except SandboxError as exc:
            script, files = f"<refused: {exc.message}>", {}
        return {
            "accel": mode,
            "accel_reason": why,
            "qemu_argv": qemu_argv(plan, mode, fds, INITRD_NOTE, kernel, NAME_NOTE),
            "kernel": kernel,
            "kernel_version": version,
            "kernel_cmdline": CMDLINE,
            "guest_memory_mib": guest_memory(plan),
            "vcpus": vcpus(plan),
            "cell_sh": script,
            "seccomp": {
                "profiles": list(plan.seccomp_profiles),
                "applied_by": "/.nixcell/exec (microvmexec.c) in the guest, before exec",
                "file": f"cfg/{microvmguest.SECCOMP_FILE}",
            },
            "data_files": {k: v.decode() for k, v in files.items()},
            "store_share": [os.path.basename(p) for p in plan.closure],
        }

    def open(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> object:
        from nixcell.sandbox.microvmcell import MicrovmCell

        return MicrovmCell(plan, cell_id, host_id)


def _render_user() -> tuple[int, int]:
    from nixcell.sandbox.docker import cell_user

    return cell_user(None)


def _closure(plan: Plan, path: str) -> bool:
    from nixcell.sandbox import microvmguest

    return microvmguest._in_closure(plan, path)


def sweep() -> list[str]:
    """QEMUs of dead nixcell processes, killed (their mount namespace and staging go with them)."""
    import signal

    from nixcell.leftovers import _start_time

    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"-name" not in argv[:3]:
            continue
        name = argv[argv.index(b"-name") + 1].decode(errors="replace")
        if not name.startswith(NAME_PREFIX):
            continue
        owner = name[len(NAME_PREFIX) :].split(".")[0]
        pid, _, start = owner.partition("-")
        if pid.isdigit() and str(_start_time(int(pid))) == start:
            continue
        try:
            os.kill(int(entry), signal.SIGKILL)
            killed.append(name)
        except OSError:
            pass
    return killed


BACKEND = MicrovmBackend()
