"""The CLI's warm path (cli/fast.py, sandbox/direct.py) makes the very cell the normal path makes.

Each case runs the real `nixcell` twice with the same flags in a fresh home: the first run plans
and runs the cell with the normal executor, the second finds the sealed plan and runs it with the
warm one. That the second run took the warm path is seen on disk: a run that plans again rewrites
the cache entry (a new file), the warm path only reads it. Inside both cells a probe prints what
makes a cell: ids and their maps, capabilities, no_new_privs, seccomp, cgroup, every mount with its
options, the environment, the working directory, limits; they must be equal, up to the host uid
slot of a root-run cell (any free one of the range). Limits, the timeout and signals are checked
from the host while a warm cell runs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli
from tests.integration.test_limits import pgrep

from nixcell.sandbox.identity import subordinate_range

PACKAGES = ("-p", "bash", "-p", "coreutils")
STATUS = "Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters"
PROBE = f"""
while read -r line; do case $line in {"|".join(f"{k}:*" for k in STATUS.split("|"))})
  echo "$line";; esac; done < /proc/self/status
echo --- maps; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups /proc/self/cgroup
echo --- mounts; while read -r _ _ _ root point opts rest; do
  echo "$root $point $opts ${{rest#*- }}"; done < /proc/self/mountinfo
echo --- env; env | sort
echo --- place; pwd; umask; id; cat /proc/sys/kernel/hostname; tty; test -t 1 && echo out-tty
ls -1a /; ls -ln /workspace /data 2>&1
echo --- limits; ulimit -a
"""


def _entry(home: Path) -> os.stat_result:
    (entry,) = (home / "cache" / "plans").iterdir()
    return entry.stat()


def _normalised(output: bytes) -> str:
    """The probe's output with what legitimately differs between two cells replaced: the host
    uid slot of a root-run cell, bwrap's random temp names and the dates ``ls`` shows."""
    text = output.decode()
    rng = subordinate_range()

    def slot(match: re.Match[str]) -> str:
        value = int(match.group(0))
        return "<slot>" if value in rng else match.group(0)

    text = re.sub(r"\b\d{6,10}\b", slot, text)
    text = re.sub(r"/bindfile\w{6}/", "/bindfile<random>/", text)  # bwrap's --ro-bind-data temp
    return re.sub(r"\w{3} +\d+ +\d\d:\d\d", "<date>", text)


def twice(home: Path, *flags: str, command: tuple[str, ...] = ("bash", "-c", PROBE)):
    """(normal run, warm run) of the same flags; asserts the second took the warm path.

    A run the normal path refuses before the cell starts caches no plan: ``true`` caches it."""
    env = {"NIXCELL_HOME": str(home)}
    run = ("run", *PACKAGES, *flags, "--")
    normal = cli(*run, *command, env=env, input=b"")  # (stdin a pipe, never a terminal)
    if not (home / "cache" / "plans").exists() or not any((home / "cache" / "plans").iterdir()):
        assert cli(*run, "true", env=env, input=b"").returncode == 0
    before = _entry(home)
    fast = cli(*run, *command, env=env, input=b"")
    after = _entry(home)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "planned again"
    return normal, fast


def _flag_sets(tmp: Path) -> dict[str, list[str]]:
    work, data = tmp / "work", tmp / "data"
    return {
        "plain": [],
        "memory": ["--memory", "256M"],
        "pids": ["--pids", "64"],
        "timeout": ["--timeout", "30s"],
        "every limit": ["--memory", "128M", "--pids", "32", "--cpus", "1", "--timeout", "1m"],
        "workdir": ["--workdir", str(work)],
        "workdir and limits": ["--workdir", str(work), "--memory", "256M", "--pids", "64"],
        "binds, hide, env, cwd": [
            "--workdir", str(work), "--hide", str(work / "secret"),
            "--ro-bind", f"{data}:/data", "--bind", f"{tmp / 'rw'}:/rw",
            "-e", "LOOKS=<fd:seccomp>", "-e", "DASH=--", "--cwd", "/data",
        ],
        "debugger profile": ["--hardening-profile", "debugger"],
        "own pty (-i)": ["-i"],  # stdin a pipe: the cell's pty is nixcell's own, on both paths
        "no pty (-T)": ["-T"],
        "disk": ["--disk", "64M"],
        "host network": ["--host-network"],
        "whole store": ["--store", "readonly"],
        "store copy": ["--store", "copy", "--store-dir", str(tmp / "store")],
        "frozen store copy": ["--store", "isolated", "--store-dir", str(tmp / "store")],
    }  # fmt: skip


