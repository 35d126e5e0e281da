# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The docker backend against a real dockerd of the suite's own (``dockerd.py``).

Few cells, each checking many things (a Docker cell costs ~0.6 s here). Network traffic goes only
to loopback listeners of this process, through the proxy; "blocked" is proven against a local
listener the cell must not reach.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli
from tests.integration import upstream as up

import nixcell
from nixcell import CellSpec
from nixcell.sandbox import dockerapi, dockerhost

PY = ("python3", "bash", "coreutils")
ROOT = "bin dev etc home nix proc sys tmp usr workspace .dockerenv pause sbin"  # what / may hold


def containers(label: str = "nixcell.owner") -> list[dict]:
    query = {"all": "1", "filters": json.dumps({"label": [label]})}
    return dockerapi.Client().call("GET", "/containers/json", query=query)  # type: ignore[return-value]


def left_of(cell_id: str) -> list[str]:
    """Containers and host directories of this cell still there (must be none)."""
    found = [c["Names"][0] for c in containers(f"nixcell.cell={cell_id}")]
    root = dockerhost.root_dir()
    found += [d for d in (os.listdir(root) if os.path.isdir(root) else []) if d.endswith(cell_id)]
    return found


def py(code: str, **fields) -> nixcell.RunResult:
    fields.setdefault("packages", list(PY))
    spec = CellSpec(command=["python3", "-c", textwrap.dedent(code)], backend="docker", **fields)
    return nixcell.run(spec, capture_output=True, input=fields.pop("input", None))


