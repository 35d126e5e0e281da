"""Cell cgroups against the real kernel: limits bite, kills reach every process, nothing is left.

Runs on whatever the host has (here cgroup v1: memory, pids, cpu, freezer). The v2 tests use
the host's cgroup2 mount with the only controller this kernel leaves to it (hugetlb) to
exercise the real v2 paths that need no memory/pids/cpu: the no-internal-processes rule and
the move into ``nixcell-main``, ``cgroup.kill``, ``cgroup.freeze`` and removal. Enforcement of
memory.max/pids.max/cpu.max on v2 is not exercised here (see tests/unit/test_cgroups_v2.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nixcell.errors import LimitUnavailableError, SandboxError
from nixcell.sandbox.cgroupfs import (
    ControllerSite,
    discover,
    freeze,
    parse_keyed,
    parse_mountinfo,
    read_text,
    read_words,
    write_value,
)
from nixcell.sandbox.cgroups import (
    CellCgroup,
    CgroupDir,
    CgroupLimits,
    create_cell_cgroup,
    describe_host,
    list_cell_cgroups,
    sweep_stale,
)

pytestmark = [pytest.mark.integration, pytest.mark.root]
PREFIX = f"t{os.getpid()}"
# parent plus one child that setsid()s and one grandchild that escapes by a double fork
TREE = """
import os, time
a = os.fork()
if a == 0:
    os.setsid(); time.sleep(120); os._exit(0)
r, w = os.pipe()
b = os.fork()
if b == 0:
    c = os.fork()
    if c == 0:
        os.setsid(); time.sleep(120); os._exit(0)
    os.write(w, str(c).encode()); os._exit(0)
os.waitpid(b, 0)
print(os.getpid(), a, int(os.read(r, 32)), flush=True)
time.sleep(120)
"""


def cid(name: str) -> str:
    return f"{PREFIX}-{name}"


def ours() -> list[Path]:
    return [p for p in list_cell_cgroups() if PREFIX in p.name]


@pytest.fixture(scope="module", autouse=True)
def host() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates cgroups and moves processes into them")
    sites = describe_host().controllers
    unusable = [f"{c}: {sites[c].reason}" for c in ("memory", "pids", "cpu") if not sites[c].usable]
    if unusable:
        pytest.skip("cgroups unusable here: " + "; ".join(unusable))
    yield
    assert ours() == [], "nixcell cgroups left behind"


def gated(code: str) -> subprocess.Popen[str]:
    """A python that waits for a line on stdin (so it is in the cgroup first), then runs code."""
    prog = "import sys; sys.stdin.readline()\n" + code
    return subprocess.Popen(
        [sys.executable, "-c", prog], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_dead(pids: list[int], bound: float = 20.0) -> list[int]:
    deadline = time.monotonic() + bound
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [p for p in pids if alive(p)]


def test_describe_host_nests_v1_cells_under_our_own_cgroup():
    host = describe_host()
    own = dict(
        (ctrl, path)
        for line in Path("/proc/self/cgroup").read_text().splitlines()
        for ctrl_list, path in [line.split(":", 2)[1:]]
        for ctrl in ctrl_list.split(",")
    )
    site = host.controllers["memory"]
    if site.version != "v1":
        pytest.skip("memory is not on cgroup v1 here")
    assert host.version == "v1"
    assert site.base == Path("/sys/fs/cgroup/memory") / own["memory"].lstrip("/") / "nixcell"


def test_memory_limit_oom_kills_and_is_counted():
    with create_cell_cgroup(cid("oom"), CgroupLimits(memory=64 << 20)) as cg:
        proc = gated("b = b'x' * (1 << 30)\nprint('survived')")
        cg.add_pid(proc.pid)
        release(proc)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        assert "survived" not in out
        assert cg.oom_kills() >= 1


def test_memory_that_fits_is_not_an_oom():
    with create_cell_cgroup(cid("fits"), CgroupLimits(memory=128 << 20)) as cg:
        proc = gated("b = b'x' * (16 << 20)\nprint('ok')")
        cg.add_pid(proc.pid)
        release(proc)
        assert proc.communicate(timeout=120) == ("ok\n", None)
        assert cg.oom_kills() == 0


def test_memory_files_forbid_swap_and_keep_the_oom_killer(tmp_path):
    with create_cell_cgroup(cid("memfiles"), CgroupLimits(memory=64 << 20)) as cg:
        d = cg.paths["memory"]
        if (d / "memory.limit_in_bytes").exists():
            assert read_text(d / "memory.limit_in_bytes").strip() == str(64 << 20)
            if (d / "memory.memsw.limit_in_bytes").exists():
                assert read_text(d / "memory.memsw.limit_in_bytes").strip() == str(64 << 20)
            assert parse_keyed(read_text(d / "memory.oom_control"))["oom_kill_disable"] == 0
        else:
            assert read_text(d / "memory.max").strip() == str(64 << 20)


def test_pids_limit_makes_fork_fail_with_eagain():
    code = """
