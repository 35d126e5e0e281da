"""The cell's seccomp filter: a denylist over an allow-by-default policy, compiled by libseccomp.

Everything a cell may legitimately need stays allowed; what is denied is the kernel surface that
lets a process leave or weaken its sandbox (namespaces, mounts, ptrace, kernel modules, keyrings,
io_uring, the clock) or leave a privilege behind on the host (setuid files). Denied calls fail
with EPERM, so programs take their "not permitted" path instead of dying.

Decisions worth knowing:

* ``clone3`` fails with ENOSYS, not EPERM. Its flags live in a struct behind a pointer, which
  seccomp cannot read, so it cannot be filtered by flag. glibc >= 2.34 creates threads (and
  posix_spawn children) with clone3 and falls back to ``clone`` only on ENOSYS; ``clone`` passes
  its flags in a register, where the CLONE_NEW* bits are filtered. CLONE_NEWTIME is not checked
  on ``clone``: it equals bit 0x80 of CSIGNAL there and can only be requested through clone3
  (ENOSYS) or unshare (denied). ``openat2`` (also a struct) is ENOSYS for the same reason; libc
  and runtimes fall back to ``openat``.
* Setuid/setgid files: when nixcell runs as root the cell's uid is host root, so a file the cell
  marks u+s in a bound host directory would be a setuid-root binary on the host. chmod, fchmod,
  fchmodat, fchmodat2 with S_ISUID|S_ISGID in the mode fail, and so do open/openat/creat/mknod/
  mknodat that would create a file with those bits (open/openat only with O_CREAT or O_TMPFILE:
  the kernel ignores the mode otherwise). mkdir is left alone: a setgid directory is harmless.
* The clock: settimeofday, clock_settime, stime, clock_adjtime and adjtimex are denied outright.
  adjtimex's "modes" field is behind a pointer, so read-only queries (ntp_gettime, adjtimex with
  modes 0) fail with EPERM too; programs treat that as "clock status unavailable".
* Also denied beyond the obvious list, as equivalents of what is on it: quotactl_fd (quotactl on
  an fd), pidfd_getfd (steals an fd from another process under ptrace rules; ``debugger`` lifts
  it), umount/clock_settime64/clock_adjtime64 (the 32-bit ABI spellings).
* Architectures: the native one plus the compat ABIs a process can reach from it (x86 and x32 on
  x86_64, arm on aarch64); libseccomp translates every rule to each of them. A syscall from an
  arch not in the filter (e.g. ``int 0x80`` when x86 is absent) kills the process. When the
  installed libseccomp does not know a syscall we must deny, we add it by its (unified) number
  on the native arch only and leave the compat arches out, so their syscalls kill rather than
  bypass the rule; a name we cannot place at all refuses to build (fail closed).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from nixcell.errors import LimitUnavailableError, SpecError

log = logging.getLogger(__name__)

# libseccomp's comparison operators (enum scmp_compare, stable ABI); kept here so that importing
# this module does not import pyseccomp.
_MASKED_EQ = 7

Cmp = tuple[int, int, int, int]  # (argument index, operator, datum_a, datum_b)

_INSTALL_HINT = "install libseccomp (Debian/Ubuntu: apt install libseccomp2)"


@dataclass(frozen=True)
class Rule:
    """Deny ``syscall`` with ``errno`` when any chain of ``when`` matches (``()`` = always)."""

    syscall: str
    when: tuple[tuple[Cmp, ...], ...] = ((),)
    errno: int = errno.EPERM
    note: str = ""

    def describe(self) -> str:
        return f"{self.syscall} ({self.note})" if self.note else self.syscall


def _deny(names: str) -> tuple[Rule, ...]:
    return tuple(Rule(name) for name in names.split())


def _bits_set(arg: int, *masks: int, note: str, name: str) -> Rule:
    """Deny ``name`` when argument ``arg`` has any of ``masks`` set."""
    return Rule(name, tuple(((arg, _MASKED_EQ, m, m),) for m in masks), note=note)


def _personality(free: int = 0, *, allowed: str) -> Rule:
    """Deny personality(x) unless x is 0, 0xffffffff (the query) or 0 plus ``free`` flags.

    libseccomp takes one comparison per argument per rule, so "x not in {0, 0xffffffff}" is an
    OR of masked compares: 32 bits, outside ``free``, that are neither all 0 nor all 1 have
    somewhere on their cyclic list a 1 followed by a 0. All-one-but-free is denied on its own.
    """
    ring = [b for b in range(32) if not free >> b & 1]
    chains = [
        ((0, _MASKED_EQ, (1 << a) | (1 << b), 1 << a),)
        for a, b in zip(ring, ring[1:] + ring[:1], strict=True)
    ]
    if free:
        chains.append(((0, _MASKED_EQ, 0xFFFFFFFF, 0xFFFFFFFF & ~free),))
    return Rule("personality", tuple(chains), note=f"except {allowed}")


S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT, O_TMPFILE_BIT = 0o100, 0o20000000  # asm-generic values, shared by x86 and arm
CLONE_NEW = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
# A line discipline other than the terminal's own is kernel code a cell has no use for, and
# with dev.tty.ldisc_autoload=1 setting one loads its module (n_gsm, n_hdlc: past CVEs).
TIOCSETD = 0x5423
AF_NETLINK = 16
SOCKET_FAMILIES = frozenset({1, 2, 10, AF_NETLINK})  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK
ADDR_NO_RANDOMIZE = 0x0040000
_SUID = "mode has S_ISUID or S_ISGID"


def _families(name: str) -> Rule:
    """Deny ``name(domain, ...)`` unless domain is AF_UNIX, AF_INET, AF_INET6 or AF_NETLINK.

    The kernel reads the domain as an int (low 32 bits of the register), so the test is on those
    bits only: a value of 64 or more has one of bits 6..31 set; below 64, each other value is
    its own chain. AF_VSOCK ignores network namespaces, AF_PACKET sees raw frames, AF_ALG and
    AF_KEY reach the kernel's crypto and key APIs: none of them is any cell's business.
    """
    high = [((0, _MASKED_EQ, 1 << b, 1 << b),) for b in range(6, 32)]
    low = [((0, _MASKED_EQ, 0xFFFFFFFF, v),) for v in range(64) if v not in SOCKET_FAMILIES]
    return Rule(
        name, tuple(high + low), errno=errno.EAFNOSUPPORT, note="domain not AF_UNIX/INET/INET6"
    )


def _netlink_protocols() -> Rule:
    """AF_NETLINK only for NETLINK_ROUTE (protocol 0: getifaddrs, ip addr)."""
    chains = tuple(
        ((0, _MASKED_EQ, 0xFFFFFFFF, AF_NETLINK), (2, _MASKED_EQ, 1 << b, 1 << b))
        for b in range(32)
    )
    return Rule("socket", chains, note="AF_NETLINK other than NETLINK_ROUTE")


def _creating(name: str, flags_arg: int, mode_arg: int) -> Rule:
    chains = tuple(
        ((flags_arg, _MASKED_EQ, f, f), (mode_arg, _MASKED_EQ, m, m))
        for f in (O_CREAT, O_TMPFILE_BIT)
        for m in (S_ISUID, S_ISGID)
    )
    return Rule(name, chains, note=f"O_CREAT or O_TMPFILE, and {_SUID}")


# Named pieces; a profile lifts whole pieces (and may add a looser variant of one).
_GROUPS: dict[str, tuple[Rule, ...]] = {
    "namespaces": (
        Rule("unshare"),
        _bits_set(0, *CLONE_NEW.values(), name="clone", note="flags with any CLONE_NEW*"),
        Rule("setns"),
    ),
    "mount": _deny("mount umount2 umount pivot_root"),
    "mount-api": _deny("open_tree move_mount fsopen fsmount fsconfig fspick mount_setattr"),
    "clone3": (Rule("clone3", errno=errno.ENOSYS, note="ENOSYS: glibc falls back to clone"),),
    "tracing": _deny("ptrace process_vm_readv process_vm_writev pidfd_getfd"),
    "personality": (_personality(allowed="0 and 0xffffffff"),),
    "personality-aslr": (
        _personality(ADDR_NO_RANDOMIZE, allowed="0, 0xffffffff and ADDR_NO_RANDOMIZE"),
    ),
    "kernel": _deny(
        "kexec_load kexec_file_load init_module finit_module delete_module bpf perf_event_open "
        "userfaultfd acct swapon swapoff reboot syslog lookup_dcookie quotactl quotactl_fd "
        "vhangup uselib nfsservctl name_to_handle_at open_by_handle_at"
    ),
    "keys": _deny("keyctl add_key request_key"),
    "sockets": (
        _families("socket"),
        _families("socketpair"),
        _netlink_protocols(),
        # i386's multiplexer hides the domain behind a pointer: 32-bit code gets no sockets
        # through it (modern 32-bit libcs call socket() directly, which is filtered).
        Rule("socketcall", note="i386 multiplexer: arguments unreadable"),
    ),
    "io_uring": _deny("io_uring_setup io_uring_enter io_uring_register"),
    "clock": _deny(
        "settimeofday stime clock_settime clock_settime64 clock_adjtime clock_adjtime64 adjtimex"
    ),
    "tty": (
        Rule(
            "ioctl",  # cmd is an unsigned int: compare the low 32 bits only
            tuple(((1, _MASKED_EQ, 0xFFFFFFFF, cmd),) for cmd in (TIOCSTI, TIOCLINUX, TIOCSETD)),
            note="TIOCSTI, TIOCLINUX or TIOCSETD",
        ),
    ),
    "setuid-files": (
        _bits_set(1, S_ISUID, S_ISGID, name="chmod", note=_SUID),
        _bits_set(1, S_ISUID, S_ISGID, name="fchmod", note=_SUID),
        _bits_set(2, S_ISUID, S_ISGID, name="fchmodat", note=_SUID),
        _bits_set(2, S_ISUID, S_ISGID, name="fchmodat2", note=_SUID),
        _creating("open", 1, 2),
        _creating("openat", 2, 3),
        _bits_set(1, S_ISUID, S_ISGID, name="creat", note=_SUID),
        _bits_set(1, S_ISUID, S_ISGID, name="mknod", note=_SUID),
        _bits_set(2, S_ISUID, S_ISGID, name="mknodat", note=_SUID),
        Rule("openat2", errno=errno.ENOSYS, note="ENOSYS: callers fall back to openat"),
    ),
}
_DEFAULT_GROUPS = tuple(g for g in _GROUPS if g != "personality-aslr")


@dataclass(frozen=True)
class _Profile:
    help: str
    lifts: frozenset[str] = frozenset()
    adds: tuple[str, ...] = ()


_PROFILES: dict[str, _Profile] = {
    "nested-sandbox": _Profile(
        "allow user/mount namespaces so bwrap or chromium can sandbox inside the cell: lifts "
        "unshare, clone with CLONE_NEW*, setns, mount, umount2, pivot_root",
        frozenset({"namespaces", "mount"}),
    ),
    "debugger": _Profile(
        "allow gdb/strace: lifts ptrace, process_vm_readv/writev, pidfd_getfd and "
        "personality(ADDR_NO_RANDOMIZE)",
        frozenset({"tracing", "personality"}),
        ("personality-aslr",),
    ),
    "jit-runtime": _Profile(
        "accepted for nix-jail compatibility; changes nothing here: the default filter never "
        "restricts executable memory (mmap/mprotect PROT_EXEC, memfd_create)",
    ),
}

PROFILES: dict[str, str] = {name: p.help for name, p in _PROFILES.items()}


def check_profiles(names: Iterable[str]) -> tuple[str, ...]:
    """Sorted unique profile names; unknown names are a usage error listing the valid ones."""
    wanted = sorted(set(names))
    unknown = [n for n in wanted if n not in _PROFILES]
    if unknown:
        raise SpecError(
            f"unknown hardening profile {', '.join(map(repr, unknown))} "
            f"(valid: {', '.join(sorted(_PROFILES))})"
        )
    return tuple(wanted)


def _rules(profiles: tuple[str, ...]) -> tuple[Rule, ...]:
    chosen = [_PROFILES[p] for p in check_profiles(profiles)]
    lifted = frozenset().union(*(p.lifts for p in chosen))
    groups = [g for g in _DEFAULT_GROUPS if g not in lifted]
    groups += [g for p in chosen for g in p.adds if g not in groups]
    return tuple(rule for g in groups for rule in _GROUPS[g])


def rules(profiles: tuple[str, ...]) -> tuple[Rule, ...]:
    """The filter's rules for ``profiles`` (other backends express them their own way)."""
    return _rules(profiles)


