"""The gvisor backend's lifecycle against the real runsc: a killed nixcell (its sandbox dies
with it; ``nixcell gc`` and the next start sweep the rest), cells side by side in one process,
and an ordinary user's rootless cells. (``test_backend_gvisor.py`` has what a cell gets.)"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli
from tests.integration.gvisorrig import left_of, runsc_processes

from nixcell.sandbox import backends, dockerhost

pytestmark = pytest.mark.skipif(
    not backends.availability("gvisor").ok,
    reason=f"gvisor cannot run here: {backends.availability('gvisor').detail}",
)


def test_a_killed_nixcell_leaves_no_sandbox_and_gc_sweeps_the_rest(offline_set, tmp_path):
    argv = [
        NIXCELL,
        "run",
        "--backend",
        "gvisor",
        "--workdir",
        str(tmp_path),
        "-p",
        "coreutils",
        "--",
        "sleep",
        "100",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_root = Path(dockerhost.root_dir("gvisor-state"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [
            d for d in state_root.glob(f"{proc.pid}-*/*.state")
        ]:
            time.sleep(0.1)
        assert list(state_root.glob(f"{proc.pid}-*/*.state")), "the run's sandbox never appeared"
        time.sleep(0.5)
        container = next(state_root.glob(f"{proc.pid}-*/*.state")).name.split("_sandbox:")[1][
            : -len(".state")
        ]
        assert runsc_processes(container)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20  # runsc run dies with nixcell (PDEATHSIG), the sandbox with it
    while runsc_processes(container) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runsc_processes(container) == [], "the sandbox outlived its nixcell"
    assert list(state_root.glob(f"{proc.pid}-*"))  # its state is left: the sweep's
    gc = cli("gc")
    assert gc.returncode == 0, gc.stderr
    assert not list(state_root.glob(f"{proc.pid}-*"))
    root = dockerhost.root_dir("gvisor")
    assert not [d for d in os.listdir(root) if d.startswith(f"{proc.pid}-")]
    with open("/proc/self/mountinfo") as f:
        assert "nixcell/gvisor" not in f.read()  # its idmapped workdir detached
    assert "gvisor leftover(s)" in gc.stdout.decode()


def test_an_ordinary_user_runs_rootless_as_themselves(user_home):
    """``unshare -U -r runsc --rootless``: the cell is the user's own uid, the sandbox's
    processes the user's on the host; what needs root is refused in one line."""
    from tests.integration.test_ordinary_user import as_nobody

    ran = as_nobody(
        user_home, "run", "--backend", "gvisor", "--pids", "16", "-p", "bash", "-p", "coreutils",
        "--", "bash", "-c", "echo $UID; echo out; echo err >&2; exit 5",
    )  # fmt: skip
    assert ran.returncode == 5, ran.stderr
    assert ran.stdout.decode().split() == ["65534", "out"] and ran.stderr == b"err\n"
    net = as_nobody(
        user_home,
        "run",
        "--backend",
        "gvisor",
        "--allow-host",
        "up.test",
        "-p",
        "bash",
        "--",
        "true",
    )
    disk = as_nobody(
        user_home, "run", "--backend", "gvisor", "--disk", "8M", "-p", "bash", "--", "true"
    )
    (user_home / "w").mkdir()
    os.chown(user_home / "w", 65534, 65534)
    work = as_nobody(
        user_home, "run", "--backend", "gvisor", "--workdir", str(user_home / "w"), "-p", "bash",
        "--", "true",
    )  # fmt: skip
    pids = as_nobody(
        user_home, "run", "--backend", "gvisor", "--pids", "1", "-p", "bash", "--", "true"
    )
    for refused, phrase in (
        (net, b"network policy as an ordinary user"),
        (disk, b"--disk as an ordinary user"),
        (work, b"made by fd (runsc would resolve the path itself, after the checks); run "
               b"nixcell as root for binds under gvisor"),
        (pids, b"--pids must be at least 2"),
    ):  # fmt: skip
        assert refused.returncode != 0 and phrase in refused.stderr, refused.stderr
        assert refused.stderr.count(b"\n") == 1
        for other in (b"docker", b"bwrap"):  # each backend's messages name only itself
            assert other not in refused.stderr, refused.stderr
    timed = as_nobody(
        user_home, "run", "--backend", "gvisor", "--timeout", "1s", "-p", "bash", "-p", "coreutils",
        "--", "sleep", "100",
    )  # fmt: skip
    assert timed.returncode == 124, timed.stderr
    mem = as_nobody(
        user_home, "run", "--backend", "gvisor", "--memory", "128M", "-p", "bash", "--", "true"
    )
    assert mem.returncode == 0 or (  # v2 with a delegated subtree runs it; v1 says why not
        mem.stderr.startswith(b"nixcell: cannot enforce --memory") and mem.stderr.count(b"\n") == 1
    ), mem.stderr
    assert runsc_processes("nixcell-") == []


