"""The microVM's initramfs: busybox, the relay, the exec helper, the modules the guest needs,
``/init``.

The same for every cell: Debian's static busybox, the eleven modules the guest loads (virtio
PCI, virtio-console, 9p over virtio: nothing else), two static helpers built with ``gcc
-static`` when gcc is here — the guest relay (``microvmrelay.c``) and the exec helper
(``microvmexec.c``: bounding set, uid, no-new-privs, the plan's seccomp program) — and
``microvmguest.INIT``. An uncompressed cpio (TCG would spend longer inflating it than reading
it), built once and kept in the sealed cache (``sealed.py``), keyed by the kernel, busybox, the
modules, the helpers' sources, the init and nixcell's version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath

from nixcell.errors import SandboxError
from nixcell.sandbox.microvmguest import INIT

log = logging.getLogger(__name__)
BUSYBOX = "/bin/busybox"
# In load order (modules.dep of Debian 6.1): the only modules the guest loads.
MODULES = (
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko", "drivers/char/virtio_console.ko", "fs/netfs/netfs.ko",
    "fs/fscache/fscache.ko", "net/9p/9pnet.ko", "net/9p/9pnet_virtio.ko", "fs/9p/9p.ko",
)  # fmt: skip


def kernel() -> tuple[str, str]:
    """The Debian kernel (vmlinuz path, version) whose modules the initramfs takes: the
    running kernel's if it is installed, else the newest under /boot with 9p modules."""
    candidates = []
    running = os.uname().release
    for name in sorted(os.listdir("/boot")) if os.path.isdir("/boot") else []:
        if name.startswith("vmlinuz-"):
            version = name[len("vmlinuz-") :]
            if os.path.exists(f"/lib/modules/{version}/kernel/fs/9p/9p.ko"):
                candidates.append((version != running, version))
    if not candidates:
        raise SandboxError(
            "no Debian kernel with 9p modules under /boot (apt install linux-image-amd64)"
        )
    version = sorted(candidates, key=lambda c: (c[0], [-ord(x) for x in c[1]]))[0][1]
    return f"/boot/vmlinuz-{version}", version


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data) entries."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        raw = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def build_initramfs(version: str) -> tuple[bytes, bool]:
    """The cpio, and whether every helper gcc should have built is in it (an incomplete one is
    used — its cells fail before their program starts — but never cached)."""
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o40755, b"") for d in ("dev", "proc", "sys", "nix", ".nixcell", ".nixcell/modules")
    ]
    entries.append((".nixcell/busybox", 0o100755, _read(BUSYBOX)))
    for index, module in enumerate(MODULES):
        data = _read(f"/lib/modules/{version}/kernel/{module}")
        entries.append(
            (f".nixcell/modules/{index:02d}-{posixpath.basename(module)}", 0o100644, data)
        )
    complete = True
    for name, source in HELPERS.items():
        binary = static_binary(source)
        if binary is not None:
            entries.append((f".nixcell/{name}", 0o100755, binary))
        complete = complete and (binary is not None or not _can_build(source))
    entries.append(("init", 0o100755, INIT.encode()))
    return _cpio(entries), complete


HERE = os.path.dirname(os.path.abspath(__file__))
RELAY_SOURCE = os.path.join(HERE, "microvmrelay.c")
EXEC_SOURCE = os.path.join(HERE, "microvmexec.c")
HELPERS = {"relay": RELAY_SOURCE, "exec": EXEC_SOURCE}  # name in /.nixcell -> source


def _can_build(source: str) -> bool:
    import shutil

    return shutil.which("gcc") is not None and os.path.exists(source)


def can_relay() -> bool:
    """Whether the guest relay can be built here (a C compiler with a static libc)."""
    return _can_build(RELAY_SOURCE)


def can_filter() -> bool:
    """Whether the guest's exec helper (the one that installs the seccomp program) can be
    built here: without it no cell runs (``refusals``), never one without its filter."""
    return _can_build(EXEC_SOURCE)


def static_binary(source: str) -> bytes | None:
    """``source`` built static (``gcc -static``), or None without gcc or when it fails."""
    import subprocess
    import tempfile

    if not _can_build(source):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "helper")
        argv = ["gcc", "-static", "-Os", "-s", "-o", out, source]
        done = subprocess.run(argv, capture_output=True)
        if done.returncode != 0:
            log.warning(
                "cannot build the microVM guest helper %s: %s",
                os.path.basename(source), done.stderr.decode()[-300:],
            )  # fmt: skip
            return None
        return _read(out)


def cache_key(version: str) -> str:
    from nixcell import __version__

    h = hashlib.sha256(f"{__version__}\0{version}\0{INIT}".encode())
    for source in HELPERS.values():
        built = _can_build(source)
        h.update(f"\0{os.path.basename(source)}\0{built}\0".encode())
        if built:
            h.update(_read(source))
    modules = [f"/lib/modules/{version}/kernel/{m}" for m in MODULES]
    for path in (BUSYBOX, f"/boot/vmlinuz-{version}", *modules):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0".encode())
    return h.hexdigest()[:32]


def initramfs(version: str) -> bytes:
    """The initramfs for ``version``: from the sealed cache, else built and cached."""
    from nixcell import sealed

    if not os.path.exists(BUSYBOX):
        raise SandboxError("no static busybox at /bin/busybox (apt install busybox-static)")
    cached = sealed.cache_file("microvm", f"initramfs-{cache_key(version)}.cpio")
    payload = sealed.load("microvm", cached) if cached is not None else None
    if payload is None:
        payload, complete = build_initramfs(version)
        if cached is not None and complete:
            sealed.store("microvm", cached, payload)
    return payload
