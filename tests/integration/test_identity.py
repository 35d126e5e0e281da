"""Who a cell is on the host, and what kernel-wide state it can touch: as root and as a user.

The same probe runs in real cells started by the real ``nixcell`` (root, and uid 65534 through
setpriv). From *outside*, the host reads ``/proc/PID/status`` of every process of the cell: none
may have host uid 0, and a root-run cell's uid must be its own, from the subordinate range.
Inside, every global sysctl and the other kernel-wide files must refuse writes, the masked files
must give nothing, the cgroup namespace must be rooted at the cell's own cgroup, and the socket
families that ignore network namespaces must not open.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL
from tests.integration.test_ordinary_user import NOBODY, as_nobody

from nixcell.plan import PROC_MASKED
from nixcell.sandbox import identity

pytestmark = pytest.mark.integration

# Global (not per-namespace) kernel state a process with host uid 0 could write without any
# capability, and the other writable-by-root files of /proc's kernel-wide areas.
SYSCTLS = {
    "/proc/sys/kernel/core_pattern": "|/tmp/pwn",
    "/proc/sys/kernel/randomize_va_space": "0",
    "/proc/sys/kernel/perf_event_paranoid": "-1",
    "/proc/sys/fs/suid_dumpable": "2",
    "/proc/sys/kernel/kptr_restrict": "0",
    "/proc/sys/kernel/dmesg_restrict": "0",
    "/proc/sys/kernel/modprobe": "/tmp/pwn",
    "/proc/sys/kernel/yama/ptrace_scope": "0",
    "/proc/sys/vm/drop_caches": "3",
    "/proc/sys/vm/overcommit_memory": "1",
    "/proc/sys/fs/protected_symlinks": "0",
    "/proc/sys/kernel/unprivileged_bpf_disabled": "0",
    "/proc/sys/net/core/bpf_jit_harden": "0",
    "/proc/sysrq-trigger": "h",
}
PROBE = r"""
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def err(e): return errno.errorcode.get(e.errno, str(e.errno))
out = {"uid": os.getuid(), "writes": {}, "reads": {}, "sockets": {}}
for path, value in json.loads(sys.argv[2]).items():
    if not os.path.exists(path):
        continue
    try:
        with open(path, "w") as f:
            f.write(value)
        out["writes"][path] = "WRITTEN"
    except OSError as e:
        out["writes"][path] = err(e)
for path in json.loads(sys.argv[3]):
    try:
        with open(path, "rb") as f:
            out["reads"][path] = len(f.read(256))
    except IsADirectoryError:
        out["reads"][path] = sorted(os.listdir(path))
    except OSError as e:
        out["reads"][path] = err(e)
out["cgroup"] = sorted({l.split(":", 2)[2] for l in open("/proc/self/cgroup").read().split()})
for name, domain in (("vsock", 40), ("packet", 17), ("alg", 38), ("inet", 2)):
    fd = libc.syscall(41, domain, 1 if domain != 17 else 3, 0)
    out["sockets"][name] = "ok" if fd >= 0 else errno.errorcode[ctypes.get_errno()]
