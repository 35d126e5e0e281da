# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The microvm backend with real QEMU (TCG here: this host's KVM cannot run a stock guest).

Each booted VM costs 5-9 s under TCG, so there are few, each checking many things. Nothing here
touches a network: the guest has no NIC; "cannot reach the host" is proven against a listener of
this process on the host's loopback.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from tests.conftest import cli
from tests.integration import upstream as up

import nixcell
from nixcell import CellSpec
from nixcell.sandbox import backends, microvm

PY = ("python3", "bash", "coreutils")


@pytest.fixture(autouse=True)
def _microvm(offline_set):
    found = backends.availability("microvm")
    if not found.ok:
        pytest.skip(f"backend microvm cannot run here: {found.detail}")


def left_of(cell_id: str) -> list[str]:
    """QEMUs and host mounts of this cell still there (must be none)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if cell_id.encode() in f.read():
                    found.append(f"process {pid}")
        except OSError:
            pass
    with open("/proc/self/mountinfo") as f:
        found += [line for line in f if microvm.STAGE in line]
    if os.path.isdir(microvm.STAGE):
        found += [f"file {n}" for n in os.listdir(microvm.STAGE)]
    return found


def py(code: str, **fields) -> nixcell.RunResult:
    fields.setdefault("packages", list(PY))
    input = fields.pop("input", None)
    spec = CellSpec(command=["python3", "-c", textwrap.dedent(code)], backend="microvm", **fields)
    return nixcell.run(spec, capture_output=True, input=input)


# The plan's seccomp program in the guest: (name, syscall number, args) with args that succeed
# or fail otherwise than EPERM unfiltered; "ok" for 0. x86-64 numbers (the guest is the host's).
CALLS = """
import ctypes, errno, os, threading
libc = ctypes.CDLL(None, use_errno=True); libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) if isinstance(a, int) else a for a in args])
    return errno.errorcode.get(ctypes.get_errno(), "?") if ret == -1 else "ok"
def calls():
    found = {
        "unshare_newuser": sc(272, 0x10000000), "bpf": sc(321, 0x7FFF, 0, 0),
        "add_key": sc(248, 0, 0, 0, 0, 0), "mount": sc(165, b"none", b"/tmp", b"tmpfs", 0, 0),
        "process_vm_readv": sc(310, os.getpid(), 0, 0, 0, 0, 0), "getpid": sc(39),
    }
    seen = []
    t = threading.Thread(target=lambda: seen.append(threading.get_native_id())); t.start(); t.join()
    found["thread"] = "ok" if seen and seen[0] != threading.get_native_id() else "no"
    with open("/tmp/w", "w") as f:
        f.write("written")
    found["tmp_write"] = "ok" if open("/tmp/w").read() == "written" else "no"
    found["fds"] = sorted(os.listdir("/proc/self/fd"))
    return found
