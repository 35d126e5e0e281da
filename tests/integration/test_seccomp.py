"""The seccomp filter against the real kernel: a syscall probe runs under bare bwrap.

Every expectation is checked against an unfiltered run of the same probe in the same sandbox,
so EPERM means "the filter said no" and a lifted call behaves exactly as without a filter.
Two sandboxes: ``cell`` (uid 1000 in a user namespace, as cells run) and ``root`` (host root
with all capabilities, no user namespace; needs root) where the capability-gated calls get past
the kernel's own EPERM and so show what the filter does to them.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from nixcell.sandbox import seccomp
from nixcell.sandbox.seccomp import PROFILES, build_filter

pytestmark = pytest.mark.integration

PROBE = Path(__file__).resolve().parents[1] / "probes" / "syscalls.py"
_spec = importlib.util.spec_from_file_location("syscall_probe", PROBE)
assert _spec and _spec.loader
probe_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe_module)
CHECKS: set[str] = set(probe_module.CHECKS)
PRIVILEGED: frozenset[str] = probe_module.PRIVILEGED

COMMON = ["--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--proc", "/proc"]
COMMON += ["--dev", "/dev", "--tmpfs", "/tmp"]
REPO = Path(__file__).resolve().parents[2]
COMMON += ["--ro-bind", str(REPO), str(REPO)]  # a checkout under /tmp stays visible (venv, probe)
NO_USERNS = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup"]
SANDBOXES = {
    "cell": ["bwrap", "--unshare-all", *COMMON, "--uid", "1000", "--gid", "1000"],
    "root": ["bwrap", *NO_USERNS, *COMMON, "--cap-add", "ALL"],
}

_NS = {f"clone_{flag}" for flag in probe_module.CLONE_NEW}
LIFTS = {
    "nested-sandbox": _NS
    | {"unshare", "clone_newuser_real", "clone3_fallback_newuser", "setns", "mount", "umount2"}
    | {"pivot_root", "int80_unshare", "int80_clone_newuser", "x32_unshare"},
    "debugger": {"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"}
    | {"personality_aslr"},
    "jit-runtime": set(),
}
ENOSYS = {"clone3", "openat2"}
# Denied with another errno than EPERM: socket families a cell has no business with.
DENIED_WITH = {
    c: errno.EAFNOSUPPORT
    for c in (
        "socket_vsock",
        "socket_vsock_high",
        "socket_vsock_dgram",
        "socketpair_vsock",
        "socket_packet",
        "socket_xdp",
        "int80_socket_vsock",
        "x32_socket_vsock",
    )
}
# Never denied. open_tree_attr: see the report; the kernel already refuses what it could add.
ALLOWED = {"threads", "posix_spawn", "clone_plain", "personality_query", "personality_linux"}
ALLOWED |= {"ioctl_tcgets", "chmod_644", "open_nocreat_suid_mode", "openat_creat_644"}
ALLOWED |= {"mkdir_sgid", "open_tree_attr"}
ALLOWED |= {"socket_netlink_route", "socket_inet6", "socket_unix_high"}
PROFILE_SETS = [(), *((p,) for p in sorted(PROFILES)), tuple(sorted(PROFILES))]


def need(sandbox: str) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("needs bwrap")
    if sandbox == "root" and os.geteuid() != 0:
        pytest.skip("needs root: the 'root' sandbox keeps host capabilities")


def in_sandbox(
    sandbox: str, bpf: bytes | None, argv: Sequence[str], extra: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run argv in the sandbox, with ``bpf`` (if any) handed to bwrap through a pipe."""
    cmd = [*SANDBOXES[sandbox], *extra]
    fds: tuple[int, ...] = ()
    if bpf is not None:
        read, write = os.pipe()
        os.write(write, bpf)  # far below the pipe buffer
        os.close(write)
        cmd += ["--seccomp", str(read)]
        fds = (read,)
    try:
        return subprocess.run(
            [*cmd, *argv], pass_fds=fds, capture_output=True, text=True, timeout=60
        )
    finally:
        for fd in fds:
            os.close(fd)


def probe(sandbox: str, bpf: bytes | None, *checks: str) -> dict[str, int]:
    proc = in_sandbox(sandbox, bpf, [sys.executable, str(PROBE), *checks])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def unfiltered() -> dict[str, dict[str, int]]:
    cache: dict[str, dict[str, int]] = {}

    def get(sandbox: str) -> dict[str, int]:
        if sandbox not in cache:
            cache[sandbox] = probe(sandbox, None)
        return cache[sandbox]

    return get  # type: ignore[return-value]


