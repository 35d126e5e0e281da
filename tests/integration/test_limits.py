"""Limits are enforced by the kernel (cgroups, pid namespace), and every cell is torn down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli

from nixcell.errors import UsageError


def nixcell_cgroups() -> list[Path]:
    from nixcell.sandbox.cgroups import list_cell_cgroups

    return list_cell_cgroups()


def pgrep(pattern: str) -> list[str]:
    """Pids of `sleep`-like processes whose full command line is exactly ``pattern``."""
    proc = subprocess.run(["pgrep", "-f", f"^{pattern}$"], capture_output=True, text=True)
    return proc.stdout.split()


def test_memory_limit_kills_big_allocation(cell):
    result = cell(
        ["python3", "-c", "b = bytearray(1 << 30); print('survived')"],
        packages=["python3"],
        limits={"memory": "128M"},
    )
    assert result.exit_code == 137
    assert result.oom_killed
    assert result.message == "killed: out of memory (limit 128M)"
    assert b"survived" not in result.stdout


def test_memory_limit_allows_what_fits(cell):
    result = cell(
        ["python3", "-c", "b = bytearray(32 << 20); print('ok')"],
        packages=["python3"],
        limits={"memory": "256M"},
    )
    assert (result.exit_code, result.stdout, result.oom_killed) == (0, b"ok\n", False)


def test_pids_limit_stops_forking(cell):
    script = (
        "import os, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        print('blocked', n, e.errno); break\n"
        "    if pid == 0:\n"
        "        time.sleep(30); os._exit(0)\n"
        "    n += 1\n"
        "    if n > 500: print('unbounded'); break\n"
    )
    result = cell(["python3", "-c", script], packages=["python3"], limits={"pids": 32})
    words = result.stdout.decode().split()
    assert words[0] == "blocked", result
    assert int(words[1]) < 32


def test_fork_bomb_is_contained(cell):
    result = cell(
        "bomb() { bomb | bomb & }; bomb; sleep 3; echo alive", limits={"pids": 64, "timeout": "6s"}
    )
    assert result.exit_code in (0, 124)
    assert not subprocess.run(["pgrep", "-f", "bomb"], capture_output=True).stdout


def test_timeout_kills_every_process(cell):
    started = time.monotonic()
    result = cell("sleep 100.123 & sleep 100.123", limits={"timeout": "2s"})
    assert result.exit_code == 124 and result.timed_out
    assert result.message == "timed out after 2s"
    assert time.monotonic() - started < 30  # generous: a hang, not a speed check
    assert not pgrep("sleep 100.123")


def test_timeout_with_limits_leaves_no_cgroup(cell):
    result = cell(
        "sleep 100.456 & sleep 100.456", limits={"timeout": "1s", "memory": "64M", "pids": 16}
    )
    assert result.exit_code == 124
    assert not pgrep("sleep 100.456")
    assert nixcell_cgroups() == []


def test_cpu_limit_runs(cell):
    result = cell(
        ["python3", "-c", "print(sum(range(10**6)))"], packages=["python3"], limits={"cpus": 0.5}
    )
    assert result.exit_code == 0 and result.stdout == b"499999500000\n"


def test_disk_limit_caps_tmpfs(cell):
    result = cell(
        "head -c 8M /dev/zero > /tmp/big && echo wrote-tmp; "
        "head -c 8M /dev/zero > /workspace/big && echo wrote-ws; true",
        limits={"disk": "4M"},
    )
    assert "wrote" not in result.stdout.decode()


DISK_PROBE = r"""
import errno, json, os, sys
places = sys.argv[1:]
def fill(path, limit):
    written = 0
    try:
        with open(path, "wb") as f:
            while written < limit:
                f.write(b"x" * 65536); f.flush(); written += 65536
    except OSError as e:
        return written, errno.errorcode[e.errno]
    return written, None
out = {"places": {}, "total": 0}
for place in places:
    got, err = fill(os.path.join(place, "fill"), 64 << 20)
    out["places"][place] = [got, err]
    out["total"] += got
for place in ("/dev", "/", "/etc", "/run", "/nix", "/proc/self"):
    try:
        open(os.path.join(place, "w"), "w").close()
        out.setdefault("writable", []).append(place)
    except OSError:
        pass