"""
DENIED = {"unshare_newuser": "EPERM", "bpf": "EPERM", "add_key": "EPERM", "mount": "EPERM"}
WORKS = {"getpid": "ok", "thread": "ok", "tmp_write": "ok", "fds": ["0", "1", "2", "3"]}

FACTS = """
import errno, json, os, socket, sys
facts = {"stdin": sys.stdin.read(), "cwd": os.getcwd(), "env": dict(os.environ)}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts["uids"] = status["Uid"].split() + status["Gid"].split()
facts["caps"] = status["CapEff"].strip()
facts["status"] = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}
facts["calls"] = calls()
import pwd
facts["user"] = pwd.getpwuid(os.getuid()).pw_name
facts["nnp"] = status["NoNewPrivs"].strip()
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
facts["write_root"] = attempt(lambda: open("/x", "w"))
facts["write_etc"] = attempt(lambda: open("/etc/new", "w"))
facts["write"] = [attempt(lambda: open(d + "/f", "w").write("x")) for d in ("/tmp", "/home/cell", "/workspace", "/dev/shm")]
facts["store"] = sorted(os.listdir("/nix/store"))
facts["root"] = sorted(os.listdir("/"))
facts["ifaces"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
facts["hostname"] = socket.gethostname()
facts["mem_kb"] = int(open("/proc/meminfo").readline().split()[1])
facts["cpus"] = os.cpu_count()
facts["kallsyms"] = open("/proc/kallsyms").read()
facts["userns"] = open("/proc/sys/user/max_user_namespaces").read().strip()
s = socket.socket(); s.settimeout(5)
facts["host_loopback"] = attempt(lambda: s.connect(("127.0.0.1", int(os.environ["PORT"]))))
print(json.dumps(facts), flush=True)
print("to stderr", file=sys.stderr, flush=True)
os.kill(os.getpid(), 15)
"""


def test_a_guest_runs_the_closure_only_unprivileged_with_its_limits():
    listener = socket.create_server(("127.0.0.1", 0))  # on the host: the guest must not reach it
    try:
        result = py(
            CALLS + FACTS, env={"PORT": str(listener.getsockname()[1])}, input=b"from stdin\n",
            limits={"memory": "256M", "cpus": 2},
        )  # fmt: skip
    finally:
        listener.close()
    assert result.exit_code == 128 + signal.SIGTERM, result
    assert result.stderr.decode() == "to stderr\n"
    facts = json.loads(result.stdout)
    assert facts["stdin"] == "from stdin\n"
    assert len(set(facts["uids"])) == 1 and "0" not in facts["uids"]  # the cell's own host uid
    assert facts["user"] == "cell" and facts["caps"] == "0000000000000000"
    assert facts["nnp"] == "1" and facts["userns"] == "0"
    # as bwrap starts a cell: every capability set empty, the bounding set too; the plan's filter
    zero = "0000000000000000"
    assert facts["status"] == {
        "CapInh": zero, "CapPrm": zero, "CapBnd": zero, "CapAmb": zero, "NoNewPrivs": "1",
        "Seccomp": "2",
    }  # fmt: skip
    assert facts["calls"] == {**DENIED, "process_vm_readv": "EPERM", **WORKS}, facts["calls"]
    assert facts["cwd"] == "/workspace" and facts["env"]["HOME"] == "/home/cell"
    assert facts["env"]["PORT"] and "NIXCELL" not in "".join(facts["env"])
    assert facts["write_root"] == "EROFS" and facts["write_etc"] == "EROFS"
    assert facts["write"] == ["ok"] * 4
    plan = json.loads(
        cli(
            "run",
            "--backend",
            "microvm",
            "--dry-run",
            "--json",
            *[a for p in PY for a in ("-p", p)],
            "--",
            "true",
        ).stdout
    )
    assert facts["store"] == sorted(os.path.basename(p) for p in plan["closure"])
    assert facts["root"] == sorted(
        ["bin", "dev", "etc", "home", "nix", "proc", "tmp", "usr", "workspace"]
    )
    assert facts["ifaces"] == ["lo"] and facts["hostname"] == "cell"
    assert facts["host_loopback"] == "ECONNREFUSED"  # the guest's own lo: the host's is not there
    assert facts["kallsyms"] == ""  # masked as under bwrap
    assert facts["cpus"] == 2
    # the guest's whole RAM is --memory: its kernel's share counts against the cell
    assert 128 * 1024 < facts["mem_kb"] < 256 * 1024
    assert left_of(result.cell_id) == []


def test_a_hardening_profile_changes_the_guests_filter_as_under_bwrap():
    """The debugger profile's program, not the default one: process_vm_readv is let through,
    the rest of the denylist stands."""
    result = py(CALLS + "import json; print(json.dumps(calls()))", hardening_profiles=["debugger"])
    assert result.exit_code == 0, result
    assert json.loads(result.stdout) == {**DENIED, "process_vm_readv": "ok", **WORKS}


@functools.cache
def _helper_binary() -> bytes | None:
    from nixcell.sandbox import microvminitrd

    return microvminitrd.static_binary(microvminitrd.EXEC_SOURCE)


def test_a_guest_without_the_exec_helper_runs_nothing(tmp_path, monkeypatch):
    """gcc here but failing (a broken toolchain): the initramfs lacks the helper, is not cached,
    and its guest fails the cell before the program starts — never runs it unfiltered."""
    from nixcell.sandbox import microvminitrd

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "gcc").write_text("#!/bin/sh\necho 'gcc: broken' >&2\nexit 1\n")
    (fake / "gcc").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr(microvminitrd, "cache_key", lambda version: f"test-{os.urandom(8).hex()}")
    assert microvminitrd.can_filter()  # gcc is there: the plan is not refused...
    _, version = microvminitrd.kernel()
    blob, complete = microvminitrd.build_initramfs(version)
    assert not complete and b".nixcell/exec\0" not in blob and b".nixcell/busybox\0" in blob
    result = py("print('the program ran')")  # ...but its guest refuses to start the program
    assert result.exit_code == 126, result
    assert result.stdout == b"" and b"refusing to run unfiltered" in result.stderr, result
    assert left_of(result.cell_id) == []


def _helper(tmp_path) -> str:
    from nixcell.sandbox import microvminitrd

    if not microvminitrd.can_filter():
        pytest.skip("no gcc here: the microVM backend refuses every plan (unit-tested)")
    if os.geteuid() != 0:
        pytest.skip("the exec helper drops the bounding set and changes uid: root only")
    binary = _helper_binary()
    assert binary is not None and binary.startswith(b"\x7fELF")
    path = tmp_path / "exec"
    path.write_bytes(binary)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(
    ("args", "program", "code", "says"),
    [
        (["0", "1000"], "ok", 126, "never runs as root"),
        (["1000", "0"], "ok", 126, "never runs as root"),
        (["x", "1000"], "ok", 126, "uid"),
        (["1000", "1000"], "", 126, "the seccomp program"),
        (["1000", "1000"], "odd", 126, "the seccomp program"),
        (["1000", "1000"], "huge", 126, "the seccomp program"),
        (["1000", "1000"], "garbage", 126, "install the seccomp program"),
        (["1000", "1000"], "ok", 0, ""),
    ],
)  # fmt: skip
def test_the_exec_helper_fails_closed(tmp_path, args, program, code, says):
    """Run on the host (as the guest's init runs it, as root): anything it cannot do — a root
    uid, no program, a malformed or rejected one — stops it before the program starts."""
    from nixcell.sandbox.seccache import seccomp_program

    good = seccomp_program(())
    data = {"ok": good, "": b"", "odd": good[:-3], "huge": good * 40,
            "garbage": b"\xff" * 64}[program]  # fmt: skip
    (tmp_path / "f").write_bytes(data)
    probe = "import os; s=open('/proc/self/status').read(); print(os.getuid(), 'CapBnd:\t0000000000000000' in s, 'Seccomp:\t2' in s, 'NoNewPrivs:\t1' in s, sorted(os.listdir('/proc/self/fd')))"
    with open(tmp_path / "f", "rb") as f:
        done = subprocess.run(
            [_helper(tmp_path), *args, str(f.fileno()), "/usr/bin/python3", "-I", "-c", probe],
            pass_fds=(f.fileno(),), capture_output=True, cwd="/",
        )  # fmt: skip
    assert done.returncode == code, done
    if code:
        assert done.stdout == b"" and says in done.stderr.decode()
        assert len(done.stderr.decode().strip().splitlines()) == 1
    else:
        seen = done.stdout.decode().split(None, 4)
        assert seen == ["1000", "True", "True", "True", "['0', '1', '2', '3']\n"]


def test_oom_disk_and_pids_inside_the_guest():
    result = py(
        """
        import errno, os, subprocess, time
        try:
            open("/tmp/big", "wb").write(b"x" * (12 << 20)); print("disk: wrote", flush=True)
        except OSError as e:
            print("disk:", errno.errorcode[e.errno], flush=True)
        os.unlink("/tmp/big")
        n = 0
        for _ in range(40):
            try:
                subprocess.Popen(["sleep", "30"]); n += 1
            except OSError:
                break
        print("forks:", n, flush=True)
        hold = []
        while True:
            hold.append(bytearray(8 << 20))
        """,
        limits={"memory": "160M", "disk": "8M", "pids": 16},
    )
    assert (result.exit_code, result.oom_killed) == (137, True), result
    assert "out of memory" in (result.message or "")
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "disk: ENOSPC", result
    assert 0 < int(lines[1].split()[1]) < 16
    assert left_of(result.cell_id) == []


def test_a_memory_error_is_not_an_oom_kill():
    result = py("bytearray(1 << 50)", limits={"memory": "128M"})
    assert (result.exit_code, result.oom_killed) == (1, False), result
    assert b"MemoryError" in result.stderr
    assert "out of memory" not in (result.message or "")


def test_timeout_and_cancel_leave_nothing():
    timed = py("import time; time.sleep(300)", limits={"timeout": "20s"})
    assert (timed.exit_code, timed.timed_out) == (124, True), timed
    assert left_of(timed.cell_id) == []

    async def cancelled() -> str:
        started = asyncio.Event()
        ids: list[str] = []

        def on_start(cell, session) -> None:
            ids.append(cell.cell_id)
            started.set()

        spec = CellSpec(command=["sleep", "300"], packages=["coreutils"], backend="microvm")
        task = asyncio.ensure_future(
            nixcell.run_async(spec, capture_output=True, on_start=on_start)
        )
        await asyncio.wait_for(started.wait(), 60)
        await asyncio.sleep(2)
        assert left_of(ids[0])  # QEMU is running
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ids[0]

    cell_id = asyncio.run(cancelled())
    assert left_of(cell_id) == []


def test_a_killed_nixcell_leaves_no_qemu(tmp_path):
    """kill -9 of nixcell: QEMU dies with it (parent-death signal); gc sweeps any survivor."""
    script = "import nixcell; nixcell.run(nixcell.CellSpec(command=['sleep', '300'], packages=['coreutils'], backend='microvm'))"
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        qemu = []
        while not qemu and time.monotonic() < deadline:
            qemu = [
                n for n in left_of(f"{microvm.NAME_PREFIX}{proc.pid}-") if n.startswith("process")
            ]
            time.sleep(0.2)
        assert qemu, "QEMU never started"
    finally:
        proc.kill()
        proc.wait()
    cli("gc")
    deadline = time.monotonic() + 10
    while left_of(f"{microvm.NAME_PREFIX}{proc.pid}-") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left_of(f"{microvm.NAME_PREFIX}{proc.pid}-") == []


def test_dry_run_shows_qemu_and_refusals_are_one_line():
    plan = json.loads(
        cli(
            "run",
            "--backend",
            "microvm",
            "--dry-run",
            "--json",
            "--memory",
            "200M",
            "--cpus",
            "2",
            "-p",
            "coreutils",
            "--",
            "true",
        ).stdout
    )
    spec = plan["backend_spec"]
    assert spec["name"] == "microvm" and spec["refusals"] == []
    argv = spec["qemu_argv"]
    assert argv[argv.index("-m") + 1] == "200M" and argv[argv.index("-smp") + 1] == "2"
    assert "-netdev" not in argv and "-nic" not in argv and "-nodefaults" in argv
    assert "quiet" in spec["kernel_cmdline"] and spec["accel"] in ("kvm", "tcg")
    refused = cli("run", "--backend", "microvm", "--cpus", "0.5", "-p", "coreutils", "--", "true")
    err = refused.stderr.decode().strip()
    assert refused.returncode != 0 and len(err.splitlines()) == 1 and "--cpus 0.5" in err, err


FETCH = up.FETCH_DEF + """
print(fetch("%s", 30))
print(fetch("%s", 30))
print(fetch("%s", 30))
print(direct(%d))
print("ifaces:", [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]])
"""


def test_the_proxy_over_virtio_serial_applies_the_policy(tls):
    tls.seen.clear()
    net = up.loopback_network(tls, allow_hosts=[f"up.test:{tls.port}"])
    code = FETCH % (
        tls.url("/hello"),
        tls.url("/again"),
        tls.url("/x", host="other.test"),
        tls.port,
    )
    result = py(code, network=net)
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "(200, 'ok GET /hello 0\\n')", result
    assert lines[1] == "(200, 'ok GET /again 0\\n')", result  # a second stream on the one port
    assert lines[2].startswith("(403, "), result
    assert lines[3] == "direct: 111"  # the guest's own loopback: no way to the host's
    assert lines[4] == "ifaces: ['lo']"
    assert tls.paths() == ["/hello", "/again"]
    assert left_of(result.cell_id) == []


def test_a_workdir_is_shared_writable_and_owned_by_the_invoker(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.txt").write_text("hello\n")
    result = py(
        "import os; print(open('in.txt').read().strip()); open('out.txt', 'w').write('made'); print(os.stat('out.txt').st_uid == os.getuid(), os.getuid() != 0)",
        workdir=str(work),
    )
    assert result.stdout.decode().split() == ["hello", "True", "True"], result
    assert (work / "out.txt").read_text() == "made"
    assert (work / "out.txt").stat().st_uid == os.getuid()  # the invoker's, on disk (idmapped)
    assert left_of(result.cell_id) == []