def test_expectation_sets_cover_the_probe() -> None:
    lifted = set().union(*LIFTS.values())
    assert lifted | ENOSYS | ALLOWED <= CHECKS
    assert not (ALLOWED & (lifted | ENOSYS))
    assert set(LIFTS) == set(PROFILES)


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_probe_distinguishes_the_filter(sandbox: str, unfiltered) -> None:
    """Unfiltered, no check answers EPERM (except capability checks in the unprivileged cell)."""
    need(sandbox)
    control = unfiltered(sandbox)
    if os.uname().machine == "x86_64":
        assert set(control) == CHECKS
    exempt = PRIVILEGED if sandbox == "cell" else frozenset()
    assert {c for c, err in control.items() if err == errno.EPERM} <= exempt
    assert all(control[c] == 0 for c in ALLOWED - {"ioctl_tcgets", "open_tree_attr"})
    assert all(control[c] != errno.ENOSYS for c in ENOSYS)
    # unfiltered, vsock and the other refused families open (or fail otherwise) here
    assert {c for c, err in DENIED_WITH.items() if control.get(c) == err} == set()


def expected(profiles: tuple[str, ...], control: dict[str, int]) -> dict[str, int]:
    lifted = set().union(*(LIFTS[p] for p in profiles))
    result = {}
    for check, err in control.items():
        if check in ALLOWED or check in lifted:
            result[check] = err
        elif check in ENOSYS:
            result[check] = errno.ENOSYS
        elif check in DENIED_WITH:
            result[check] = DENIED_WITH[check]
        else:
            result[check] = errno.EPERM
    return result


@pytest.mark.parametrize("profiles", PROFILE_SETS, ids=lambda p: "+".join(p) or "default")
@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_filter_denies_and_profiles_lift_exactly_theirs(
    sandbox: str, profiles: tuple[str, ...], unfiltered
) -> None:
    need(sandbox)
    control = unfiltered(sandbox)
    got = probe(sandbox, build_filter(profiles))
    want = expected(profiles, control)
    assert set(got) == set(want)
    name = errno.errorcode.get
    wrong = {c: f"got {name(e, e)}, want {name(want[c], want[c])}" for c, e in got.items()}
    assert {c: msg for c, msg in wrong.items() if got[c] != want[c]} == {}


def test_threads_survive_clone3_enosys_but_namespace_fallback_is_denied() -> None:
    need("cell")
    got = probe(
        "cell", build_filter(()), "clone3", "threads", "posix_spawn", "clone3_fallback_newuser"
    )
    assert got == {
        "clone3": errno.ENOSYS,
        "threads": 0,
        "posix_spawn": 0,
        "clone3_fallback_newuser": errno.EPERM,
    }


NESTED = ["bwrap", "--unshare-user", "--ro-bind", "/", "/", "true"]


def test_nested_bwrap_needs_nested_sandbox() -> None:
    need("cell")
    allowed = in_sandbox("cell", build_filter(("nested-sandbox",)), NESTED)
    assert allowed.returncode == 0, allowed.stderr
    denied = in_sandbox("cell", build_filter(()), NESTED)
    assert denied.returncode != 0
    assert "No permissions to create new namespace" in denied.stderr  # bwrap's words for EPERM


def test_strace_needs_debugger() -> None:
    need("cell")
    if shutil.which("strace") is None:
        pytest.skip("needs strace (apt install strace)")
    trace = ["strace", "-f", "-o", "/dev/null", "true"]
    allowed = in_sandbox("cell", build_filter(("debugger",)), trace)
    assert allowed.returncode == 0, allowed.stderr
    denied = in_sandbox("cell", build_filter(()), trace)
    assert denied.returncode != 0
    assert "Operation not permitted" in denied.stderr


def test_setuid_chmod_is_denied_as_host_root_on_a_bound_directory(tmp_path: Path) -> None:
    """The reason for the rule: as root, a u+s file in a bound host dir is setuid-root."""
    need("root")
    target = tmp_path / "tool"
    target.write_text("#!/bin/sh\n")
    target.chmod(0o755)
    bind = ["--bind", str(tmp_path), str(tmp_path)]
    denied = in_sandbox("root", build_filter(()), ["chmod", "u+s", str(target)], bind)
    assert denied.returncode != 0
    assert "Operation not permitted" in denied.stderr
    assert target.stat().st_mode & 0o7777 == 0o755
    plain = in_sandbox("root", build_filter(()), ["chmod", "go-rx", str(target)], bind)
    assert plain.returncode == 0, plain.stderr
    assert target.stat().st_mode & 0o7777 == 0o700


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="int 0x80 is x86 only")
def test_filter_without_compat_arches_kills_their_syscalls() -> None:
    """The fallback for syscalls libseccomp does not know: native only, i386 calls are killed."""
    need("cell")
    rules = [seccomp.Rule("open_tree_attr")]
    bpf = seccomp._export(seccomp._filter(rules, {"open_tree_attr": 467}))
    got = probe("cell", bpf, "open_tree_attr", "unshare", "int80_unshare")
    assert got["int80_unshare"] == -signal.SIGSYS
    assert got["unshare"] == errno.EINVAL
    assert got["open_tree_attr"] == errno.EPERM