CASES = list(_flag_sets(Path("/")))  # the names only


@pytest.mark.parametrize("case", CASES)
def test_warm_and_normal_paths_make_the_same_cell(offline_set, tmp_path, case):
    flags = _flag_sets(tmp_path)[case]
    for d in ("work", "data", "rw"):
        (tmp_path / d).mkdir()
    (tmp_path / "work" / "secret").write_text("s")
    (tmp_path / "data" / "file").write_text("d")
    normal, fast = twice(tmp_path / "home", *flags)
    assert normal.returncode == 0, normal.stderr
    assert fast.returncode == normal.returncode
    assert _normalised(fast.stdout) == _normalised(normal.stdout)
    assert b"Seccomp:\t2" in fast.stdout and b"NoNewPrivs:\t1" in fast.stdout
    assert b"CapEff:\t0000000000000000" in fast.stdout
    assert fast.stderr == b"", fast.stderr


EXITS = {
    "exit code": (["bash", "-c", "exit 42"], [], 42, ""),
    "signalled command": (["bash", "-c", "kill -TERM $$"], [], 143, ""),
    "builtin through the shell": (["echo", "hi"], [], 0, ""),
    # a root-run cell reopens its stdio pipes (sandbox/stdioowner.py lends them on both paths)
    "stdio pipes reopened": (["bash", "-c", "echo hi > /dev/stdout; cat /dev/stdin"], [], 0, ""),
    "missing command": (["no-such-program"], [], 127, "not found in the cell's packages"),
    "missing program path": (["/bin/nope"], [], 127, "does not exist in the cell"),
    "timeout": (["sleep", "30"], ["--timeout", "1s"], 124, "nixcell: timed out after 1s"),
    "timeout with limits": (["sleep", "30"], ["--timeout", "1s", "--pids", "16"], 124, "1s"),
    # a name lookup goes to the cell's own 127.0.0.1:53, refused (sandbox/nonet.py's counters)
    "no-network hint": (
        ["bash", "-c", "echo > /dev/tcp/pypi.test/80"],
        [],
        1,
        "nixcell: the cell has no network; allow a host with --allow-host HOST",
    ),
}


@pytest.mark.parametrize("case", list(EXITS))
def test_exit_codes_and_messages_are_the_normal_paths(offline_set, tmp_path, case):
    command, flags, code, message = EXITS[case]
    normal, fast = twice(tmp_path / "home", *flags, command=tuple(command))
    for result in (normal, fast):
        assert result.returncode == code, result.stderr
        assert message in result.stderr.decode()
        assert b"Traceback" not in result.stderr
    assert fast.stdout == normal.stdout
    assert _messages(fast) == _messages(normal)


def _messages(result) -> list[bytes]:
    """nixcell's lines on stderr, without the cold run's note on the package set it chose."""
    return [ln for ln in result.stderr.splitlines() if b"no nixpkgs found" not in ln]


def test_oom_on_the_warm_path(offline_set, tmp_path):
    command = ("python3", "-c", "x = bytearray(1 << 30)")
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    for _ in range(2):
        result = cli("run", "-p", "python3", "--memory", "64M", "--", *command, env=env, input=b"")
        assert result.returncode == 137
        assert result.stderr.decode().endswith("nixcell: killed: out of memory (limit 64M)\n")


LIMIT_FILES = (
    "memory.max",
    "memory.swap.max",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "pids.max",
    "cpu.max",
    "cpu.cfs_quota_us",
)


