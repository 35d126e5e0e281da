"""Limits validation and the kernel file formats: what is written where, what is parsed back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.errors import UsageError
from nixcell.sandbox.cgroupfs import (
    Mount,
    _unescape,
    cgroup_dir,
    oom_kills_v1,
    oom_kills_v2,
    parse_keyed,
    parse_mountinfo,
    parse_proc_cgroup,
)
from nixcell.sandbox.cgrouplimits import (
    CgroupLimits,
    cpu_quota,
    limit_writes,
    plan_cell_cgroup,
    valid_cell_id,
)

# /proc/self/mountinfo of this development machine (v1 controllers + an empty cgroup2).
HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_CGROUP = """\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/b59f
1:cpu,cpuacct:/
0::/
"""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"memory": (4 << 20) - 1024}, "--memory 4095K is too small: at least 4M"),
        ({"memory": 0}, "--memory 0 is too small"),
        ({"pids": 0}, "--pids 0 is invalid: at least 1"),
        ({"cpus": 0}, "--cpus 0 is invalid"),
        ({"cpus": -1.0}, "--cpus -1 is invalid"),
        ({"cpus": 0.005}, "--cpus 0.005 is invalid: at least 0.01"),
    ],
)
def test_limits_reject_what_cannot_be_enforced(kwargs, message):
    with pytest.raises(UsageError, match="^" + message.replace(".", r"\.")):
        CgroupLimits(**kwargs)


def test_limits_controllers_and_truth():
    assert CgroupLimits(memory=4 << 20, pids=1, cpus=0.01).controllers() == (
        "memory",
        "pids",
        "cpu",
    )
    assert CgroupLimits(cpus=2).controllers() == ("cpu",)
    assert not CgroupLimits()
    assert CgroupLimits(pids=64)


def test_cpu_quota():
    assert cpu_quota(1.5) == (150_000, 100_000)
    assert cpu_quota(0.2) == (20_000, 100_000)
    assert cpu_quota(0.01) == (1_000, 100_000)


def test_v1_memory_writes_cap_swap_with_memsw():
    writes = limit_writes("memory", "v1", CgroupLimits(memory=256 << 20))
    assert writes == [
        ("memory.limit_in_bytes", "268435456"),
        ("memory.memsw.limit_in_bytes", "268435456"),
        ("memory.kmem.tcp.limit_in_bytes", "268435456"),  # TCP buffers count too
        ("memory.oom_control", "0"),
    ]


def test_v1_memory_without_swap_accounting_turns_swappiness_off():
    no_memsw = lambda name: name != "memory.memsw.limit_in_bytes"  # noqa: E731
    writes = limit_writes("memory", "v1", CgroupLimits(memory=64 << 20), no_memsw)
    assert writes == [
        ("memory.limit_in_bytes", "67108864"),
        ("memory.swappiness", "0"),
        ("memory.kmem.tcp.limit_in_bytes", "67108864"),
        ("memory.oom_control", "0"),
    ]
    none = limit_writes("memory", "v1", CgroupLimits(memory=64 << 20), lambda _: False)
    assert [name for name, _ in none] == [
        "memory.limit_in_bytes",
        "memory.swappiness",
        "memory.oom_control",
    ]


def test_v2_memory_writes():
    limits = CgroupLimits(memory=64 << 20)
    assert limit_writes("memory", "v2", limits) == [
        ("memory.max", "67108864"),
        ("memory.swap.max", "0"),
    ]
    assert limit_writes("memory", "v2", limits, lambda _: False) == [("memory.max", "67108864")]


def test_pids_and_cpu_writes():
    limits = CgroupLimits(pids=16, cpus=0.2)
    # one more than asked: bwrap's monitor process starts inside the cgroup too
    assert limit_writes("pids", "v1", limits) == [("pids.max", "17")]
    assert limit_writes("pids", "v2", limits) == [("pids.max", "17")]
    assert limit_writes("cpu", "v1", limits) == [
        ("cpu.cfs_period_us", "100000"),
        ("cpu.cfs_quota_us", "20000"),
    ]
    assert limit_writes("cpu", "v2", limits) == [("cpu.max", "20000 100000")]
    assert limit_writes("memory", "v2", limits) == []
    assert limit_writes("freezer", "v1", limits) == []


def test_parse_mountinfo_hybrid():
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert [m.mount_point.name for m in mounts] == [
        "cpu",
        "memory",
        "freezer",
        "pids",
        "systemd",
        "unified",
    ]
    assert mounts[0].controllers == frozenset({"cpu"})
    assert mounts[-1] == Mount(Path("/sys/fs/cgroup/unified"), "/", "v2")
    assert "name=systemd" in mounts[4].controllers


def test_parse_mountinfo_comounted_escaped_and_bind_root():
    text = (
        "25 20 0:22 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
        "26 20 0:23 / /mnt/my\\040cg rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n"
        "27 20 0:24 / /proc rw - proc proc rw\n"
    )
    cpu, v2 = parse_mountinfo(text)
    assert (cpu.root, cpu.controllers) == ("/docker/abc", frozenset({"cpu", "cpuacct"}))
    assert v2.mount_point == Path("/mnt/my cg")


def test_parse_proc_cgroup():
    v1, v2 = parse_proc_cgroup(HYBRID_CGROUP)
    assert v1["memory"] == "/process_api/b59f"
    assert v1["cpu"] == v1["cpuacct"] == "/"
    assert v2 == "/"
    assert parse_proc_cgroup("0::/user.slice/app.scope\n") == ({}, "/user.slice/app.scope")


def test_cgroup_dir_strips_the_mount_root():
    plain = Mount(Path("/sys/fs/cgroup/memory"), "/", "v1")
    bound = Mount(Path("/sys/fs/cgroup/memory"), "/docker/abc", "v1")
    assert cgroup_dir(plain, "/a/b") == Path("/sys/fs/cgroup/memory/a/b")
    assert cgroup_dir(plain, "/") == Path("/sys/fs/cgroup/memory")
    assert cgroup_dir(bound, "/docker/abc") == Path("/sys/fs/cgroup/memory")
    assert cgroup_dir(bound, "/docker/abc/x") == Path("/sys/fs/cgroup/memory/x")
    assert cgroup_dir(bound, "/docker/abcd") is None
    assert cgroup_dir(bound, "/other") is None


def test_oom_kill_counters():
    assert oom_kills_v1("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n") == 3
    # kernels before 4.13 have no oom_kill line: failcnt while under_oom means it happened
    assert oom_kills_v1("oom_kill_disable 0\nunder_oom 1\n", "12\n") == 1
    assert oom_kills_v1("oom_kill_disable 0\nunder_oom 0\n", "12\n") == 0
    assert oom_kills_v1("oom_kill_disable 0\nunder_oom 1\n", "0\n") == 0
    events = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 2\noom_group_kill 0\n"
    assert oom_kills_v2(events) == 2
    assert oom_kills_v2("low 0\n") == 0
    assert parse_keyed("populated 1\nfrozen 0\n") == {"populated": 1, "frozen": 0}


# The warm path decodes mountinfo and checks cell ids without `re`; the regular expressions they
# replaced are the oracles here (the id one as a full match: `$` also let a trailing newline in).
_OCTAL_RE = re.compile(r"\\([0-7]{3})")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MOUNT_CHARS = st.text(alphabet="\\0123789 /ab\n\t-", max_size=24)


@settings(max_examples=400, deadline=None)
@given(_MOUNT_CHARS)
def test_mountinfo_unescape_matches_the_octal_regex(text):
    assert _unescape(text) == _OCTAL_RE.sub(lambda m: chr(int(m.group(1), 8)), text)


@pytest.mark.parametrize(("field", "path"), [
    (r"/sys/fs/cgroup/my\040dir", "/sys/fs/cgroup/my dir"), (r"/a\134b", "/a\\b"),
    (r"/a\\134", "/a\\\\"), (r"/t\011\012", "/t\t\n"), (r"/x\08", r"/x\08"), ("/x\\", "/x\\"),
])  # fmt: skip
def test_mountinfo_unescape_examples(field, path):
    assert _unescape(field) == path


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(alphabet="aZ09_.-/\n \x00é", max_size=70), st.text(max_size=70)))
def test_cell_id_check_matches_the_regex_and_refuses_path_tricks(cell_id):
    assert valid_cell_id(cell_id) == bool(_ID_RE.fullmatch(cell_id))
    if valid_cell_id(cell_id):
        assert "/" not in cell_id and "\n" not in cell_id and not cell_id.startswith(".")


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "-a", "_a", "a\n", "a" * 65, "é"])
def test_a_bad_cell_id_gets_no_cgroup(bad):
    with pytest.raises(ValueError, match="invalid cell id"):
        plan_cell_cgroup(bad, CgroupLimits(pids=1))
    assert valid_cell_id("a" * 64) and valid_cell_id("1-a.b_c")
