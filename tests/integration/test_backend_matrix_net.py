# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The backend matrix, part two: a policy's network and credentials, limits, and what a killed
cell leaves (nothing) — the same properties on every backend this host runs (issue 12).

Upstreams are this process's loopback servers (tests/integration/upstream.py) reached through
the proxy with pinned names; "not reachable" is proven against those same listeners.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import string
import threading
import time
from pathlib import Path

import pytest
from tests.integration import upstream as up
from tests.integration.test_net_credentials import auth, write_policy

GH_ENV = "NIXCELL_TEST_GH"  # the name write_policy's credential reads
ALNUM = string.ascii_letters + string.digits

NET = r"""
import glob, json, os, socket, sys, urllib.error, urllib.request
base, other, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
dummy = os.environ["GITHUB_TOKEN"]
def fetch(url):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + dummy})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, ""]
    except Exception as e:
        return [403, ""] if "403" in str(e) else ["error", repr(e)]
out = {"dummy": dummy, "allowed": fetch(base + "/echo-auth"), "other": fetch(other + "/x")}
s = socket.socket(); s.settimeout(5)
try:
    s.connect(("127.0.0.1", port)); out["direct"] = "connected"
except OSError as e:
    out["direct"] = e.errno
with open("/workspace/env.txt", "w") as f:
    for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
        try:
            f.write(open(path, "rb").read().decode(errors="replace") + "\n")
        except OSError:
            pass
    f.write("\n".join(f"{k}={v}" for k, v in os.environ.items()))
print(json.dumps(out))
"""


def test_policy_allows_only_its_hosts_and_swaps_the_credential(
    backend_cell, tls, tmp_path, monkeypatch
):
    """Through the proxy only: the allowed host answers, another gets 403, the upstream's own
    port dialled directly is refused. The cell holds only the dummy; the upstream receives the
    real value; the real value is in none of the cell's env, files or output."""
    real = "ghp_" + "".join(secrets.choice(ALNUM) for _ in range(36))
    monkeypatch.setenv(GH_ENV, real)
    tls.seen.clear()
    work = tmp_path / "work"
    work.mkdir()
    policy = write_policy(
        tmp_path / "p.toml", tls.port
    )  # up.test + other.test; the credential for up.test
    net = up.loopback_network(tls, policy_files=[policy], credentials=["github"])
    # other.test is allowed by the policy; evil.test is not
    argv = ["python3", "-c", NET, tls.url(""), tls.url("", host="evil.test"), str(tls.port)]
    result = backend_cell(argv, packages=["python3"], network=net, workdir=str(work))
    assert result.exit_code == 0, result
    got = json.loads(result.stdout)
    dummy = got["dummy"]
    assert dummy != real and len(dummy) == len(real) and dummy.startswith("ghp_")
    assert got["allowed"] == [200, f"auth=Bearer {dummy}\n"]  # the answer scrubbed back
    assert got["other"] == [403, ""]
    assert got["direct"] == 111  # ECONNREFUSED: the cell's own lo, not the host's
    assert [(s.host, s.path, auth(s)) for s in tls.seen] == [
        (f"up.test:{tls.port}", "/echo-auth", f"Bearer {real}")
    ]  # evil.test never reached the upstream
    env = (work / "env.txt").read_text()
    assert f"GITHUB_TOKEN={dummy}" in env
    for path in work.rglob("*"):
        assert real.encode() not in path.read_bytes(), path
    for data in (result.stdout, result.stderr, (result.network_summary or "").encode()):
        assert real.encode() not in (data or b"")


def test_memory_limit_kills_with_137_and_lets_what_fits(backend_cell):
    code = "a = bytearray(32 << 20); print('fits', flush=True); b = bytearray(1 << 30); print('survived')"
    result = backend_cell(["python3", "-c", code], packages=["python3"], limits={"memory": "128M"})
    assert (result.exit_code, result.oom_killed) == (137, True), result
    assert "out of memory" in (result.message or "")
    assert result.stdout == b"fits\n"


FORKS = """
import os, time
n = 0
while n <= 500:
    try:
        pid = os.fork()
    except OSError as e:
        print("blocked", n, flush=True); break
    if pid == 0:
        time.sleep(30); os._exit(0)
    n += 1
else:
    print("unbounded", n, flush=True)
os._exit(0)
"""


