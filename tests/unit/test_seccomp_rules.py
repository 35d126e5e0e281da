"""The seccomp rule set and its compilation (the kernel's view is in tests/integration)."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
import textwrap

import pytest

from nixcell.errors import LimitUnavailableError, SpecError, UsageError
from nixcell.sandbox import seccomp
from nixcell.sandbox.seccomp import (
    PROFILES,
    build_filter,
    check_profiles,
    denied_syscalls,
    unavailable_reason,
)

ALL = tuple(sorted(PROFILES))
# Everything the default filter must deny (EPERM, or ENOSYS for the struct-argument calls).
REQUIRED_TEXT = """
    unshare clone setns mount umount2 pivot_root open_tree move_mount fsopen fsmount fsconfig
    fspick mount_setattr ptrace process_vm_readv process_vm_writev kexec_load kexec_file_load
    init_module finit_module delete_module bpf perf_event_open keyctl add_key request_key
    io_uring_setup io_uring_enter io_uring_register userfaultfd personality acct swapon swapoff
    reboot settimeofday clock_settime clock_adjtime adjtimex ioctl name_to_handle_at
    open_by_handle_at lookup_dcookie quotactl vhangup uselib nfsservctl syslog clone3 chmod fchmod
    fchmodat fchmodat2 open openat creat mknod mknodat openat2"""
REQUIRED = set(REQUIRED_TEXT.split())
LIFTED = {
    "nested-sandbox": {"unshare", "clone", "setns", "mount", "umount2", "umount", "pivot_root"},
    "debugger": {"ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd"},
    "jit-runtime": set(),
}
EPERM_RET, ENOSYS_RET, ALLOW_RET, KILL_PROCESS_RET = 0x50001, 0x50026, 0x7FFF0000, 0x80000000


def names(profiles: tuple[str, ...]) -> set[str]:
    return {line.split()[0] for line in denied_syscalls(profiles)}


def test_profiles_are_the_three_nix_jail_names_with_help() -> None:
    assert set(PROFILES) == {"nested-sandbox", "debugger", "jit-runtime"}
    assert all(help_text and "\n" not in help_text for help_text in PROFILES.values())
    assert "changes nothing" in PROFILES["jit-runtime"]


def test_check_profiles_sorts_and_dedups() -> None:
    assert check_profiles([]) == ()
    assert check_profiles(["jit-runtime", "debugger", "jit-runtime"]) == ("debugger", "jit-runtime")


def test_unknown_profile_is_a_usage_error_naming_the_valid_ones() -> None:
    with pytest.raises(SpecError) as info:
        check_profiles(["debugger", "gpu"])
    assert isinstance(info.value, UsageError)
    assert info.value.exit_code == 2
    assert "'gpu'" in str(info.value)
    assert "debugger, jit-runtime, nested-sandbox" in str(info.value)
    with pytest.raises(SpecError):
        build_filter(("gpu",))


def test_default_denies_everything_required_and_leaves_mkdir() -> None:
    default = names(())
    assert default >= REQUIRED
    assert "mkdir" not in default
    assert "mkdirat" not in default


def test_conditional_and_enosys_entries_say_so() -> None:
    lines = {line.split()[0]: line for line in denied_syscalls(())}
    assert lines["unshare"] == "unshare"
    assert "ENOSYS" in lines["clone3"]
    assert "ENOSYS" in lines["openat2"]
    assert "CLONE_NEW" in lines["clone"]
    assert "S_ISUID" in lines["chmod"]
    assert "O_CREAT" in lines["openat"]
    assert "TIOCSTI" in lines["ioctl"]


@pytest.mark.parametrize("profile", ALL)
def test_each_profile_lifts_exactly_its_syscalls(profile: str) -> None:
    assert names(()) - names((profile,)) == LIFTED[profile]
    assert names((profile,)) <= names(())


def test_debugger_loosens_personality_only_for_aslr() -> None:
    before = [line for line in denied_syscalls(()) if line.startswith("personality")]
    after = [line for line in denied_syscalls(("debugger",)) if line.startswith("personality")]
    assert before == ["personality (except 0 and 0xffffffff)"]
    assert after == ["personality (except 0, 0xffffffff and ADDR_NO_RANDOMIZE)"]


def test_profiles_combine() -> None:
    assert names(()) - names(ALL) == set().union(*LIFTED.values())
    assert denied_syscalls(("jit-runtime",)) == denied_syscalls(())


def _matches(rule: seccomp.Rule, args: list[int]) -> bool:
    """Evaluate a rule's chains the way the kernel does for MASKED_EQ comparisons."""
    for chain in rule.when:
        assert all(op == seccomp._MASKED_EQ for _, op, _, _ in chain)
        if all(args[arg] & mask == value for arg, _, mask, value in chain):
            return True
    return False