def test_a_killed_runs_leftovers_are_swept_by_the_next_start(offline_set):
    flags = [NIXCELL, "run", "--backend", "gvisor", "-p", "coreutils", "--"]
    subprocess.run([*flags, "true"], check=True, capture_output=True)  # the plan is cached now
    proc = subprocess.Popen(
        [*flags, "sleep", "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    state_root = Path(dockerhost.root_dir("gvisor-state"))
    try:
        deadline = time.monotonic() + 60
        while not list(state_root.glob(f"{proc.pid}-*/*.state")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(state_root.glob(f"{proc.pid}-*/*.state")), "the run's sandbox never appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert list(state_root.glob(f"{proc.pid}-*"))
    subprocess.run([*flags, "true"], check=True, capture_output=True)  # any start sweeps it
    assert not list(state_root.glob(f"{proc.pid}-*"))
    root = dockerhost.root_dir("gvisor")
    assert not [d for d in os.listdir(root) if d.startswith(f"{proc.pid}-")]


def test_an_ordinary_users_killed_run_is_swept_by_their_next_start(user_home):
    """Rootless: the sandbox dies with the killed nixcell; its runsc state (the user's own) is
    deleted by the user's next start (``unshare -U -r runsc --rootless delete --force``)."""
    from tests.integration.test_ordinary_user import as_nobody

    flags = ["run", "--backend", "gvisor", "-p", "bash", "-p", "coreutils", "--"]
    assert as_nobody(user_home, *flags, "true").returncode == 0
    argv, env = as_nobody(user_home, *flags, "sleep", "100", spawn=True)
    state_root = Path(env["NIXCELL_HOME"])
    proc = subprocess.Popen(
        argv, env=env, cwd=str(user_home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not list(state_root.rglob("gvisor-state/*/*.state")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(state_root.rglob("gvisor-state/*/*.state")), "the run's sandbox never appeared"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 20
    while runsc_processes("nixcell-") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runsc_processes("nixcell-") == [], "the sandbox outlived its nixcell"
    assert list(state_root.rglob("gvisor-state/*/*.state"))
    assert as_nobody(user_home, *flags, "true").returncode == 0  # a start sweeps it
    assert list(state_root.rglob("gvisor-state/*")) == []
    assert list(state_root.rglob("gvisor/*")) == []


REAPED = """
import json, os, sys
import nixcell
from nixcell import CellSpec
from nixcell.sandbox import gvisorcell
from nixcell.sandbox.reap import become_subreaper
assert become_subreaper()  # as the CLI: the killed runsc run's orphans come back to us
deletes = []
real = gvisorcell.delete
def delete(state, container):
    deletes.append(os.listdir(state))
    real(state, container)
    deletes.append(os.listdir(state))
gvisorcell.delete = delete
spec = CellSpec(command=["sleep", "100"], packages=["coreutils"], backend="gvisor",
                limits={"timeout": "1s"})
result = nixcell.run(spec, capture_output=True)
zombies = []
for pid in os.listdir("/proc"):
    try:
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        continue
    if stat[0] == "Z" and stat[1] == str(os.getpid()):
        zombies.append(open(f"/proc/{pid}/comm").read().strip())
print(json.dumps({"exit": result.exit_code, "cell": result.cell_id, "zombies": zombies,
                  "deletes": deletes}))
"""


def test_a_killed_sandbox_is_reaped_and_deleted_at_once(offline_set):
    """A timeout SIGKILLs the cgroup, ``runsc run`` with it: its sandbox and gofer are orphaned
    to nixcell (the CLI is a subreaper) and stayed zombies, so ``runsc delete --force`` waited
    for the sandbox to "stop" until its 5 s deadline, failed, and left them. They are reaped
    first: delete removes the state, no zombie is left."""
    import json
    import sys

    proc = subprocess.run([sys.executable, "-c", REAPED], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout.decode().splitlines()[-1])
    assert facts["exit"] == 124, facts
    assert facts["zombies"] == [], facts
    (before, after), cell = facts["deletes"], facts["cell"]
    assert any(name.endswith(".state") for name in before), facts  # runsc run was killed
    assert after == [], facts  # runsc delete removed the state (it gave up before)
    assert left_of(cell) == []