def denied_syscalls(profiles: tuple[str, ...]) -> list[str]:
    """What the filter denies, one line per syscall: ``name`` or ``name (condition)``."""
    return sorted(rule.describe() for rule in _rules(profiles))


# Syscalls numbered after the 2019 unification (>= 424) carry the same number on every arch we
# support natively, so they can be added by number when libseccomp is older than the kernel.
_BY_NUMBER = {
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "clone3": 435,
    "openat2": 437,
    "pidfd_getfd": 438,
    "mount_setattr": 442,
    "quotactl_fd": 443,
    "fchmodat2": 452,
}
# Names that exist only on 32-bit ABIs: unknown to an old libseccomp, they need no native rule.
_COMPAT_ONLY = frozenset({"umount", "stime", "clock_settime64", "clock_adjtime64"})
_NR_SCMP_ERROR = -1


def _pyseccomp() -> Any:
    try:
        import pyseccomp
    except ImportError as exc:
        raise LimitUnavailableError(
            f"seccomp filter unavailable: pyseccomp is not installed (pip install pyseccomp; {exc})"
        ) from exc
    except (RuntimeError, OSError) as exc:
        raise LimitUnavailableError(
            f"seccomp filter unavailable: libseccomp not found; {_INSTALL_HINT}", detail=str(exc)
        ) from exc
    return pyseccomp


