"""cgroup v2 (and hybrid) decisions, tested on directory trees laid out like a cgroupfs.

What this covers: the choice of hierarchy per controller (v1 wins where a controller is mounted
as v1), the choice of the v2 base (own cgroup, its parent when we sit in our ``nixcell-main``
leaf, ``NIXCELL_CGROUP_ROOT``), the delegation checks (controller listed in
``cgroup.controllers``; base, ``cgroup.procs`` and ``cgroup.subtree_control`` writable — checked
for real as uid 65534 when run as root), the one-line ``LimitUnavailableError`` messages, what
``prepare_v2_base`` writes to ``cgroup.subtree_control``, and that a failed creation leaves no
directory behind.

What this cannot cover: the kernel's behaviour on a v2 host with memory/pids/cpu controllers —
``memory.max``/``pids.max``/``cpu.max`` taking effect, OOM counting in ``memory.events``. This
machine binds those controllers to v1, so a plain directory cannot stand in for them. The real
v2 paths that do not need them (the EBUSY-driven move into ``nixcell-main`` with the ``hugetlb``
controller, ``cgroup.kill``, ``cgroup.freeze``, removal) run against the kernel in
``tests/integration/test_cgroups.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from nixcell.errors import LimitUnavailableError
from nixcell.sandbox.cgroupfs import (
    ControllerSite,
    discover,
    prepare_v2_base,
)
from nixcell.sandbox.cgroups import (
    CellCgroup,
    CgroupDir,
    CgroupLimits,
    list_cell_cgroups,
    plan_cell_cgroup,
)

SCOPE = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope"
MB64 = CgroupLimits(memory=64 << 20)


def make_cgroup(path: Path, controllers: str = "", subtree: str = "", procs: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.controllers").write_text(controllers + "\n")
    (path / "cgroup.subtree_control").write_text(subtree + "\n")
    (path / "cgroup.procs").write_text(procs)
    return path


def v2_host(mnt: Path) -> tuple[str, Path]:
    """A systemd-like v2 tree whose scope got memory and pids delegated (not cpu)."""
    make_cgroup(mnt, "cpuset cpu io memory pids", "cpu memory pids")
    scope = make_cgroup(mnt / SCOPE.lstrip("/"), "memory pids", "", "4242\n")
    return f"30 20 0:26 / {mnt} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n", scope


def test_delegated_scope_is_used_for_delegated_controllers(tmp_path):
    mountinfo, scope = v2_host(tmp_path / "cg")
    host = discover(mountinfo, f"0::{SCOPE}\n")
    assert host.version == "v2"
    assert host.controllers["memory"] == ControllerSite("memory", "v2", scope)
    assert host.controllers["pids"].base == scope
    assert "freezer" not in host.controllers  # v2 freezes and kills with cgroup.freeze/kill
    cpu = host.controllers["cpu"]
    assert not cpu.usable
    assert cpu.reason == (
        f"the cpu controller is not delegated to cgroup v2 subtree {SCOPE} (not in its "
        "cgroup.controllers); run under `systemd-run --user --scope -p Delegate=yes nixcell …` "
        "or set NIXCELL_CGROUP_ROOT to a delegated cgroup"
    )


def test_plan_on_v2_puts_all_controllers_in_one_child(tmp_path):
    mountinfo, scope = v2_host(tmp_path / "cg")
    host = discover(mountinfo, f"0::{SCOPE}\n")
    dirs = plan_cell_cgroup("c1", CgroupLimits(memory=64 << 20, pids=8), host)
    assert dirs == [CgroupDir(scope / "nixcell-c1", "v2", ("memory", "pids"))]
    with pytest.raises(LimitUnavailableError) as err:
        plan_cell_cgroup("c1", CgroupLimits(pids=8, cpus=1.5), host)
    assert str(err.value).startswith("cannot enforce --cpus: the cpu controller is not delegated")
    assert "\n" not in str(err.value)


def test_plan_rejects_cell_ids_that_are_not_one_path_component(tmp_path):
    mountinfo, _ = v2_host(tmp_path / "cg")
    host = discover(mountinfo, f"0::{SCOPE}\n")
    for bad in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            plan_cell_cgroup(bad, MB64, host)


def test_our_own_leaf_means_its_parent_is_the_base(tmp_path):
    mountinfo, scope = v2_host(tmp_path / "cg")
    make_cgroup(scope / "nixcell-main", procs="4242\n")
    host = discover(mountinfo, f"0::{SCOPE}/nixcell-main\n")
    assert host.controllers["memory"].base == scope


def test_env_root_overrides_the_own_cgroup(tmp_path):
    mountinfo, _ = v2_host(tmp_path / "cg")
    other = make_cgroup(tmp_path / "cg" / "delegated", "cpu pids")
    host = discover(mountinfo, f"0::{SCOPE}\n", env_root=str(other))
    assert host.controllers["cpu"] == ControllerSite("cpu", "v2", other)
    assert "not delegated to cgroup v2 subtree " + str(other) in (
        host.controllers["memory"].reason or ""
    )


def test_own_cgroup_outside_the_mount(tmp_path):
    mnt = make_cgroup(tmp_path / "cg", "memory")
    mountinfo = f"30 20 0:26 /box {mnt} rw - cgroup2 cgroup2 rw\n"
    site = discover(mountinfo, "0::/elsewhere\n").controllers["memory"]
    assert site.reason == f"this process's cgroup /elsewhere is not visible under {mnt}"


def test_hybrid_uses_v1_where_a_controller_is_mounted_there(tmp_path):
    memory = tmp_path / "memory"
    (memory / "process_api" / "b59f").mkdir(parents=True)
    (tmp_path / "freezer").mkdir()
    unified = make_cgroup(tmp_path / "unified")  # cgroup2 with no controllers, like here
    mountinfo = (
        f"35 31 0:32 / {memory} rw - cgroup cgroup rw,memory\n"
        f"37 31 0:34 / {tmp_path / 'freezer'} rw - cgroup cgroup rw,freezer\n"
        f"41 31 0:38 / {unified} rw - cgroup2 cgroup2 rw\n"
    )
    host = discover(mountinfo, "6:freezer:/\n4:memory:/process_api/b59f\n0::/\n")
    assert host.version == "v1"
    base = memory / "process_api" / "b59f" / "nixcell"
    assert host.controllers["memory"] == ControllerSite("memory", "v1", base)
    assert host.controllers["pids"].reason is not None
    assert (
        "pids controller is not delegated to cgroup v2 subtree /" in host.controllers["pids"].reason
    )
    assert plan_cell_cgroup("c2", MB64, host) == [
        CgroupDir(base / "c2", "v1", ("memory",)),
        CgroupDir(tmp_path / "freezer" / "nixcell" / "c2", "v1", ("freezer",)),
    ]


def test_no_cgroup_filesystem_at_all():
    host = discover("27 20 0:24 / /proc rw - proc proc rw\n", "")
    assert host.version == "none"
    with pytest.raises(LimitUnavailableError, match=r"^cannot enforce --memory: the memory "):
        plan_cell_cgroup("c3", MB64, host)


def test_undelegated_subtree_is_refused_for_an_ordinary_user(tmp_path):
    """The access check runs for real: as uid 65534 when we are root, else as ourselves."""
    top = Path(tempfile.mkdtemp(prefix="nixcell-v2tree-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        mountinfo, scope = v2_host(top / "cg")
        if os.geteuid() != 0:
            for p in (scope, scope / "cgroup.procs", scope / "cgroup.subtree_control"):
                p.chmod(0o555 if p.is_dir() else 0o444)
            reason = discover(mountinfo, f"0::{SCOPE}\n").controllers["memory"].reason
            uid = os.geteuid()
        else:
            uid = 65534
            reason = _as_user(uid, lambda: discover(mountinfo, f"0::{SCOPE}\n"))
        assert reason == (
            f"cgroup v2 subtree {SCOPE} is not delegated to uid {uid}; run under "
            "`systemd-run --user --scope -p Delegate=yes nixcell …` or set NIXCELL_CGROUP_ROOT "
            "to a delegated cgroup"
        )
    finally:
        shutil.rmtree(top)


def _as_user(uid: int, probe) -> str:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(write, (probe().controllers["memory"].reason or "usable").encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def test_prepare_v2_base_enables_only_what_is_missing(tmp_path):
    base = make_cgroup(tmp_path / "scope", "cpu memory pids", "memory")
    prepare_v2_base(base, ["memory"])
    assert (base / "cgroup.subtree_control").read_text() == "memory\n"  # nothing written
    prepare_v2_base(base, ["pids", "memory", "cpu"])
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +pids"


def test_failed_creation_leaves_nothing_behind_v2(tmp_path):
    # A plain directory has no memory.max: the write fails as it would on a kernel refusing it.
    base = make_cgroup(tmp_path / "scope", "memory", "memory")
    dirs = [CgroupDir(base / "nixcell-c4", "v2", ("memory",))]
    with pytest.raises(LimitUnavailableError) as err:
        CellCgroup.materialize("c4", dirs, MB64)
    assert str(err.value) == (
        f"cannot enforce --memory: writing '67108864' to {base}/nixcell-c4/memory.max failed: "
        "No such file or directory"
    )
    assert not (base / "nixcell-c4").exists()


def test_failed_creation_leaves_nothing_behind_v1(tmp_path):
    own = tmp_path / "memory" / "own"
    own.mkdir(parents=True)
    dirs = [CgroupDir(own / "nixcell" / "c5", "v1", ("memory",))]
    with pytest.raises(LimitUnavailableError, match=r"memory\.limit_in_bytes failed"):
        CellCgroup.materialize("c5", dirs, MB64)
    assert list(own.iterdir()) == []  # the cell dir and the nixcell parent are both gone


def test_list_cell_cgroups_skips_our_leaf_and_foreign_children(tmp_path):
    mountinfo, scope = v2_host(tmp_path / "cg")
    for name in ("nixcell-a", "nixcell-main", "other"):
        make_cgroup(scope / name)
    host = discover(mountinfo, f"0::{SCOPE}\n")
    assert list_cell_cgroups(host) == [scope / "nixcell-a"]