print(json.dumps(out), flush=True)
sys.stdin.read()  # held open while the host looks at us from outside
"""


def _status_ids(pid: int) -> tuple[int, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    if fields["State"].split()[0] in ("Z", "X"):
        return None  # gone, waiting for its status to be collected
    return int(fields["Uid"].split()[1]), int(fields["Gid"].split()[1])  # effective ids


def _cell_processes(nixcell_pid: int) -> dict[int, tuple[int, int]]:
    """Every descendant of the nixcell process (the cell's processes), with host uid/gid."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found: dict[int, tuple[int, int]] = {}
    todo = list(children.get(nixcell_pid, []))
    while todo:
        pid = todo.pop()
        ids = _status_ids(pid)
        if ids is not None:
            found[pid] = ids
        todo += children.get(pid, [])
    return found


def _start(argv: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


def _probe_args(script: Path) -> list[str]:
    masked = [p for p in PROC_MASKED if os.path.exists(p)]
    return ["python3", str(script), "x", json.dumps(SYSCTLS), json.dumps(masked)]


def _run_probe(proc: subprocess.Popen[str]) -> tuple[dict, dict[int, tuple[int, int]]]:
    """The probe's report, and the host uids of the cell's processes while it runs."""
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(proc.communicate()[1])
    seen = _cell_processes(proc.pid)
    proc.stdin.close()
    proc.wait(timeout=60)
    return json.loads(line), seen


def _check_inside(report: dict) -> None:
    assert report["uid"] == 1000
    assert report["writes"], "no sysctl was tried"
    assert {p: r for p, r in report["writes"].items() if r == "WRITTEN"} == {}
    leaked = {p: r for p, r in report["reads"].items() if r not in (0, [], "ENOENT", "EACCES")}
    leaked = {p: r for p, r in leaked.items() if not isinstance(r, str)}
    assert leaked == {}, f"masked /proc files readable: {leaked}"
    assert report["cgroup"] == ["/"], report["cgroup"]
    assert report["sockets"] == {
        "vsock": "EAFNOSUPPORT",
        "packet": "EAFNOSUPPORT",
        "alg": "EAFNOSUPPORT",
        "inet": "ok",
    }


@pytest.fixture
def probe_file(tmp_path: Path) -> Path:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return script


def test_root_run_cell_has_its_own_unprivileged_host_uid(offline_set, probe_file, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: this is the root-run case")
    rng = identity.subordinate_range()
    argv = [NIXCELL, "run", "-p", "python3", "--memory", "256M", "--pids", "64"]
    argv += ["--ro-bind", f"{probe_file}:/probe.py", "--"]
    cells = [_start([*argv, *_probe_args(Path("/probe.py"))]) for _ in range(2)]
    results = [_run_probe(cell) for cell in cells]
    uids = set()
    for report, seen in results:
        _check_inside(report)
        assert seen, "no process of the cell was found from the host"
        assert all(uid != 0 and gid != 0 for uid, gid in seen.values()), seen
        cell_uids = {uid for uid, _ in seen.values()}
        assert len(cell_uids) == 1 and all(uid in rng for uid in cell_uids), (cell_uids, rng)
        uids |= cell_uids
    assert len(uids) == 2, "two concurrent cells shared one host uid"


def test_root_run_cell_writes_bound_files_as_root(offline_set, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: this is the root-run case")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    (work / "private").write_text("only root reads this\n")
    (work / "private").chmod(0o600)
    script = "cat private; echo made > new; mkdir dir; echo deep > dir/f; id -u"
    argv = [NIXCELL, "run", "-p", "bash", "-p", "coreutils", "--workdir", str(work), "--"]
    result = subprocess.run(
        [*argv, "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["only", "root", "reads", "this", "1000"]
    for path in (work / "new", work / "dir", work / "dir" / "f"):
        st = path.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), path


def test_ordinary_user_cell_has_the_users_uid_and_the_same_isolation(user_home, probe_file):
    script = user_home / "probe.py"
    script.write_text(probe_file.read_text())
    script.chmod(0o644)
    base = ["run", "-p", "python3", "--ro-bind", f"{script}:/probe.py", "--"]
    as_nobody(user_home, "run", "-p", "python3", "--", "python3", "-c", "")
    argv, env = as_nobody(user_home, *base, *_probe_args(Path("/probe.py")), spawn=True)
    proc = _start(argv, env=env, cwd=str(user_home))
    report, seen = _run_probe(proc)
    _check_inside(report)
    assert seen and all(ids == (NOBODY, NOBODY) for ids in seen.values()), seen


@pytest.mark.host_wide  # the first free slot: no cell of another test may take it meanwhile
def test_identity_slots_are_released(offline_set):
    """A slot is held for the cell's life only: after many runs, the first slot is free again."""
    if os.geteuid() != 0:
        pytest.skip("needs root: slots exist for root-run cells")
    first, second = identity.allocate(), identity.allocate()
    try:
        assert first.uid != second.uid and first.gid == first.uid
        freed = first.uid
        first.release()
        again = identity.allocate()
        assert again.uid == freed
        again.release()
    finally:
        first.release()
        second.release()


def test_killed_nixcell_leaves_no_process_with_a_cell_uid(offline_set):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    proc = _start([NIXCELL, "run", "-p", "bash", "-p", "coreutils", "--", "sleep", "300"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _cell_processes(proc.pid):
        time.sleep(0.05)
    seen = _cell_processes(proc.pid)
    assert seen
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_status_ids(p) for p in seen):
        time.sleep(0.05)
    assert not [p for p in seen if _status_ids(p)], "cell processes outlived nixcell"


SESSION = r"""
import asyncio
from nixcell.mcp.sessions import SessionEnv, SessionManager
from nixcell.spec import CellSpec
async def main():
    manager = SessionManager(interrupt_grace=1.0)
    spec = CellSpec(command=["true"], packages=["python3"], limits={"disk": "4M"})
    env = SessionEnv("python", "python", spec)
    code = "import os, shutil; open('a', 'w').write('x'); print(shutil.disk_usage('.').total)"
    try:
        for code in (code, "import os; os._exit(0)", "print(open('/workspace/a').read())"):
            print((await manager.call("s", env, code, 30)).stdout, end="")
    finally:
        await manager.shutdown()
asyncio.run(main())
"""


def test_ordinary_user_session_workspace_is_a_bounded_volume(user_home):
    """An ordinary user's MCP session workspace is a sized tmpfs in namespaces it holds."""
    script = user_home / "session.py"
    script.write_text(SESSION)
    script.chmod(0o644)
    as_nobody(user_home, "run", "-p", "python3", "--", "python3", "-c", "")
    argv, env = as_nobody(user_home, "run", spawn=True)
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**env, "PYTHONPATH": str(src)}
    python = next(a for a in argv if a.endswith("/nixcell")).replace("/nixcell", "/python")
    argv = [*argv[: argv.index("--clear-groups") + 1], python, str(script)]
    done = subprocess.run(argv, env=env, cwd=str(user_home), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == [str(4 << 20), "x"]


@pytest.mark.parametrize(
    "flags",
    [
        [],
        ["--memory", "128M", "--pids", "32"],
        ["--allow-host", "up.test"],
        ["--workdir", "{work}"],
        ["--workdir", "{work}", "--allow-host", "up.test", "--memory", "128M"],
    ],
    ids=["plain", "limits", "network", "workdir", "all"],
)
def test_the_cell_inherits_no_file_descriptor_of_nixcells(offline_set, tmp_path, flags):
    """Namespace fds, lock fds, pipes: nothing of the host side reaches the cell's processes."""
    work = tmp_path / "w"
    work.mkdir()
    argv = [NIXCELL, "run", "-p", "python3", *(f.format(work=work) for f in flags), "--"]
    code = "import os; print(sorted(os.listdir('/proc/self/fd'), key=int))"
    done = subprocess.run([*argv, "python3", "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "['0', '1', '2', '3']"  # 3: listdir's own


def test_ordinary_user_disk_limit_bounds_every_area_together(user_home):
    script = "head -c 6M /dev/zero > /tmp/a && echo tmp; "
    script += "head -c 6M /dev/zero > /dev/shm/b && echo shm; true"
    argv = ["run", "-p", "bash", "-p", "coreutils", "--disk", "8M", "--", "bash", "-c", script]
    done = as_nobody(user_home, *argv)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split() == ["tmp"]
    assert b"No space left on device" in done.stderr