def _compat_arches(sc: Any) -> tuple[int, ...]:
    native = sc.system_arch()
    if native == sc.Arch.X86_64:
        return (sc.Arch.X86, sc.Arch.X32)
    if native == sc.Arch.AARCH64:
        return (sc.Arch.ARM,)
    return ()


def _native_unified(sc: Any) -> bool:
    return sc.system_arch() in (sc.Arch.X86_64, sc.Arch.AARCH64, sc.Arch.RISCV64)


def _filter(rules: Iterable[Rule], by_number: dict[str, int] = _BY_NUMBER) -> Any:
    """The libseccomp filter object for ``rules`` (tests export it as text)."""
    sc = _pyseccomp()
    rules = tuple(rules)
    unknown = {
        r.syscall for r in rules if sc.resolve_syscall(sc.Arch.NATIVE, r.syscall) == _NR_SCMP_ERROR
    }
    for name in sorted(unknown):
        if name not in _COMPAT_ONLY and not (name in by_number and _native_unified(sc)):
            raise LimitUnavailableError(
                f"seccomp filter unavailable: libseccomp does not know the syscall {name!r}; "
                "install a newer libseccomp",
            )
    filt = sc.SyscallFilter(sc.ALLOW)
    try:  # kill the whole process, not one thread, on a foreign-arch syscall
        filt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    except OSError:
        log.debug("libseccomp/kernel without KILL_PROCESS; foreign arch kills the thread")
    if unknown:
        log.warning(
            "libseccomp does not know %s: only native syscalls are allowed in cells (32-bit "
            "compat syscalls will be killed); a newer libseccomp lifts this",
            ", ".join(sorted(unknown)),
        )
    else:
        for arch in _compat_arches(sc):
            filt.add_arch(arch)
    for rule in rules:
        if rule.syscall in unknown:
            if rule.syscall in _COMPAT_ONLY:
                continue
            target: int | str = by_number[rule.syscall]
        else:
            target = rule.syscall
        for chain in rule.when:
            args = [sc.Arg(*cmp) for cmp in chain]
            filt.add_rule(sc.ERRNO(rule.errno), target, *args)
    return filt