FACTS = """
import ctypes, errno, json, os, socket, sys
facts = {"stdin": sys.stdin.read()}
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
facts["uids"] = status["Uid"].split()
facts["caps"] = [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]
facts["nnp"] = status["NoNewPrivs"].strip()
facts["seccomp"] = status["Seccomp"].strip()
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
facts["write_root"] = attempt(lambda: open("/x", "w"))
facts["write_etc"] = attempt(lambda: open("/etc/new", "w"))
facts["write_passwd"] = attempt(lambda: open("/etc/passwd", "a"))
facts["write_tmp"] = attempt(lambda: open("/tmp/x", "w").write("x"))
facts["write_home"] = attempt(lambda: open("/home/cell/x", "w").write("x"))
facts["exec_tmp"] = os.system("printf '#!/bin/sh\\necho ran\\n' > /tmp/s && chmod +x /tmp/s && /tmp/s >/dev/null")
facts["store"] = sorted(os.listdir("/nix/store"))
facts["root"] = sorted(os.listdir("/"))
facts["usr"] = sorted(os.listdir("/usr"))
facts["sbin"] = sorted(os.listdir("/sbin"))
facts["sys"] = os.listdir("/sys")
facts["ifaces"] = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
facts["hostname"] = socket.gethostname()
facts["ipv6_lo"] = os.path.exists("/proc/net/if_inet6") and "00000000000000000000000000000001" in open("/proc/net/if_inet6").read()
facts["af_alg"] = attempt(lambda: socket.socket(38, socket.SOCK_SEQPACKET))
libc = ctypes.CDLL(None, use_errno=True)
facts["unshare"] = errno.errorcode[ctypes.get_errno()] if libc.unshare(0x10000000) else "ok"
s = socket.socket(); s.settimeout(5)
facts["host_loopback"] = attempt(lambda: s.connect(("127.0.0.1", int(os.environ["PORT"]))))
print(json.dumps(facts))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


def test_a_cell_is_the_closure_only_unprivileged_and_offline(dockerd, offline_set):
    listener = socket.create_server(("127.0.0.1", 0))  # the cell must not reach it
    port = listener.getsockname()[1]
    try:
        spec = CellSpec(
            command=["python3", "-c", FACTS],
            packages=list(PY),
            backend="docker",
            env={"PORT": str(port)},
        )
        result = nixcell.run(spec, capture_output=True, input=b"from stdin\n")
    finally:
        listener.close()
    assert result.exit_code == 3, result
    assert result.stderr.decode().strip() == "to stderr"
    facts = json.loads(result.stdout)
    assert facts["stdin"] == "from stdin\n"
    assert "0" not in facts["uids"]  # real, effective, saved, fs: no host root (no user namespace)
    assert facts["caps"] == ["0000000000000000"] * 5
    assert (facts["nnp"], facts["seccomp"]) == ("1", "2")
    assert facts["write_root"] == "EROFS" and facts["write_etc"] == "EROFS"
    assert facts["write_passwd"] in ("EACCES", "EROFS")  # 0444 on a read-only bind
    assert (facts["write_tmp"], facts["write_home"], facts["exec_tmp"]) == ("ok", "ok", 0)

    plan_json = json.loads(
        cli(
            "run",
            "--backend",
            "docker",
            "--dry-run",
            "--json",
            *[a for p in PY for a in ("-p", p)],
            "--",
            "true",
        ).stdout
    )
    assert facts["store"] == sorted(os.path.basename(p) for p in plan_json["closure"])
    assert set(facts["root"]) <= set(ROOT.split())  # nothing of the host: no /lib, no /opt
    assert facts["usr"] == ["bin"] and facts["sys"] == []
    assert facts["sbin"] == ["docker-init"]  # PID 1 (tini), the one program not of the closure
    assert facts["ifaces"] == ["lo"] and facts["hostname"] == "cell"
    assert facts["ipv6_lo"] == os.path.isdir("/proc/sys/net/ipv6")  # ::1 as under bwrap
    assert facts["af_alg"] == "EAFNOSUPPORT"  # nixcell's filter, not Docker's default profile
    assert facts["unshare"] == "EPERM"
    assert facts["host_loopback"] == "ECONNREFUSED"  # its own lo: nothing listens there
    assert left_of(result.cell_id) == []
    spec = plan_json["backend_spec"]
    assert spec["name"] == "docker" and spec["refusals"] == []
    assert spec["create"]["HostConfig"]["CapDrop"] == ["ALL"]


def test_memory_and_pids_limits(dockerd, offline_set):
    oom = py("bytearray(1 << 30)", limits={"memory": "128M"})
    assert (oom.exit_code, oom.oom_killed) == (137, True), oom
    assert "out of memory" in (oom.message or "")
    forks = py(
        """
        import os
        n = 0
        for _ in range(64):
            try:
                if os.fork() == 0:
                    import time; time.sleep(5); os._exit(0)
                n += 1
            except OSError:
                break
        print(n, flush=True)
        os._exit(0)
        """,
        limits={"pids": 16},
    )
    assert forks.exit_code == 0, forks
    assert 0 < int(forks.stdout) < 16
    killed = py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")  # not PID 1: it dies
    assert (killed.exit_code, killed.oom_killed) == (137, False), killed
    assert left_of(oom.cell_id) == [] and left_of(forks.cell_id) == []


def test_timeout_and_cancel_remove_the_container(dockerd, offline_set):
    timed = py("import time; time.sleep(100)", limits={"timeout": "1s"})
    assert (timed.exit_code, timed.timed_out) == (124, True), timed
    assert left_of(timed.cell_id) == []

    async def cancelled() -> str:
        started = asyncio.Event()
        ids: list[str] = []

        def on_start(cell, session) -> None:
            ids.append(cell.cell_id)
            started.set()

        spec = CellSpec(
            command=["sleep", "100"], packages=["coreutils"], backend="docker", limits={"cpus": 0.5}
        )
        task = asyncio.ensure_future(
            nixcell.run_async(spec, capture_output=True, on_start=on_start)
        )
        await asyncio.wait_for(started.wait(), 60)
        assert [c["Names"][0] for c in containers(f"nixcell.cell={ids[0]}")] == [
            f"/nixcell-{ids[0]}"
        ]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ids[0]

    cell_id = asyncio.run(cancelled())
    assert left_of(cell_id) == []


def cpu_quota(pid: int) -> float:
    """The CFS quota of ``pid``'s cgroup in CPUs (cgroup v1 ``cpu`` or v2 ``cpu.max``)."""
    with open(f"/proc/{pid}/cgroup") as f:
        groups = dict(line.strip().split(":", 2)[1:] for line in f)
    for key, base in (("cpu", "/sys/fs/cgroup/cpu"), ("cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct")):
        if key in groups and os.path.isdir(base + groups[key]):
            quota = Path(f"{base}{groups[key]}/cpu.cfs_quota_us").read_text()
            return int(quota) / int(Path(f"{base}{groups[key]}/cpu.cfs_period_us").read_text())
    quota, period = Path(f"/sys/fs/cgroup{groups['']}/cpu.max").read_text().split()
    return int(quota) / int(period)


FETCH = up.FETCH_DEF + """
print(fetch("%s"))
print(fetch("%s"))
print(direct(%d))
import os
print("v6:", os.path.exists("/proc/net/if_inet6") and "0" * 31 + "1" in open("/proc/net/if_inet6").read())
"""


def test_proxy_allows_the_policy_and_refuses_the_rest(dockerd, offline_set, tls):
    tls.seen.clear()
    net = up.loopback_network(tls, allow_hosts=[f"up.test:{tls.port}"])
    code = FETCH % (tls.url("/hello"), tls.url("/x", host="other.test"), tls.port)
    result = py(code, network=net)
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "(200, 'ok GET /hello 0\\n')", result
    assert lines[1].startswith("(403, ")
    assert lines[2] == "direct: 111"  # the upstream's port, but in the cell's own netns: refused
    assert lines[3] == f"v6: {os.path.isdir('/proc/sys/net/ipv6')}"  # the holder's lo has ::1
    assert tls.paths() == ["/hello"]
    assert left_of(result.cell_id) == []