def _host_view(pid: int) -> tuple[dict[str, object], list[Path]]:
    """What the host sees of a process of the cell: its uid and its cgroups' limits (v2 or v1),
    and those cgroups' directories."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    limits, dirs = {}, []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "/nixcell/" not in path:
            continue
        base = Path("/sys/fs/cgroup") / (controllers.split(",")[0].removeprefix("name=") or "")
        directory = base / path.lstrip("/") if controllers else Path("/sys/fs/cgroup" + path)
        dirs.append(directory)
        for name in LIMIT_FILES:
            if (directory / name).exists():
                limits[f"{controllers}:{name}"] = (directory / name).read_text().strip()
    return {"uid_in_range": uid in subordinate_range(), "limits": limits}, dirs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_tear_a_warm_cell_down(offline_set, tmp_path, sig):
    marker = f"sleep 1000.{int(sig)}3"
    flags = ["--memory", "64M", "--pids", "32", "--cpus", "1"]
    env = {**os.environ, "NIXCELL_HOME": str(tmp_path / "home")}
    views = []
    for _ in range(2):  # the normal path, then the warm one
        proc = subprocess.Popen(
            [NIXCELL, "run", *PACKAGES, *flags, "--", "bash", "-c", f"{marker} & wait"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        deadline = time.monotonic() + 60
        while not pgrep(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        (pid,) = map(int, pgrep(marker))
        view, cgroups = _host_view(pid)
        views.append(view)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig
        last = "interrupted" if sig == signal.SIGINT else "terminated"
        assert err.decode().splitlines()[-1] == f"nixcell: {last}"
        assert not pgrep(marker)
        assert cgroups and not any(d.exists() for d in cgroups)
    normal, fast = views
    assert fast == normal
    assert normal["uid_in_range"] and str(64 << 20) in normal["limits"].values()


def test_a_stale_cached_plan_is_not_used(offline_set, tmp_path):
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("one")
    env = {"NIXCELL_HOME": str(home)}
    args = ("run", *PACKAGES, "--ro-bind", f"{data}:/data", "--", "cat", "/data/f")
    assert cli(*args, env=env, input=b"").stdout == b"one"
    before = _entry(home)
    data.rename(tmp_path / "moved")
    gone = cli(*args, env=env, input=b"")  # the normal path's one-line error, not bwrap's
    assert gone.returncode != 0 and b"Traceback" not in gone.stderr
    assert str(data).encode() in gone.stderr and b"bwrap" not in gone.stderr
    assert _entry(home).st_ino == before.st_ino  # nothing planned, nothing cached
    (tmp_path / "moved").rename(data)
    (data / "f").write_text("two")
    assert cli(*args, env=env, input=b"").stdout == b"two"


def test_a_terminal_takes_the_normal_path(offline_set, tmp_path):
    """Until the PTY decision lands, a terminal on stdin means the normal path (no warm run)."""
    home = tmp_path / "home"
    env = {**os.environ, "NIXCELL_HOME": str(home)}
    argv = [NIXCELL, "run", *PACKAGES, "--", "true"]
    assert subprocess.run(argv, env=env, stdin=subprocess.DEVNULL).returncode == 0
    before = _entry(home)
    leader, follower = os.openpty()
    try:
        assert subprocess.run(argv, env=env, stdin=follower, capture_output=True).returncode == 0
    finally:
        os.close(leader)
        os.close(follower)
    assert _entry(home).st_ino != before.st_ino  # planned again by the normal path


@pytest.mark.parametrize("flags", [[], ["--workdir", "work"], ["--timeout", "30s"]], ids=str)
def test_an_ordinary_users_warm_cell_is_the_normal_one(user_home, flags):
    """Run by an ordinary user the cell is that user's (no uid slot): the same on both paths."""
    from tests.integration.test_ordinary_user import as_nobody

    (user_home / "work").mkdir()
    os.chown(user_home / "work", 65534, 65534)
    args = ("run", *PACKAGES, *flags, "--", "bash", "-c", PROBE)
    normal = as_nobody(user_home, *args)
    plans = user_home / "nixcell-home" / "cache" / "plans"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in plans.iterdir()}
    fast = as_nobody(user_home, *args)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in plans.iterdir()}
    assert after == before, "planned again"
    assert normal.returncode == fast.returncode == 0, normal.stderr
    assert _normalised(fast.stdout) == _normalised(normal.stdout)
    assert b"<slot>" not in _normalised(fast.stdout).encode()  # no subordinate uid for a user


def test_the_isolated_launcher_runs_both_paths(offline_set, tmp_path):
    """./setup's launcher (python -I -S): the warm path, and the normal one with site loaded."""
    from nixcell.cli import launcher

    path = tmp_path / "nixcell"
    assert "installed" in launcher.install(str(path))
    assert path.read_text().startswith(f"#!{sys.executable} -IS\n")
    env = {**os.environ, "NIXCELL_HOME": str(tmp_path / "home"), "PYTHONPATH": "/nonexistent"}
    argv = [str(path), "run", *PACKAGES, "--", "bash", "-c", "echo $0", "hi"]
    for _ in range(2):  # normal (click, pydantic from site-packages), then warm
        result = subprocess.run(argv, env=env, input=b"", capture_output=True)
        assert (result.returncode, result.stdout) == (0, b"hi\n"), result.stderr
    dry = subprocess.run([str(path), "run", *PACKAGES, "--dry-run", "--json", "--", "true"],
                         env=env, capture_output=True)  # fmt: skip
    assert dry.returncode == 0 and json.loads(dry.stdout)["command"]


