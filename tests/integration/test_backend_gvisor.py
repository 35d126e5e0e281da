# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The gvisor backend against the real runsc (ptrace platform), root-run.

Few cells, each checking many things (a gVisor cell costs ~0.5 s here). Network traffic goes only
to loopback listeners of this process, through the proxy; "blocked" is proven against a local
listener the cell must not reach. "Nothing left" means: no process of the sandbox (runsc,
gofer, sentry: all in the cell's cgroup, which is gone), no runsc state, no bundle directory.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import textwrap
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli
from tests.integration import upstream as up
from tests.integration.gvisorrig import left_of, runsc_processes

import nixcell
from nixcell import CellSpec
from nixcell.sandbox import backends, dockerhost

pytestmark = pytest.mark.skipif(
    not backends.availability("gvisor").ok,
    reason=f"gvisor cannot run here: {backends.availability('gvisor').detail}",
)

PY = ("python3", "bash", "coreutils")
ROOT = "bin dev etc home nix proc sys tmp usr workspace"  # what / may hold


def py(code: str, **fields) -> nixcell.RunResult:
    fields.setdefault("packages", list(PY))
    spec = CellSpec(command=["python3", "-c", textwrap.dedent(code)], backend="gvisor", **fields)
    return nixcell.run(spec, capture_output=True, input=fields.pop("input", None))


FACTS = """
import ctypes, errno, json, os, socket, sys, threading
facts = {"stdin": sys.stdin.read()}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts["uids"] = status["Uid"].split()
facts["caps"] = [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd")]
facts["seccomp"] = status["Seccomp"].strip()
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
facts["write_root"] = attempt(lambda: open("/x", "w"))
facts["write_etc"] = attempt(lambda: open("/etc/new", "w"))
facts["write_passwd"] = attempt(lambda: open("/etc/passwd", "a"))
facts["write_dev"] = attempt(lambda: open("/dev/x", "w"))
facts["write_sysctl"] = attempt(lambda: open("/proc/sys/kernel/hostname", "w").write("x"))
facts["write_tmp"] = attempt(lambda: open("/tmp/x", "w").write("x"))
facts["write_home"] = attempt(lambda: open("/home/cell/x", "w").write("x"))
facts["exec_tmp"] = os.system("printf '#!/bin/sh\\necho ran\\n' > /tmp/s && chmod +x /tmp/s && /tmp/s >/dev/null")
facts["store"] = sorted(os.listdir("/nix/store"))
facts["root"] = sorted(os.listdir("/"))
facts["usr"] = sorted(os.listdir("/usr"))
facts["sys"] = os.listdir("/sys")
facts["proc_host"] = [p for p in ("/proc/kcore", "/proc/keys", "/proc/kallsyms", "/proc/timer_list", "/proc/sched_debug", "/proc/sysrq-trigger", "/proc/acpi") if os.path.exists(p)]
facts["ifaces"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
facts["hostname"] = socket.gethostname()
# every address family: the cell may open unix, inet, inet6 and netlink sockets only
facts["families"] = {f: attempt(lambda: socket.socket(f, socket.SOCK_STREAM).close()) for f in range(0, 64) if f not in (1, 2, 10, 16)}
facts["netlink_audit"] = attempt(lambda: socket.socket(16, socket.SOCK_RAW, 9))
libc = ctypes.CDLL(None, use_errno=True)
def sys_(nr, *args):
    return "ok" if libc.syscall(nr, *args) >= 0 else errno.errorcode[ctypes.get_errno()]
facts["clone3"] = sys_(435, 0, 0)  # glibc falls back to clone only on ENOSYS
facts["unshare"] = sys_(272, 0x10000000)
facts["mount"] = sys_(165, b"none", b"/tmp", b"tmpfs", 0, 0)
facts["ptrace"] = sys_(101, 16, 1, 0, 0)
facts["keyctl"] = sys_(250, 0, 0, 0, 0)
t = threading.Thread(target=lambda: None); t.start(); t.join()
facts["threads"] = "ok"
s = socket.socket(); s.settimeout(5)
facts["host_loopback"] = attempt(lambda: s.connect(("127.0.0.1", int(os.environ["PORT"]))))
print(json.dumps(facts))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


def test_a_cell_is_the_closure_only_unprivileged_and_offline(offline_set):
    listener = socket.create_server(("127.0.0.1", 0))  # the cell must not reach it
    port = listener.getsockname()[1]
    try:
        spec = CellSpec(
            command=["python3", "-c", FACTS],
            packages=list(PY),
            backend="gvisor",
            env={"PORT": str(port)},
        )
        result = nixcell.run(spec, capture_output=True, input=b"from stdin\n")
    finally:
        listener.close()
    assert result.exit_code == 3, result
    assert result.stderr.decode().strip() == "to stderr"
    facts = json.loads(result.stdout)
    assert facts["stdin"] == "from stdin\n"
    assert "0" not in facts["uids"]  # the cell's own uid, never root, even inside the sentry
    assert facts["caps"] == ["0000000000000000"] * 4
    assert facts["seccomp"] == "2"  # the plan's filter, in the sentry
    assert facts["write_root"] in ("EROFS", "EACCES") and facts["write_etc"] in ("EROFS", "EACCES")
    assert facts["write_passwd"] in ("EACCES", "EROFS") and facts["write_dev"] == "EACCES"
    assert facts["write_sysctl"] == "EACCES"
    assert (facts["write_tmp"], facts["write_home"], facts["exec_tmp"]) == ("ok", "ok", 0)
    plan_json = json.loads(
        cli(
            "run",
            "--backend",
            "gvisor",
            "--dry-run",
            "--json",
            *[a for p in PY for a in ("-p", p)],
            "--",
            "true",
        ).stdout
    )
    assert facts["store"] == sorted(os.path.basename(p) for p in plan_json["closure"])
    assert set(facts["root"]) <= set(ROOT.split())  # nothing of the host: no /lib, no /opt
    assert facts["usr"] == ["bin"] and facts["sys"] == [] and facts["proc_host"] == []
    assert facts["ifaces"] == ["lo"] and facts["hostname"] == "cell"
    wrong = {
        f: e
        for f, e in facts["families"].items()
        if e != ("EPERM" if f == "17" else "EAFNOSUPPORT")
    }
    assert wrong == {}, wrong  # AF_PACKET: EPERM (bwrap: EAFNOSUPPORT); both refuse
    assert facts["netlink_audit"] == "EPERM"
    assert (facts["clone3"], facts["unshare"], facts["mount"]) == ("ENOSYS", "EPERM", "EPERM")
    assert (facts["ptrace"], facts["keyctl"], facts["threads"]) == ("EPERM", "EPERM", "ok")
    assert facts["host_loopback"] == "ECONNREFUSED"  # gVisor's own lo: nothing listens there
    assert left_of(result.cell_id) == []
    spec = plan_json["backend_spec"]
    assert spec["name"] == "gvisor" and spec["refusals"] == []
    assert spec["runsc"][0].endswith("runsc") and "--oci-seccomp" in spec["runsc"]
    assert spec["runsc"][spec["runsc"].index("--network") + 1] == "none"
    oci = spec["oci_spec"]
    assert oci["process"]["capabilities"]["bounding"] == [] and oci["process"]["noNewPrivileges"]
    assert oci["root"]["readonly"] and oci["linux"]["seccomp"]["syscalls"]


def test_the_sandbox_on_the_host_holds_no_root_the_cell_can_use(offline_set):
    """While a cell runs: the processes that run its code (the sentry and its ptrace stubs) are
    uid 65534 in a user namespace of their own; the only root processes are ``runsc run``
    (which only waits) and the gofer (file capabilities only: no CAP_SYS_ADMIN)."""

    async def body() -> tuple[list[dict[str, str]], nixcell.RunResult]:
        seen: list[dict[str, str]] = []
        started = asyncio.Event()
        spec = CellSpec(command=["sleep", "3"], packages=["coreutils"], backend="gvisor")
        task = asyncio.ensure_future(
            nixcell.run_async(spec, capture_output=True, on_start=lambda c, s: started.set())
        )
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(1)
        for pid in runsc_processes():
            st = dict(
                line.split(":\t", 1)
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line
            )
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            seen.append(
                {
                    "cmd": cmd,
                    "uid": st["Uid"].split()[1],
                    "capeff": st["CapEff"],
                    "userns": os.readlink(f"/proc/{pid}/ns/user"),
                }
            )
        return seen, await task

    seen, result = asyncio.run(body())
    assert result.exit_code == 0, result
    host_userns = os.readlink("/proc/self/ns/user")
    sentries = [p for p in seen if p["cmd"] == "runsc-sandbox"]
    assert sentries, seen
    for p in sentries:
        assert p["uid"] == "65534" and p["userns"] != host_userns, p
    for p in seen:  # runsc run (the supervisor: waits, runs no cell code) and the gofer
        if p["uid"] == "0":
            assert p["cmd"] in ("runsc-gofer", "/usr/bin/runsc"), p
    gofers = [p for p in seen if p["cmd"] == "runsc-gofer"]
    assert gofers and all(not int(p["capeff"], 16) & (1 << 21) for p in gofers), gofers
    assert left_of(result.cell_id) == []


def test_exit_codes_signals_and_stdio_through_files(offline_set, tmp_path):
    killed = py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert (killed.exit_code, killed.oom_killed) == (137, False), killed
    termed = py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert termed.exit_code == 143, termed
    # stdout a regular file holding earlier output: runsc must not write from offset 0
    out = tmp_path / "out"
    out.write_bytes(b"before\n")
    with open(out, "ab") as f:
        spec = CellSpec(
            command=["bash", "-c", "echo one; echo two >&2; echo three"],
            packages=["bash", "coreutils"],
            backend="gvisor",
        )
        result = nixcell.run(spec, stdout=f, stderr=f)
    assert result.exit_code == 0, result
    assert out.read_bytes() == b"before\none\ntwo\nthree\n"
    # a cell printing what looks like runsc's own error line still gets it delivered
    mimic = py("import sys; print('running container: not runsc', file=sys.stderr); sys.exit(128)")
    assert (mimic.exit_code, mimic.stderr) == (128, b"running container: not runsc\n"), mimic


def test_a_runsc_failure_is_one_line_and_leaves_nothing(offline_set):
    """runsc's own error (it cannot load the program) is nixcell's one line; runsc's raw stderr
    never reaches the cell's. And a sandbox that cannot start in its memory limit (the Sentry's
    own memory counts) is an OOM kill, said in one line."""
    before = set(os.listdir(dockerhost.root_dir("gvisor")))
    for argv, phrase in (
        (["--", "/etc/passwd"], b"nixcell: gVisor could not run the cell: running container: "),
        (["--memory", "8M", "--", "true"], b"nixcell: killed: out of memory (limit 8M)"),
    ):
        proc = subprocess.run(
            [NIXCELL, "run", "--backend", "gvisor", "-p", "coreutils", *argv],
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode != 0
        lines = proc.stderr.splitlines()  # (a first run here may add the offline set's notice)
        assert lines[-1].startswith(phrase), proc.stderr
        assert [line for line in lines if b"running container" in line] in ([], lines[-1:])
    assert set(os.listdir(dockerhost.root_dir("gvisor"))) == before
    assert runsc_processes("nixcell-") == []


def test_memory_pids_and_cpus_limits(offline_set):
    oom = py("bytearray(1 << 30)", limits={"memory": "128M"})
    assert (oom.exit_code, oom.oom_killed) == (137, True), oom
    assert "out of memory" in (oom.message or "")
    fits = py("b = bytearray(48 << 20); print(len(b) >> 20)", limits={"memory": "128M"})
    assert (fits.exit_code, fits.stdout) == (0, b"48\n"), fits
    forks = py(
        """
        import os, time
        n = 0
        for _ in range(64):
            try:
                if os.fork() == 0:
                    time.sleep(5); os._exit(0)
                n += 1
            except OSError:
                break
        print(n, flush=True)
        os._exit(0)
        """,
        limits={"pids": 16},
    )
    assert forks.exit_code == 0, forks
    assert 0 < int(forks.stdout) < 16  # the cell's own tasks; runsc's do not count
    threads = py(
        """
        import threading, time
        n = 0
        try:
            for _ in range(64):
                threading.Thread(target=time.sleep, args=(5,), daemon=True).start(); n += 1
        except RuntimeError:
            pass
        print(n)
        """,
        limits={"pids": 16},
    )
    assert 0 < int(threads.stdout) < 16, threads  # threads count, as in a cgroup
    assert left_of(oom.cell_id) == [] and left_of(forks.cell_id) == []


def cpu_quota_of(pid: int) -> float:
    with open(f"/proc/{pid}/cgroup") as f:
        groups = dict(line.strip().split(":", 2)[1:] for line in f)
    for key, base in (("cpu", "/sys/fs/cgroup/cpu"), ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct")):
        if key in groups and os.path.isdir(base + groups[key]):
            quota = Path(f"{base}{groups[key]}/cpu.cfs_quota_us").read_text()
            return int(quota) / int(Path(f"{base}{groups[key]}/cpu.cfs_period_us").read_text())
    quota, period = Path(f"/sys/fs/cgroup{groups['']}/cpu.max").read_text().split()
    return int(quota) / int(period)


def test_timeout_and_cancel_kill_the_sandbox_and_leave_nothing(offline_set):
    timed = py("import time; time.sleep(100)", limits={"timeout": "1s"})
    assert (timed.exit_code, timed.timed_out) == (124, True), timed
    assert left_of(timed.cell_id) == []

    async def cancelled() -> tuple[str, list[float]]:
        started = asyncio.Event()
        ids: list[str] = []

        def on_start(cell, session) -> None:
            ids.append(cell.cell_id)
            started.set()

        spec = CellSpec(
            command=["sleep", "100"], packages=["coreutils"], backend="gvisor", limits={"cpus": 0.5}
        )
        task = asyncio.ensure_future(
            nixcell.run_async(spec, capture_output=True, on_start=on_start)
        )
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(0.5)
        sentries = [
            p
            for p in runsc_processes(ids[0])
            if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"runsc-sandbox")
        ]
        quotas = [cpu_quota_of(p) for p in sentries]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ids[0], quotas

    cell_id, quotas = asyncio.run(cancelled())
    assert quotas == [0.5], quotas  # the sentry itself is in the cell's CPU limit
    assert left_of(cell_id) == []


FETCH = up.FETCH_DEF + """
print(fetch("%s"))
print(fetch("%s"))
print(direct(%d))
print([l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]])
"""


def test_proxy_allows_the_policy_and_refuses_the_rest(offline_set, tls):
    tls.seen.clear()
    net = up.loopback_network(tls, allow_hosts=[f"up.test:{tls.port}"])
    code = FETCH % (tls.url("/hello"), tls.url("/x", host="other.test"), tls.port)
    result = py(code, network=net)
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "(200, 'ok GET /hello 0\\n')", result
    assert lines[1].startswith("(403, ")
    assert lines[2] == "direct: 111"  # the upstream's port, but in the cell's own netns: refused
    assert lines[3] == "['lo']"
    assert tls.paths() == ["/hello"]
    assert left_of(result.cell_id) == []
    plan = json.loads(
        cli(
            "run",
            "--backend",
            "gvisor",
            "--dry-run",
            "--json",
            "--allow-host",
            "up.test",
            "-p",
            "coreutils",
            "--",
            "true",
        ).stdout
    )
    spec = plan["backend_spec"]
    assert spec["runsc"][spec["runsc"].index("--network") + 1] == "host"
    assert {"type": "network", "path": "/proc/<nixcell pid>/fd/<netns fd>"} in spec["oci_spec"][
        "linux"
    ]["namespaces"]


def test_workdir_rw_mount_ro_store_and_disk(offline_set, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.txt").write_text("hello\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "f").write_text("ro\n")
    bound = py(
        "import os, errno\nprint(open('in.txt').read().strip()); open('out.txt', 'w').write('made'); os.mkdir('d'); open('d/f', 'w').write('x')\n"
        "print(os.stat('out.txt').st_uid == os.getuid(), os.stat('in.txt').st_uid == os.getuid())\n"
        "print(open('/ro/f').read().strip())\ntry:\n    open('/ro/g', 'w')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n"
        "print(len(os.listdir('/nix/store')) > 5)",
        workdir=str(work), mounts=[{"source": str(ro), "target": "/ro"}], store="readonly",
    )  # fmt: skip
    assert bound.stdout.decode().split() == ["hello", "True", "True", "ro", "EROFS", "True"], bound
    assert (work / "out.txt").read_text() == "made" and (work / "d" / "f").read_text() == "x"
    assert (work / "out.txt").stat().st_uid == os.getuid()  # the invoker's, on disk (idmapped)
    assert not (ro / "g").exists()
    disk = py(
        "import errno\ntry:\n    open('/tmp/big', 'wb').write(b'x' * (16 << 20)); print('wrote')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])",
        limits={"disk": "8M"},
    )
    assert disk.stdout.decode().strip() == "ENOSPC", disk
    assert left_of(bound.cell_id) == [] and left_of(disk.cell_id) == []


def test_refusals_are_one_line(offline_set):
    proc = subprocess.run(
        [NIXCELL, "run", "--backend", "gvisor", "--host-network", "-p", "coreutils", "--", "true"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0 and proc.stderr.count(b"\n") == 1, proc.stderr
    assert b"the gvisor backend cannot enforce the host's network" in proc.stderr


INT80 = """
import ctypes, json, mmap, os
def int80(nr, ebx, ecx=0, edx=0):
    if os.fork() == 0:  # a child: on a kernel with the i386 table this may be a real call
        code = (b"\\x53\\xb8" + nr.to_bytes(4, "little") + b"\\xbb" + ebx.to_bytes(4, "little")
                + b"\\xb9" + ecx.to_bytes(4, "little") + b"\\xba" + edx.to_bytes(4, "little")
                + b"\\xcd\\x80\\x5b\\xc3")
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(code)
        fn = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)))
        os.write(1, (json.dumps(fn()) + "\\n").encode())
        os._exit(0)
    os.wait()
int80(102, 1, 0)  # i386 socketcall(SYS_SOCKET, NULL); x86_64 getuid
int80(39, 0)      # i386 mkdir(NULL); x86_64 getpid
print(json.dumps([os.getuid(), os.getpid()]))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="int 0x80 is an x86 entry point")
def test_int80_is_not_an_i386_entry_point(offline_set):
    """The matrix accepts gVisor's own answers to the probe's int 0x80 checks
    (test_backend_matrix.OWN_ANSWERS) because gVisor has no i386 ABI: the call it runs is the
    64-bit one of that number, filtered like any other. Proven here by what the calls return."""
    done = py(INT80)
    assert done.exit_code == 0, done.stderr
    socketcall, mkdir, (uid, pid) = (json.loads(x) for x in done.stdout.decode().splitlines())
    assert socketcall == uid != 0  # getuid's answer: no socket was made
    assert mkdir > 0 and mkdir != pid  # getpid of the forked child, not mkdir's -EFAULT

