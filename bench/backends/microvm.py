"""microVM: ``nixcell run --backend microvm`` against bare QEMU booting the same kernel and the
same initramfs with the same machine (q35, the same accelerator, ``-m 512M``, one vCPU), whose
init loads the same modules and powers off at once (the KVM probe's path: no 9p shares, no
cell.sh, no program). The difference is nixcell's own work: planning, staging the closure,
the guest's mounts, the program, the exit status.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NIXCELL = str(ROOT / ".venv" / "bin" / "nixcell")
PACKAGES = ["-p", "coreutils", "-p", "python3"]
SLOW = 3  # a TCG boot takes seconds


class Skip(Exception):
    pass


def setup() -> dict[str, object]:
    sys.path.insert(0, str(ROOT / "src"))
    from nixcell.sandbox import backends, microvm, microvminitrd, microvmkvm

    found = backends.availability("microvm")
    if not found.ok:
        raise Skip(found.detail)
    kernel, version = microvminitrd.kernel()
    fd, initrd = tempfile.mkstemp(prefix="bench-initramfs-")
    with os.fdopen(fd, "wb") as f:
        f.write(microvminitrd.initramfs(version))
    mode, _ = microvmkvm.choose()
    argv = microvmkvm.probe_argv(kernel, initrd)
    argv[argv.index("-machine") + 1] = f"q35,accel={mode}"
    argv[argv.index("-cpu") + 1] = "host" if mode == "kvm" else "max"
    argv[argv.index("-m") + 1] = f"{microvm.DEFAULT_MEMORY >> 20}M"
    return {"bare": argv, "initrd": initrd}


def nixcell(state: dict[str, object], argv: list[str]):
    cmd = [NIXCELL, "run", "--backend", "microvm", *PACKAGES, "--", *argv]

    def run() -> None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return run


def bare(state: dict[str, object], argv: list[str]):
    cmd = state["bare"]

    def run() -> None:
        out = subprocess.run(cmd, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        assert b"nixcell-kvm-ok" in out.stdout, out

    return run


def memory(state: dict[str, object]) -> float | None:
    """QEMU's RSS (MiB) while a cell sleeps."""
    cmd = [NIXCELL, "run", "--backend", "microvm", "-p", "coreutils", "--", "sleep", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    try:
        deadline = time.monotonic() + 18
        while time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if not f.read().startswith(b"/usr/bin/qemu-system"):
                            continue
                    with open(f"/proc/{pid}/status") as f:
                        rss = next(ln for ln in f if ln.startswith("VmRSS:")).split()[1]
                    peak = max(peak, int(rss) / 1024)
                except (OSError, StopIteration):
                    pass
            time.sleep(1)
    finally:
        proc.kill()
        proc.wait()
    return peak or None


def teardown(state: dict[str, object]) -> None:
    os.unlink(str(state["initrd"]))