def test_no_launcher_where_a_shebang_cannot_hold_the_interpreter(monkeypatch, tmp_path):
    from nixcell.cli import launcher

    for python in ("/opt/my python/bin/python3", "/p" + "y" * 200):
        monkeypatch.setattr(sys, "executable", python)
        assert launcher.script() is None
        assert "kept" in launcher.install(str(tmp_path / "nixcell"))
    assert not (tmp_path / "nixcell").exists()


def test_a_cached_network_plan_runs_through_the_normal_executor(offline_set, tmp_path):
    """A policy needs the proxy: the cached plan is used, by runner.execute (no request made)."""
    command = ("bash", "-c", "echo $HTTPS_PROXY; cat /etc/ssl/certs/ca-certificates.crt | wc -l")
    normal, fast = twice(tmp_path / "home", "--allow-host", "a.test", command=command)
    assert normal.returncode == fast.returncode == 0, fast.stderr
    assert fast.stdout == normal.stdout and fast.stdout.startswith(b"http://127.0.0.1:3128\n")


# What the warm path must never import: each is milliseconds of a ~15 ms run (issue 9 §7), and
# each came back once by accident (a stray import of nixcell.runner in preflight cost 10 ms).
# (the namespace helper, sandbox/holder.py, with socket and dataclasses, cost a root-run
# --bind ~12 ms: the warm path builds the stage in bwrap's own process, sandbox/stage.py)
WARM_PATH_NEVER = (
    "nixcell.runner", "click", "pydantic", "json", "dataclasses", "subprocess", "contextlib",
    "inspect", "logging", "pathlib", "typing", "nixcell.cli.main", "mcp",
    "nixcell.sandbox.holder", "socket", "threading", "collections",
)  # fmt: skip


# (as root, binds, --workdir and a store copy come through the idmapped stage, and --disk's
# tmpfs is mounted by the same child; an ordinary user's binds go to bwrap directly)
@pytest.mark.parametrize("flags", [[], ["--timeout", "30s"], ["-e", "A=1", "--cwd", "/tmp"],
                                   ["--store", "readonly"], ["--host-network"],
                                   ["--bind", "{tmp}:/w", "--ro-bind", "{tmp}/f:/f"],
                                   ["--workdir", "{tmp}"], ["--disk", "64M"],
                                   ["--disk", "64M", "--ro-bind", "{tmp}:/w"]])  # fmt: skip
def test_the_warm_path_imports_almost_nothing(offline_set, tmp_path, flags):
    """The modules a warm run loads, as ``python -X importtime`` lists them (not a timing)."""
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "f").write_text("")
    loaded = warm_imports(tmp_path, [f.format(tmp=tmp_path / "w") for f in flags])
    assert "nixcell.sandbox.direct" in loaded  # it was the warm path
    assert sorted(loaded.intersection(WARM_PATH_NEVER)) == []


def warm_imports(tmp_path, flags: list[str]) -> set[str]:
    """The modules a warm ``run PACKAGES FLAGS -- true`` loads (``python -X importtime``)."""
    from nixcell.cli import launcher

    path = tmp_path / "nixcell"
    launcher.install(str(path))
    env = {**os.environ, "NIXCELL_HOME": str(tmp_path / "home")}
    argv = ["run", *PACKAGES, *flags, "--", "true"]
    for _ in range(2):  # the first run plans and caches; later sweeps are not due for a while
        assert subprocess.run([str(path), *argv], env=env, capture_output=True).returncode == 0
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(path), *argv],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {ln.rsplit("|", 1)[-1].strip() for ln in out.stderr.splitlines() if "|" in ln}


# With cgroup limits the cgroup code loads too (sandbox/cgroups.py): its records are
# quiet.Frozen, not dataclasses (with inspect, ~4 ms), and it uses quiet.suppress, not
# contextlib, nor signal. It still imports pathlib (and, through functools, collections).
@pytest.mark.parametrize("flags", [["--memory", "256M"], ["--memory", "256M", "--pids", "64",
                                                          "--cpus", "1"]])  # fmt: skip
def test_the_warm_path_with_cgroup_limits_imports_no_dataclasses(offline_set, tmp_path, flags):
    loaded = warm_imports(tmp_path, flags)
    assert {"nixcell.sandbox.direct", "nixcell.sandbox.cgroups"} <= loaded
    never = set(WARM_PATH_NEVER) - {"pathlib", "collections"} | {"signal"}
    assert sorted(loaded & never) == []