import errno, os, time
n = 0
while n < 64:  # bounded, should the limit not bite
    try:
        pid = os.fork()
    except OSError as e:
        print(errno.errorcode[e.errno], n, flush=True)
        break
    if pid == 0:
        time.sleep(120)
        os._exit(0)
    n += 1
else:
    print("UNLIMITED", n, flush=True)
time.sleep(120)
"""
    with create_cell_cgroup(cid("pids"), CgroupLimits(pids=16)) as cg:
        proc = gated(code)
        cg.add_pid(proc.pid)
        release(proc)
        assert proc.stdout is not None
        name, forked = proc.stdout.readline().split()
        assert name == "EAGAIN"
        # pids.max is 17: the 16 asked for plus the slot of bwrap's monitor (absent here)
        assert 1 <= int(forked) <= 16
        assert 2 <= len(cg.pids()) <= 17
        assert int(read_text(cg.paths["pids"] / "pids.current")) <= 17
        cg.kill_all()
        assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.parametrize(("cpus", "quota"), [(0.2, 20_000), (1.5, 150_000)])
def test_cpu_quota_files(cpus, quota):
    with create_cell_cgroup(cid(f"cpu{quota}"), CgroupLimits(cpus=cpus)) as cg:
        d = cg.paths["cpu"]
        if (d / "cpu.cfs_quota_us").exists():
            assert read_text(d / "cpu.cfs_quota_us").strip() == str(quota)
            assert read_text(d / "cpu.cfs_period_us").strip() == "100000"
        else:
            assert read_text(d / "cpu.max").split() == [str(quota), "100000"]


def test_only_requested_controllers_are_used():
    with create_cell_cgroup(cid("only"), CgroupLimits(pids=8)) as cg:
        assert set(cg.paths) <= {"pids", "freezer"}


def start_tree_in(cg):
    """Start the forking TREE inside ``cg`` and check every process of it is counted there."""
    proc = gated(TREE)
    cg.add_pid(proc.pid)
    release(proc)
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert set(pids) <= set(cg.pids())
    return proc, pids


def test_kill_all_reaches_processes_that_left_the_tree():
    with create_cell_cgroup(cid("tree"), CgroupLimits(pids=32, memory=128 << 20)) as cg:
        proc, pids = start_tree_in(cg)
        cg.kill_all()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert wait_dead(pids) == []
        assert cg.pids() == []


def test_kill_all_stops_a_fork_loop():
    """16 processes that fork and reap without pause: the cell's pid list never holds still."""
    code = """
import os
for _ in range(4):
    os.fork()
while True:
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""
    with create_cell_cgroup(cid("churn"), CgroupLimits(pids=64, cpus=0.5)) as cg:
        proc = gated(code)
        cg.add_pid(proc.pid)
        release(proc)
        deadline = time.monotonic() + 30
        while len(cg.pids()) < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(cg.pids()) >= 16
        cg.kill_all()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while cg.pids() and time.monotonic() < deadline:  # a survivor would keep forking
            time.sleep(0.02)
        assert cg.pids() == []


def test_remove_kills_live_processes_and_leaves_no_directory():
    cg = create_cell_cgroup(cid("live"), CgroupLimits(memory=64 << 20, pids=32, cpus=1))
    proc = subprocess.Popen(["sleep", "120"])
    cg.add_pid(proc.pid)
    paths = list(cg.paths.values())
    assert len(paths) >= 3 and all(p.is_dir() for p in paths)
    cg.remove()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert [p for p in paths if p.exists()] == []
    cg.remove()  # idempotent


def test_context_manager_removes_on_error():
    with pytest.raises(RuntimeError), create_cell_cgroup(cid("ctx"), CgroupLimits(pids=4)) as cg:
        paths = list(cg.paths.values())
        raise RuntimeError("boom")
    assert [p for p in paths if p.exists()] == []


def test_add_pid_of_an_exited_process_is_an_error():
    with create_cell_cgroup(cid("gone"), CgroupLimits(pids=4)) as cg:
        proc = subprocess.Popen(["true"])
        proc.wait()
        with pytest.raises(SandboxError, match="has exited"):
            cg.add_pid(proc.pid)


def test_ordinary_user_is_refused_not_run_weaker():
    """uid 65534 cannot write the v1 hierarchies: create must raise, naming the limit."""
    if describe_host().controllers["memory"].version != "v1":
        pytest.skip("memory is not on cgroup v1 here")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                create_cell_cgroup(cid("nobody"), CgroupLimits(memory=64 << 20))
                os.write(write, b"created")
            except LimitUnavailableError as e:
                os.write(write, str(e).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    assert message.startswith("cannot enforce --memory: cgroup v1 memory hierarchy /sys/fs/cgroup/")
    assert "is not writable by uid 65534" in message
    assert "run nixcell as root" in message


def leak(cell_id: str) -> list[Path]:
    """A nixcell that creates a cell cgroup and is SIGKILLed before it can remove it."""
    code = (
        "import os, sys\n"
        "from nixcell.sandbox.cgroups import CgroupLimits, create_cell_cgroup\n"
        "cg = create_cell_cgroup(sys.argv[1], CgroupLimits(memory=32 << 20, pids=8))\n"
        "print(*cg.paths.values(), flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, cell_id], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    paths = [Path(p) for p in done.stdout.split()]
    assert paths and all(p.is_dir() for p in paths)
    return paths


def test_sweep_stale_removes_leftovers_but_not_live_cells():
    leaked = leak(cid("leak"))
    with create_cell_cgroup(cid("held"), CgroupLimits(pids=8)) as held:
        removed = sweep_stale()
        assert {str(p) for p in leaked} <= set(removed)
        assert [p for p in leaked if p.exists()] == []
        assert all(p.is_dir() for p in held.paths.values())  # empty, but its nixcell lives


def test_same_id_reclaims_a_leftover_and_refuses_a_live_cell():
    leaked = leak(cid("again"))
    limits = CgroupLimits(memory=32 << 20, pids=8)
    with create_cell_cgroup(cid("again"), limits) as cg:
        assert sorted(cg.paths.values()) == sorted(leaked)
        with pytest.raises(SandboxError, match="in use by another cell"):
            create_cell_cgroup(cid("again"), limits)
        assert all(p.is_dir() for p in cg.paths.values())


# --- cgroup v2, for real, with the hugetlb controller --------------------------------------


@pytest.fixture
def v2_base() -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A v2 cgroup holding one process, with hugetlb delegated to it (like a systemd scope)."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    unified = next((m.mount_point for m in mounts if m.version == "v2" and m.root == "/"), None)
    if unified is None or "hugetlb" not in read_words(unified / "cgroup.controllers"):
        pytest.skip("no cgroup2 mount with a free controller (hugetlb) on this host")
    enabled_before = "hugetlb" in read_words(unified / "cgroup.subtree_control")
    if not enabled_before:
        write_value(unified / "cgroup.subtree_control", "+hugetlb")
    base = unified / f"nixcell-test-{PREFIX}"
    base.mkdir()
    helper = subprocess.Popen(["sleep", "120"])
    try:
        write_value(base / "cgroup.procs", str(helper.pid))
        yield base, helper
    finally:
        helper.kill()
        helper.wait()
        for child in [p for p in base.iterdir() if p.is_dir()]:
            child.rmdir()
        base.rmdir()
        if not enabled_before:
            with contextlib.suppress(OSError):
                write_value(unified / "cgroup.subtree_control", "-hugetlb")


def test_v2_discovery_and_the_move_into_our_leaf(v2_base):
    base, helper = v2_base
    host = discover(
        Path("/proc/self/mountinfo").read_text(),
        Path("/proc/self/cgroup").read_text(),
        env_root=str(base),
        controllers=("hugetlb", "memory"),
    )
    assert host.controllers["hugetlb"] == ControllerSite("hugetlb", "v2", base)
    if describe_host().controllers["memory"].version == "v1":
        assert host.controllers["memory"].version == "v1"  # hybrid: v1 wins where mounted
    with pytest.raises(OSError) as err:  # the kernel's no-internal-processes rule
        write_value(base / "cgroup.subtree_control", "+hugetlb")
    assert err.value.errno == errno.EBUSY

    cell = base / f"nixcell-{cid('v2')}"
    cg = CellCgroup.materialize(cid("v2"), [CgroupDir(cell, "v2", ("hugetlb",))], CgroupLimits())
    with cg:
        assert f"0::/{base.name}/nixcell-main" in Path(f"/proc/{helper.pid}/cgroup").read_text()
        assert "hugetlb" in read_words(base / "cgroup.subtree_control")
        assert any(f.name.startswith("hugetlb.") for f in cell.iterdir())
        proc, pids = start_tree_in(cg)
        cg.kill_all()  # cgroup.kill
        assert proc.wait(timeout=30) == -signal.SIGKILL
        assert wait_dead(pids) == []
    assert not cell.exists()
    assert alive(helper.pid)


def test_v2_freeze_and_remove_with_live_processes(v2_base):
    base, _ = v2_base
    cell = base / f"nixcell-{cid('v2freeze')}"
    cg = CellCgroup.materialize(cid("v2freeze"), [CgroupDir(cell, "v2", ())], CgroupLimits())
    proc = subprocess.Popen(["sleep", "120"])
    cg.add_pid(proc.pid)
    assert cg.pids() == [proc.pid]
    assert freeze(cell, "v2", True) is True
    assert parse_keyed(read_text(cell / "cgroup.events"))["frozen"] == 1
    freeze(cell, "v2", False)
    cg.remove()
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not cell.exists()


def test_a_host_mount_whose_name_is_not_utf8_does_not_stop_limited_cells(tmp_path, offline_set):
    """/proc/self/mountinfo lists every host mount; one named with a non-UTF-8 byte (a user's
    directory, a FUSE or Docker volume) once made every limited run an internal error. The mount
    is made in a private mount namespace of the nixcell run itself, so nothing else sees it."""
    from tests.conftest import NIXCELL

    odd = os.fsencode(tmp_path) + b"/x-\xff"
    os.mkdir(odd)
    script = b'mount --bind "$1" "$1" && exec "$2" run -p coreutils --memory 64M --pids 32 -- true'
    done = subprocess.run(
        [b"unshare", b"-m", b"--propagation", b"private", b"sh", b"-c", script, b"sh", odd,
         os.fsencode(NIXCELL)],
        capture_output=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [x for x in done.stderr.splitlines() if not x.startswith(b"nixcell: no nixpkgs found")]
    assert said == [], done.stderr