n = 0
try:
    while n < 200000:
        open(f"/tmp/i{n}", "w").close(); n += 1
except OSError as e:
    out["inodes"] = [n, errno.errorcode[e.errno]]
print(json.dumps(out))
"""
PLACES = ["/tmp", "/dev/shm", "/home/cell", "/workspace"]


@pytest.mark.parametrize("order", [PLACES, PLACES[::-1], ["/dev/shm", "/workspace"]])
def test_disk_limit_bounds_every_writable_place_together(cell, order):
    """--disk 8M is 8 MiB in total, whatever place the cell fills first; /dev and the rest of
    the root are not writable at all; inodes are bounded too (one tmpfs holds every area)."""
    argv = ["python3", "-c", DISK_PROBE, *order]
    result = cell(argv, packages=["python3"], limits={"disk": "8M"})
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["total"] <= 8 << 20, report
    assert report["total"] >= 6 << 20, report  # the limit is the bound, not something smaller
    assert all(err in (None, "ENOSPC") for _, err in report["places"].values()), report
    assert "writable" not in report, report
    assert report["inodes"][1] == "ENOSPC" and report["inodes"][0] <= 2048, report


TCP_PROBE = r"""
import socket
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1024)
socks, total = [], 0
try:
    for _ in range(200):  # 200 pairs x 16 MiB buffers: 3 GiB if nothing holds it
        c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 << 20)
        c.connect(srv.getsockname()); a, _ = srv.accept()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20); c.setblocking(False)
        try:
            while True:
                total += c.send(b"x" * 65536)
        except BlockingIOError:
            pass
        socks += [c, a]
except OSError:
    pass
print(total >> 20)
"""


def test_memory_limit_holds_socket_buffers(cell):
    """Kernel memory a cell makes the host hold for it counts against --memory: loopback TCP
    buffers nobody reads (cgroup v1 charges them only when told to)."""
    result = cell(["python3", "-c", TCP_PROBE], packages=["python3"], limits={"memory": "64M"})
    queued = int(result.stdout or b"0") if result.exit_code == 0 else 0
    assert result.exit_code in (0, 137), result.stderr
    assert queued <= 64, f"{queued} MiB queued in TCP buffers under --memory 64M"


def test_disk_limit_refuses_a_writable_host_directory(cell, tmp_path):
    with pytest.raises(UsageError, match="--disk cannot bound"):
        cell("true", limits={"disk": "8M"}, workdir=str(tmp_path))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_nixcell_tears_everything_down(offline_set, sig):
    marker = f"sleep 1000.{int(sig)}7"
    proc = subprocess.Popen(
        [
            NIXCELL,
            "run",
            "-p",
            "bash",
            "-p",
            "coreutils",
            "--memory",
            "64M",
            "--",
            "bash",
            "-c",
            f"{marker} & {marker}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(pgrep(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pgrep(marker)) == 2
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    assert not pgrep(marker)
    assert nixcell_cgroups() == []
    assert b"Traceback" not in err


def test_unenforceable_limit_is_refused(user_home):
    """As an ordinary user there is no writable cgroup here: --memory must refuse, not run."""
    from tests.integration.test_ordinary_user import as_nobody

    out = user_home / "out"  # writable by the user; its home stays 0755 (a private state dir
    out.mkdir()  # refuses a world-writable parent)
    os.chown(out, 65534, 65534)
    marker = out / "ran"
    result = as_nobody(
        user_home, "run", "-p", "bash", "--memory", "64M", "--", "bash", "-c", f"echo > {marker}"
    )
    assert result.returncode != 0
    err = result.stderr.decode()
    assert err.startswith("nixcell: ") and err.count("\n") == 1, err
    assert "memory" in err
    assert not marker.exists()


def test_cli_reports_timeout_and_oom(offline_set):
    timed = cli("run", "-p", "coreutils", "--timeout", "1s", "--", "sleep", "30")
    assert timed.returncode == 124
    assert timed.stderr.decode().strip().splitlines()[-1] == "nixcell: timed out after 1s"
    oom = cli(
        "run", "-p", "python3", "--memory", "64M", "--", "python3", "-c", "x = bytearray(1 << 30)"
    )
    assert oom.returncode == 137
    assert oom.stderr.decode().strip().endswith("nixcell: killed: out of memory (limit 64M)")