def test_pids_limit_stops_forking(backend_cell):
    result = backend_cell(["python3", "-c", FORKS], packages=["python3"], limits={"pids": 32})
    words = result.stdout.decode().split()
    assert result.exit_code == 0 and words[0] == "blocked", result
    assert 0 < int(words[1]) < 32


def _cmdline(pid: str) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()  # any host process: any bytes
        return raw.replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _uids(pid: str) -> list[str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]


def _descendants() -> list[str]:
    """Pids below this process (the in-process engine's children: bwrap, runsc, qemu)."""
    parents: dict[str, str] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parents[pid] = stat.rsplit(")", 1)[1].split()[1]
    found, frontier = [], {str(os.getpid())}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier}
        found += frontier
    return found


# Host processes that run the cell's code, by backend: under bwrap and Docker the program itself
# (its command line is the marker); under gVisor the Sentry (runsc's sandbox process) runs it;
# in a microVM, QEMU.
RUNS_CELL_CODE = {
    "bwrap": lambda marker: [
        p for p in filter(str.isdigit, os.listdir("/proc")) if _cmdline(p) == marker
    ],
    "docker": lambda marker: [
        p for p in filter(str.isdigit, os.listdir("/proc")) if _cmdline(p) == marker
    ],
    "gvisor": lambda marker: [
        p for p in _descendants() if "runsc" in _cmdline(p) and " boot " in f" {_cmdline(p)} "
    ],
    "microvm": lambda marker: [p for p in _descendants() if "qemu-system" in _cmdline(p)],
}


def left_behind(backend: str, cell_id: str, marker: str) -> list[str]:
    found = [f"process {p}" for p in RUNS_CELL_CODE[backend](marker)]
    found += [f"process {p}: {_cmdline(p)[:60]}" for p in _descendants() if marker in _cmdline(p)]
    if backend == "docker":
        from nixcell.sandbox import dockerapi

        query = {"all": "1", "filters": json.dumps({"label": [f"nixcell.cell={cell_id}"]})}
        found += [
            c["Names"][0] for c in dockerapi.Client().call("GET", "/containers/json", query=query)
        ]
    from nixcell.sandbox.cgroups import list_cell_cgroups

    return found + [f"cgroup {p}" for p in list_cell_cgroups() if cell_id in p.name]


def test_timeout_kills_everything_and_no_host_root_runs_cell_code(backend_cell):
    """While it runs, every host process running the cell's code has a uid other than 0 (seen
    from the host); at the timeout the cell is killed (124) and nothing of it is left."""
    seconds = f"{100 + secrets.randbelow(10**6) / 10**7:.7f}"
    marker = f"sleep {seconds}"
    backend = backend_cell.backend
    seen: dict[str, list[str]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for pid in RUNS_CELL_CODE[backend](marker):
                with contextlib.suppress(OSError, StopIteration):  # it may have just ended
                    seen[pid] = _uids(pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = backend_cell(
            f"{marker} & {marker}",
            packages=["bash", "coreutils"],
            limits={"timeout": "5s"},  # margin for a slow start under load
        )
    finally:
        done.set()
        watcher.join()
    assert (result.exit_code, result.timed_out) == (124, True), result
    assert seen, f"no host process of the {backend} cell was seen running"
    assert {pid: uids for pid, uids in seen.items() if "0" in uids} == {}
    assert left_behind(backend, result.cell_id, marker) == []


@pytest.mark.fast_only
def test_a_waiting_cell_does_not_starve_the_others(backend):
    """A cell's wait lasts as long as the cell: it must not hold a thread of the loop's
    executor (here one thread), or a second cell could not even start meanwhile."""
    import asyncio
    import concurrent.futures

    import nixcell
    from nixcell import CellSpec

    async def both() -> tuple[nixcell.RunResult, nixcell.RunResult]:
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(1))
        r, w = os.pipe()
        try:
            waiting = CellSpec(command=["cat"], packages=["coreutils"], backend=backend)
            first = asyncio.ensure_future(nixcell.run_async(waiting, stdin=r, capture_output=True))
            quick = CellSpec(command=["echo", "second"], packages=["coreutils"], backend=backend)
            second = await asyncio.wait_for(nixcell.run_async(quick, capture_output=True), 120)
            os.write(w, b"first\n")  # only now may the first cell end
        finally:
            os.close(w)
        try:
            return await first, second
        finally:
            os.close(r)

    first, second = asyncio.run(both())
    assert (first.stdout, second.stdout) == (b"first\n", b"second\n"), (first, second)