def test_root_run_workdir_and_disk(dockerd, offline_set, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "in.txt").write_text("hello\n")
    bound = py(
        "import os; print(open('in.txt').read().strip()); open('out.txt', 'w').write('made'); print(os.stat('out.txt').st_uid == os.getuid())",
        workdir=str(work),
    )
    assert bound.stdout.decode().split() == ["hello", "True"], bound
    assert (work / "out.txt").read_text() == "made"
    assert (work / "out.txt").stat().st_uid == os.getuid()  # the invoker's, on disk (idmapped)
    disk = py(
        "import errno\ntry:\n    open('/tmp/big', 'wb').write(b'x' * (16 << 20)); print('wrote')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])",
        limits={"disk": "8M"},
    )
    assert disk.stdout.decode().strip() == "ENOSPC", disk
    assert left_of(bound.cell_id) == [] and left_of(disk.cell_id) == []


def test_gc_sweeps_a_killed_runs_container(dockerd, offline_set, tmp_path):
    (tmp_path / "keep").write_text("mine")
    argv = [
        NIXCELL,
        "run",
        "--backend",
        "docker",
        "--workdir",
        str(tmp_path),
        "-p",
        "coreutils",
        "--",
        "sleep",
        "100",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (mine := containers("nixcell.owner")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mine, "the run's container never appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with open("/proc/self/mountinfo") as f:
        assert "nixcell/docker" in f.read()  # its idmapped workdir, attached on the host
    gc = cli("gc")
    assert gc.returncode == 0, gc.stderr
    with open("/proc/self/mountinfo") as f:
        assert "nixcell/docker" not in f.read()  # detached before anything was removed
    assert (tmp_path / "keep").read_text() == "mine"  # the workdir itself untouched
    assert containers() == []
    assert not any(d.startswith(f"{proc.pid}-") for d in os.listdir(dockerhost.root_dir()))
    assert "docker leftover(s)" in gc.stdout.decode()


def _nobody_state(home) -> dict[str, str]:
    """An ordinary user's nixcell home with bash + coreutils resolved (root resolves: the
    single-user store is root's), as test_ordinary_user.as_nobody makes, for one package set."""
    import shutil

    state = home / "nixcell-home"
    env = {**os.environ, "NIXCELL_HOME": str(state)}
    subprocess.run(
        [NIXCELL, "run", "-p", "bash", "-p", "coreutils", "--", "true"], check=True, env=env
    )
    (state / "offline").mkdir()
    for name in ("set.nix", "set.json"):
        shutil.copy2(
            os.path.join(os.environ["NIXCELL_OFFLINE_DIR"], name), state / "offline" / name
        )
    for root, dirs, files in os.walk(state):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), 65534, 65534)
    os.chown(state, 65534, 65534)
    return {
        "PATH": os.environ["PATH"], "HOME": str(home), "NIXCELL_HOME": str(state),
        "NIXCELL_OFFLINE_DIR": str(state / "offline"), "LANG": "C.UTF-8",
        "NIXCELL_DOCKER_HOST": os.environ["NIXCELL_DOCKER_HOST"],
    }  # fmt: skip


def test_ordinary_user_runs_as_themselves_and_binds_are_refused(dockerd, user_home):
    env = _nobody_state(user_home)

    def nobody(*args: str) -> subprocess.CompletedProcess[bytes]:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", NIXCELL, "run"]
        argv += ["--backend", "docker", "-p", "bash", "-p", "coreutils", *args]
        return subprocess.run(argv, env=env, cwd=str(user_home), capture_output=True, timeout=120)

    work = user_home / "w"
    work.mkdir()
    os.chown(work, 65534, 65534)
    os.chmod(dockerd, 0o666)  # a member of the docker group, in effect
    try:
        ran = nobody("--", "bash", "-c", "id -u; ls -ld /tmp")
        bind = nobody("--workdir", str(work), "--", "true")
        net = nobody("--allow-host", "up.test", "--", "true")
    finally:
        os.chmod(dockerd, 0o660)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.decode().splitlines()
    assert lines[0] == "65534"  # the invoker's own uid, never root
    assert " cell " in lines[1]  # its tmpfs are the cell user's
    for refused, phrase in ((bind, b"made by fd"), (net, b"network policy as an ordinary user")):
        assert refused.returncode != 0 and phrase in refused.stderr, refused.stderr
        assert refused.stderr.count(b"\n") == 1  # one line, no traceback
    assert containers() == []


def test_a_killed_warm_run_is_swept_by_the_next_start(dockerd, offline_set):
    flags = [NIXCELL, "run", "--backend", "docker", "-p", "coreutils", "--"]
    subprocess.run([*flags, "true"], check=True, capture_output=True)  # the plan is cached now
    proc = subprocess.Popen(
        [*flags, "sleep", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not containers("nixcell.owner") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert containers("nixcell.owner"), "the run's container never appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert containers("nixcell.owner")  # still running: Docker has no die-with-parent
    subprocess.run([*flags, "true"], check=True, capture_output=True)  # any start sweeps it
    assert containers() == []