@pytest.mark.parametrize(
    ("profile", "allowed"),
    [((), {0, 0xFFFFFFFF}), (("debugger",), {0, 0xFFFFFFFF, 0x0040000})],
)
def test_personality_rule_denies_every_value_but_the_allowed(
    profile: tuple[str, ...], allowed: set[int]
) -> None:
    (rule,) = [r for r in seccomp._rules(profile) if r.syscall == "personality"]
    rng = random.Random(7)
    values = {1 << b for b in range(32)} | {0xFFFFFFFF ^ (1 << b) for b in range(32)}
    values |= {rng.getrandbits(32) for _ in range(2000)} | allowed | {0x0008, 0x0040008}
    for value in values:
        assert _matches(rule, [value]) == (value not in allowed), hex(value)


def test_open_rules_need_creation_and_a_setid_bit() -> None:
    (rule,) = [r for r in seccomp._rules(()) if r.syscall == "openat"]
    creat, tmpfile, rdonly = 0o100, 0o20200000, 0
    assert _matches(rule, [0, 0, creat, 0o4755])
    assert _matches(rule, [0, 0, tmpfile, 0o2755])
    assert not _matches(rule, [0, 0, creat, 0o755])
    assert not _matches(rule, [0, 0, rdonly, 0o4755])


def _instructions(bpf: bytes) -> list[tuple[int, int, int, int]]:
    return list(struct.iter_unpack("<HBBI", bpf))


def test_filter_is_bpf_with_the_expected_returns() -> None:
    program = _instructions(build_filter(()))
    assert len(program) < 4096  # BPF_MAXINSNS
    assert program[0] == (0x20, 0, 0, 4)  # ld [4]: seccomp_data.arch first
    returns = {k for code, _, _, k in program if code == 0x06}  # BPF_RET | BPF_K
    assert {EPERM_RET, ENOSYS_RET, ALLOW_RET, KILL_PROCESS_RET} <= returns


def test_filter_is_deterministic_cached_and_order_insensitive() -> None:
    first = build_filter(())
    assert build_filter(()) is first
    seccomp._build.cache_clear()
    assert build_filter(()) == first
    assert build_filter(("nested-sandbox", "debugger", "debugger")) is build_filter(
        ("debugger", "nested-sandbox")
    )


def test_filters_differ_per_profile_except_jit_runtime() -> None:
    built = {p: build_filter((p,)) for p in ALL}
    assert built["jit-runtime"] == build_filter(())
    assert (
        len({build_filter(()), built["nested-sandbox"], built["debugger"], build_filter(ALL)}) == 4
    )


@pytest.mark.skipif(
    __import__("platform").machine() != "x86_64", reason="compat arches checked on x86_64"
)
def test_x86_64_filter_covers_x86_and_x32(tmp_path) -> None:
    out = tmp_path / "filter.pfc"
    with out.open("w+b") as f:
        seccomp._filter(seccomp._rules(())).export_pfc(f)
    text = out.read_text()
    for arch in ("x86_64", "x86", "x32"):
        assert f"# filter for arch {arch} (" in text


def test_unknown_syscall_by_number_keeps_native_arch_only(tmp_path, caplog) -> None:
    # this libseccomp does not know open_tree_attr (467): the fallback path runs for real
    out = tmp_path / "filter.pfc"
    with out.open("w+b") as f:
        seccomp._filter([seccomp.Rule("open_tree_attr")], {"open_tree_attr": 467}).export_pfc(f)
    text = out.read_text()
    assert text.count("# filter for arch ") == 1
    assert "== 467" in text
    assert "open_tree_attr" in caplog.text


def test_unplaceable_syscall_refuses_to_build() -> None:
    with pytest.raises(LimitUnavailableError, match="nixcell_no_such_call"):
        seccomp._filter([seccomp.Rule("nixcell_no_such_call")])


def run_python(code: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_importing_the_module_does_not_import_pyseccomp() -> None:
    code = "import sys, nixcell.sandbox.seccomp; print('pyseccomp' in sys.modules)"
    assert run_python(code) == "False"


def test_missing_libseccomp_fails_closed_with_install_hint() -> None:
    # pyseccomp's own "library not found" path, reached by hiding libseccomp from find_library
    out = run_python(
        """
        import ctypes.util
        real = ctypes.util.find_library
        ctypes.util.find_library = lambda name: None if name == "seccomp" else real(name)
        from nixcell.errors import LimitUnavailableError
        from nixcell.sandbox import seccomp
        print(seccomp.unavailable_reason())
        try:
            seccomp.build_filter(())
        except LimitUnavailableError as exc:
            print("raised:", exc)
        """
    )
    reason, raised = out.splitlines()
    assert "apt install libseccomp2" in reason
    assert raised.startswith("raised: seccomp filter unavailable: libseccomp not found")


def test_available_here() -> None:
    assert unavailable_reason() is None