def _export(filt: Any) -> bytes:
    fd = os.memfd_create("nixcell-seccomp", os.MFD_CLOEXEC)
    with open(fd, "w+b") as f:
        filt.export_bpf(f)
        f.seek(0)
        return f.read()


@lru_cache(maxsize=16)
def _build(profiles: tuple[str, ...]) -> bytes:
    return _export(_filter(_rules(profiles)))


def build_filter(profiles: tuple[str, ...]) -> bytes:
    """The compiled BPF program (struct sock_filter[]) for bwrap's ``--seccomp FD``."""
    return _build(check_profiles(profiles))


def unavailable_reason() -> str | None:
    """Why a seccomp filter cannot be applied here, or None when it can."""
    try:
        _pyseccomp()
    except LimitUnavailableError as exc:
        return exc.message
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            has_seccomp = any(line.startswith("Seccomp:") for line in f)
    except OSError:
        has_seccomp = False
    try:
        with open("/proc/sys/kernel/seccomp/actions_avail", encoding="ascii") as f:
            has_errno = "errno" in f.read().split()
    except FileNotFoundError:  # kernels before 4.14 lack the file, not the feature
        has_errno = True
    except OSError:
        has_errno = False
    if not (has_seccomp and has_errno):
        return "the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER)"
    return None
