"""KVM or TCG for the microVM: KVM only when ``/dev/kvm`` boots a real guest.

A ``/dev/kvm`` that opens is not enough: this host's is ``kvm_pvm``, and a stock guest kernel
dies there ("KVM internal error ... emulation failure", DESIGN.md 8). So the probe boots the
guest itself under KVM (init prints a mark and powers off when the cmdline says
``nixcell.probe``), once: the answer is cached in the sealed cache, keyed by the kernel, QEMU,
the KVM module and this boot, and in the process. No working KVM: TCG, with a one-line notice
when a cell starts (``notice``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 10.0
_chosen: tuple[str, str] | None = None
_noticed = False


def _key(kernel: str) -> str:
    parts = [kernel]
    for path in (kernel, "/dev/kvm", "/proc/sys/kernel/random/boot_id"):
        try:
            st = os.stat(path)
            parts.append(f"{st.st_ino}:{st.st_mtime_ns}:{st.st_rdev}")
        except OSError:
            parts.append("-")
    from nixcell.sandbox.microvm import qemu_path

    qemu = qemu_path() or ""
    parts.append(f"{qemu}:{os.stat(qemu).st_mtime_ns if qemu else 0}")
    with open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f.read().strip())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def probe_argv(kernel: str, initrd: str) -> list[str]:
    from nixcell.sandbox.microvm import CMDLINE, qemu_path

    return [
        qemu_path() or "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
        "-no-reboot", "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "128M",
        "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE + " nixcell.probe=1",
        "-device", "virtio-serial-pci,id=vs", "-chardev", "stdio,id=con",
        "-device", "virtconsole,bus=vs.0,nr=0,chardev=con",
    ]  # fmt: skip


def _probe(kernel: str, version: str) -> tuple[bool, str]:
    from nixcell.sandbox import microvmguest, microvminitrd

    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"no usable /dev/kvm ({exc.strerror})"
    os.close(fd)
    memfd = os.memfd_create("nixcell-initramfs", 0)
    try:
        os.write(memfd, microvminitrd.initramfs(version))
        argv = probe_argv(kernel, f"/proc/self/fd/{memfd}")
        try:
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=PROBE_TIMEOUT,
                pass_fds=(memfd,),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, "a KVM guest did not boot within 10 s"
    finally:
        os.close(memfd)
    if microvmguest.PROBE_MARK.encode() in done.stdout:
        return True, "/dev/kvm boots a guest"
    why = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
    first = next((line for line in why if "error" in line.lower()), why[0] if why else "")
    return False, f"/dev/kvm cannot run a stock guest ({first[:120] or 'no boot'})"


def choose() -> tuple[str, str]:
    """("kvm" | "tcg", why), probed at most once per process and once per boot."""
    global _chosen
    if _chosen is not None:
        return _chosen
    from nixcell import sealed
    from nixcell.sandbox import microvminitrd

    if not os.path.exists("/dev/kvm"):
        _chosen = ("tcg", "no /dev/kvm")
        return _chosen
    kernel, version = microvminitrd.kernel()
    cached = sealed.cache_file("microvm", f"kvm-{_key(kernel)}")
    answer = sealed.load("microvm", cached) if cached is not None else None
    if answer is None:
        ok, why = _probe(kernel, version)
        answer = f"{'kvm' if ok else 'tcg'}\n{why}".encode()
        if cached is not None:
            sealed.store("microvm", cached, answer)
    mode, _, why = answer.decode().partition("\n")
    _chosen = (mode, why)
    return _chosen


def notice() -> None:
    """The one-line TCG notice, once per process."""
    global _noticed
    mode, why = choose()
    if mode == "tcg" and not _noticed:
        _noticed = True
        text = f"microvm: {why}: running the guest under TCG emulation (slow)"
        if logging.getLogger().handlers:
            log.warning("%s", text)
        else:  # (the CLI's warm path configures no logging)
            import sys

            sys.stderr.write(f"nixcell: {text}\n")
