#!/usr/bin/env python3
"""Syscall probe, run inside a sandbox: prints JSON {check: errno} (0 = the call succeeded).

Stdlib only. Every check calls the raw syscall with arguments that, unfiltered, succeed
harmlessly or fail with an errno other than EPERM (bad fd, bad flags, missing path), so EPERM
means the seccomp filter answered. Some calls check their capability before anything else;
those give EPERM unfiltered too unless the probe runs as real root (see PRIVILEGED).
A check that kills its process reports -signal (a foreign-arch syscall under a filter that
lacks the arch dies of SIGSYS).

usage: syscalls.py [--list] [CHECK ...]      (no CHECK: all of them)
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Callable

# Unfiltered, these give EPERM to anyone without the capability in the initial namespace.
PRIVILEGED = frozenset(
    {
        "pivot_root", "move_mount", "fsopen", "fsmount", "fspick", "kexec_load",
        "kexec_file_load", "init_module", "finit_module", "delete_module", "acct", "swapoff",
        "reboot", "vhangup", "syslog", "socket_packet", "socket_xdp",
    }
)  # fmt: skip

_COMMON = {  # asm-generic numbers, shared by x86_64 and aarch64
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "openat2": 437, "pidfd_getfd": 438, "mount_setattr": 442,
    "quotactl_fd": 443, "fchmodat2": 452, "open_tree_attr": 467,
}  # fmt: skip
NR: dict[str, dict[str, int]] = {
    "x86_64": _COMMON | {
        "ioctl": 16, "vhangup": 153, "pivot_root": 155, "adjtimex": 159, "acct": 163,
        "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
        "reboot": 169, "init_module": 175, "delete_module": 176, "quotactl": 179,
        "nfsservctl": 180, "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246,
        "add_key": 248, "request_key": 249, "keyctl": 250, "openat": 257, "mknodat": 259,
        "fchmodat": 268, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303,
        "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "finit_module": 313,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "clone": 56, "open": 2,
        "creat": 85, "chmod": 90, "fchmod": 91, "ptrace": 101, "syslog": 103,
        "socket": 41, "socketpair": 53,
        "mknod": 133, "uselib": 134, "personality": 135,
    },
    "aarch64": _COMMON | {
        "lookup_dcookie": 18, "ioctl": 29, "mknodat": 33, "umount2": 39, "mount": 40,
        "pivot_root": 41, "nfsservctl": 42, "fchmod": 52, "fchmodat": 53, "openat": 56,
        "vhangup": 58, "quotactl": 60, "acct": 89, "personality": 92, "unshare": 97,
        "kexec_load": 104, "init_module": 105, "delete_module": 106, "clock_settime": 112,
        "syslog": 116, "ptrace": 117, "reboot": 142, "settimeofday": 170, "adjtimex": 171,
        "add_key": 217, "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224,
        "swapoff": 225, "perf_event_open": 241, "name_to_handle_at": 264,
        "open_by_handle_at": 265, "clock_adjtime": 266, "setns": 268,
        "process_vm_readv": 270, "process_vm_writev": 271, "finit_module": 273,
        "bpf": 280, "userfaultfd": 282, "kexec_file_load": 294, "socket": 198,
        "socketpair": 199,
    },
}  # fmt: skip

CLONE_NEW = {
    "newns": 0x00020000, "newcgroup": 0x02000000, "newuts": 0x04000000,
    "newipc": 0x08000000, "newuser": 0x10000000, "newpid": 0x20000000, "newnet": 0x40000000,
}  # fmt: skip
CLONE_SIGHAND, CLONE_PTRACE, SIGCHLD = 0x800, 0x2000, 17
AT_FDCWD = -100
S_IFREG = 0o100000
O_TMPFILE = 0o20000000 | os.O_DIRECTORY
NOWHERE = b"/nonexistent-nixcell-probe"
X32_BIT = 0x40000000

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ARCH = platform.machine()
TABLE = NR.get(ARCH, {})
CHECKS: dict[str, Callable[[], int | None]] = {}
WORK = ""  # a fresh directory for file checks, made by main()
_serial = iter(range(1_000_000))


def check(name: str) -> Callable[[Callable[[], int | None]], Callable[[], int | None]]:
    def register(fn: Callable[[], int | None]) -> Callable[[], int | None]:
        CHECKS[name] = fn
        return fn

    return register


def _arg(a: int | bytes | None) -> object:
    if isinstance(a, bytes) or a is None:
        return a
    return ctypes.c_long(a) if a < 0 else ctypes.c_ulong(a)


def raw(nr: int, *args: int | bytes | None) -> tuple[int, int]:
    """(return value, errno) of syscall ``nr``; errno is 0 on success."""
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *map(_arg, args))
    return ret, (ctypes.get_errno() if ret == -1 else 0)


def sc(name: str, *args: int | bytes | None, close: bool = False) -> int | None:
    """errno of syscall ``name`` (None when this arch has no such syscall)."""
    if name not in TABLE:
        return None
    ret, err = raw(TABLE[name], *args)
    if close and ret >= 0:
        os.close(ret)
    return err


def fresh(existing: bool = False) -> bytes:
    path = os.path.join(WORK, f"f{next(_serial)}")
    if existing:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    return path.encode()


def wait_status(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def forking(name: str, *args: int) -> int | None:
    """A fork-like raw clone/clone3: the child exits at once, the parent reports errno."""
    if name not in TABLE:
        return None
    pid, err = raw(TABLE[name], *args)
    if pid == 0:
        os._exit(0)
    if err:
        return err
    return wait_status(pid)


# --- namespaces -----------------------------------------------------------------------------
check("unshare")(lambda: sc("unshare", CLONE_PTRACE))  # EINVAL when unfiltered
for _flag, _bit in CLONE_NEW.items():  # CLONE_SIGHAND without CLONE_VM: EINVAL when unfiltered
    check(f"clone_{_flag}")(lambda bit=_bit: sc("clone", bit | CLONE_SIGHAND, 0, 0, 0, 0))
check("clone_newuser_real")(lambda: forking("clone", CLONE_NEW["newuser"] | SIGCHLD, 0, 0, 0, 0))
check("clone_plain")(lambda: forking("clone", SIGCHLD, 0, 0, 0, 0))
check("clone3")(lambda: sc("clone3", 0, 0))  # size 0: EINVAL when unfiltered


@check("clone3_fallback_newuser")
def _clone3_fallback() -> int | None:
    """What glibc does: clone3 first, plain clone when clone3 says ENOSYS."""
    args = (ctypes.c_uint64 * 8)(CLONE_NEW["newuser"], 0, 0, 0, SIGCHLD, 0, 0, 0)
    if "clone3" not in TABLE:
        return None
    pid, err = raw(TABLE["clone3"], ctypes.addressof(args), ctypes.sizeof(args))
    if pid == 0:
        os._exit(0)
    if err == errno.ENOSYS:
        return forking("clone", CLONE_NEW["newuser"] | SIGCHLD, 0, 0, 0, 0)
    return err or wait_status(pid)


@check("threads")
def _threads() -> int:
    seen: list[int] = []
    try:
        t = threading.Thread(target=lambda: seen.append(threading.get_native_id()))
        t.start()
        t.join()
    except RuntimeError:
        return errno.EAGAIN
    return 0 if seen and seen[0] != threading.get_native_id() else errno.ESRCH


@check("posix_spawn")
def _posix_spawn() -> int:
    try:
        pid = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})
    except OSError as exc:
        return exc.errno or -1
    return wait_status(pid)


check("setns")(lambda: sc("setns", -1, 0))
check("mount")(lambda: sc("mount", b"none", NOWHERE, b"tmpfs", 0, 0))
check("umount2")(lambda: sc("umount2", NOWHERE, 0x10))
check("pivot_root")(lambda: sc("pivot_root", NOWHERE, NOWHERE))
check("open_tree")(lambda: sc("open_tree", -1, b"", 0x40000000))
check("move_mount")(lambda: sc("move_mount", -1, b"", -1, b"", 0))
check("fsopen")(lambda: sc("fsopen", b"nixcell-no-such-fs", 0))
check("fsconfig")(lambda: sc("fsconfig", -1, 0, 0, 0, 0))
check("fsmount")(lambda: sc("fsmount", -1, 0, 0))
check("fspick")(lambda: sc("fspick", -1, b"", 0x40000000))
check("mount_setattr")(lambda: sc("mount_setattr", -1, b"", 0x40000000, 0, 0))
check("open_tree_attr")(lambda: sc("open_tree_attr", -1, b"", 0x40000000, 0, 0))

# --- tracing, personality ---------------------------------------------------------------------
check("ptrace")(lambda: sc("ptrace", 2, 0x3FFFFFF0, 0, 0))  # PEEKDATA, no such pid: ESRCH
check("process_vm_readv")(lambda: sc("process_vm_readv", os.getpid(), 0, 0, 0, 0, 1))
check("process_vm_writev")(lambda: sc("process_vm_writev", os.getpid(), 0, 0, 0, 0, 1))
check("pidfd_getfd")(lambda: sc("pidfd_getfd", -1, 0, 0))


def _personality(value: int) -> int | None:
    err = sc("personality", value)
    sc("personality", 0)
    return err


check("personality_query")(lambda: sc("personality", 0xFFFFFFFF))
check("personality_linux")(lambda: sc("personality", 0))
check("personality_aslr")(lambda: _personality(0x0040000))  # ADDR_NO_RANDOMIZE
check("personality_linux32")(lambda: _personality(0x0008))  # PER_LINUX32

# --- kernel, keys, io_uring, clock --------------------------------------------------------------
check("kexec_load")(lambda: sc("kexec_load", 0, 0xFFFFFF, 0, 0x80))  # bad flags: EINVAL
check("kexec_file_load")(lambda: sc("kexec_file_load", -1, -1, 0, 0, 0x80000000))
check("init_module")(lambda: sc("init_module", 0, 0, b""))  # empty image: ENOEXEC
check("finit_module")(lambda: sc("finit_module", -1, b"", 0))
check("delete_module")(lambda: sc("delete_module", b"nixcell_no_such_module", os.O_NONBLOCK))
check("bpf")(lambda: sc("bpf", 0x7FFF, 0, 0))
check("perf_event_open")(lambda: sc("perf_event_open", 0, 0, -1, -1, 0x80000000))
check("keyctl")(lambda: sc("keyctl", 0x7FFF, 0, 0, 0, 0))
check("add_key")(lambda: sc("add_key", 0, 0, 0, 0, 0))
check("request_key")(lambda: sc("request_key", 0, 0, 0, 0))
check("io_uring_setup")(lambda: sc("io_uring_setup", 0, 0))
check("io_uring_enter")(lambda: sc("io_uring_enter", -1, 0, 0, 0, 0, 0))
check("io_uring_register")(lambda: sc("io_uring_register", -1, 0, 0, 0))
check("userfaultfd")(lambda: sc("userfaultfd", 0x1 | 0x2))  # USER_MODE_ONLY + bad bit
check("acct")(lambda: sc("acct", NOWHERE))
check("swapon")(lambda: sc("swapon", NOWHERE, 0x40000000))
check("swapoff")(lambda: sc("swapoff", NOWHERE))
check("reboot")(lambda: sc("reboot", 0, 0, 0, 0))  # wrong magic: EINVAL
check("settimeofday")(lambda: sc("settimeofday", 1, 0))  # bad pointer: EFAULT
check("clock_settime")(lambda: sc("clock_settime", 0, 1))
check("clock_adjtime")(lambda: sc("clock_adjtime", 0, 1))
check("adjtimex")(lambda: sc("adjtimex", 1))
check("name_to_handle_at")(lambda: sc("name_to_handle_at", AT_FDCWD, b"/", 0, 0, 0x40000000))
check("open_by_handle_at")(lambda: sc("open_by_handle_at", -1, 0, 0))
check("lookup_dcookie")(lambda: sc("lookup_dcookie", 0, 0, 0))
check("quotactl")(lambda: sc("quotactl", 0x7F, 0, 0, 0))  # quota type 127: EINVAL
check("quotactl_fd")(lambda: sc("quotactl_fd", -1, 0x7F, 0, 0))
check("uselib")(lambda: sc("uselib", 0))
check("nfsservctl")(lambda: sc("nfsservctl", 0, 0, 0))
check("syslog")(lambda: sc("syslog", 10, 0, 0))  # SIZE_BUFFER


@check("vhangup")
def _vhangup() -> int | None:
    try:  # never hang up a real terminal
        os.close(os.open("/dev/tty", os.O_RDONLY))
        return None
    except OSError:
        return sc("vhangup")


# --- terminals --------------------------------------------------------------------------------
check("ioctl_tiocsti")(lambda: sc("ioctl", -1, 0x5412, 0))  # EBADF when unfiltered
check("ioctl_tiocsti_hibits")(lambda: sc("ioctl", -1, 0x1_0000_5412, 0))  # kernel truncates
check("ioctl_tioclinux")(lambda: sc("ioctl", -1, 0x541C, 0))
check("ioctl_tcgets")(lambda: sc("ioctl", -1, 0x5401, 0))

# --- setuid/setgid files ------------------------------------------------------------------------
check("chmod_644")(lambda: sc("chmod", fresh(True), 0o644))
check("chmod_suid")(lambda: sc("chmod", fresh(True), 0o4755))
check("chmod_sgid")(lambda: sc("chmod", fresh(True), 0o2755))
check("fchmodat_sgid")(lambda: sc("fchmodat", AT_FDCWD, fresh(True), 0o2755))
check("fchmodat2_suid")(lambda: sc("fchmodat2", AT_FDCWD, fresh(True), 0o4755, 0))
check("open_creat_suid")(lambda: sc("open", fresh(), os.O_CREAT | os.O_WRONLY, 0o4755, close=True))
check("open_nocreat_suid_mode")(lambda: sc("open", fresh(True), os.O_RDONLY, 0o4755, close=True))
check("openat_creat_644")(
    lambda: sc("openat", AT_FDCWD, fresh(), os.O_CREAT | os.O_WRONLY, 0o644, close=True)
)
check("openat_creat_sgid")(
    lambda: sc("openat", AT_FDCWD, fresh(), os.O_CREAT | os.O_WRONLY, 0o2755, close=True)
)
check("openat_tmpfile_suid")(
    lambda: sc("openat", AT_FDCWD, WORK.encode(), O_TMPFILE | os.O_WRONLY, 0o4755, close=True)
)
check("openat2")(lambda: sc("openat2", AT_FDCWD, fresh(True), 0, 0))  # size 0: EINVAL
check("creat_suid")(lambda: sc("creat", fresh(), 0o4755, close=True))
check("mknod_suid")(lambda: sc("mknod", fresh(), S_IFREG | 0o4755, 0))
check("mknodat_sgid")(lambda: sc("mknodat", AT_FDCWD, fresh(), S_IFREG | 0o2755, 0))


@check("fchmod_suid")
def _fchmod() -> int | None:
    fd = os.open(fresh(True), os.O_RDONLY)
    try:
        return sc("fchmod", fd, 0o4755)
    finally:
        os.close(fd)


@check("mkdir_sgid")
def _mkdir() -> int:
    try:
        os.mkdir(fresh(), 0o2755)
    except OSError as exc:
        return exc.errno or -1
    return 0


# --- sockets: only AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK/NETLINK_ROUTE ----------------------
HIGH = 1 << 32  # garbage above the int the kernel reads: the filter must look at the low bits
AF_VSOCK, AF_PACKET, AF_NETLINK, AF_XDP = 40, 17, 16, 44


def _socket(domain: int, kind: int, proto: int = 0, name: str = "socket") -> int | None:
    return sc(name, domain, kind, proto, close=True) if name == "socket" else _pair(domain, kind)


def _pair(domain: int, kind: int) -> int | None:
    fds = (ctypes.c_int * 2)()
    err = sc("socketpair", domain, kind, 0, ctypes.addressof(fds))
    if err == 0:
        os.close(fds[0])
        os.close(fds[1])
    return err


check("socket_vsock")(lambda: _socket(AF_VSOCK, 1))  # ignores network namespaces
check("socket_vsock_high")(lambda: _socket(AF_VSOCK | HIGH, 1))
check("socket_vsock_dgram")(lambda: _socket(AF_VSOCK, 2))
check("socketpair_vsock")(lambda: _socket(AF_VSOCK, 1, name="socketpair"))
check("socket_packet")(lambda: _socket(AF_PACKET, 3))  # raw frames
check("socket_xdp")(lambda: _socket(AF_XDP, 3))
check("socket_netlink_uevent")(lambda: _socket(AF_NETLINK, 2, 15))  # NETLINK_KOBJECT_UEVENT
check("socket_netlink_uevent_high")(lambda: _socket(AF_NETLINK, 2, 15 | HIGH))
check("socket_netlink_route")(lambda: _socket(AF_NETLINK, 3, 0))  # getifaddrs
check("socket_inet6")(lambda: _socket(10, 1))
check("socket_unix_high")(lambda: _socket(1 | HIGH, 1))  # the kernel reads AF_UNIX


# --- other ABIs on x86_64 -------------------------------------------------------------------------
def int80(nr: int, ebx: int, ecx: int = 0, edx: int = 0) -> int | None:
    """i386 syscall ``nr`` through ``int 0x80`` in a child; errno, or -signal if killed."""
    if ARCH != "x86_64":
        return None
    pid = os.fork()
    if pid == 0:
        code = (
            b"\x53"  # push rbx (callee-saved)
            + b"\xb8" + nr.to_bytes(4, "little")  # mov eax, nr
            + b"\xbb" + ebx.to_bytes(4, "little")  # mov ebx, arg0
            + b"\xb9" + ecx.to_bytes(4, "little")  # mov ecx, arg1
            + b"\xba" + edx.to_bytes(4, "little")  # mov edx, arg2
            + b"\xcd\x80\x5b\xc3"  # int 0x80; pop rbx; ret
        )  # fmt: skip
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        page.write(code)
        stub = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
        ret = stub()
        os._exit(min(-ret, 255) if ret < 0 else 0)
    return wait_status(pid)


check("int80_unshare")(lambda: int80(310, CLONE_PTRACE))  # i386 unshare
check("int80_clone_newuser")(lambda: int80(120, CLONE_NEW["newuser"] | CLONE_SIGHAND))
check("x32_unshare")(  # ENOSYS unfiltered when the kernel has no x32 ABI
    lambda: raw(X32_BIT | 272, CLONE_PTRACE)[1] if ARCH == "x86_64" else None
)
check("int80_socket_vsock")(lambda: int80(359, AF_VSOCK, 1, 0))  # i386 socket()
check("int80_socketcall")(lambda: int80(102, 1, 0))  # SYS_SOCKET, args at NULL: EFAULT unfiltered
check("x32_socket_vsock")(
    lambda: raw(X32_BIT | 41, AF_VSOCK, 1, 0)[1] if ARCH == "x86_64" else None
)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        print("\n".join(CHECKS))
        return 0
    unknown = [name for name in argv if name not in CHECKS]
    if unknown:
        print(f"unknown checks: {unknown}", file=sys.stderr)
        return 2
    global WORK
    WORK = tempfile.mkdtemp(prefix="probe-")
    results = {}
    for name in argv or list(CHECKS):
        result = CHECKS[name]()
        if result is not None:
            results[name] = result
    print(json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
