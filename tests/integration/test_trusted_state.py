"""Trusted state, leftovers of killed runs, host-side outputs and early errors — end to end.

Through the real `nixcell` console script and real cells: caches tampered with the way an
attacker with write access to them would (allow-all / garbage seccomp programs, a resolution
that lists host /etc, a plan binding host /etc), `kill -9` leftovers, planted links at output
names and in a workspace a real cell wrote, and the numeric limits / early errors table.
"""

from __future__ import annotations

import json
import marshal
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli

from nixcell.sandbox.reap import reap_orphans
from nixcell.sealed import MAGIC

SETUID = ["bash", "-c", "touch /tmp/f && chmod u+s /tmp/f && echo SETUID-WORKED"]
ALLOW_ALL = struct.pack("<HBBI", 0x06, 0, 0, 0x7FFF0000)


def one_line_error(result) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err and "bwrap:" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("nixcell: ") and "WARNING" not in ln]
    assert lines and lines[-1] == err.splitlines()[-1], err
    return lines[-1]


@pytest.fixture
def home(tmp_path, offline_set):
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    for _ in range(2):  # cold, then the plan is cached
        assert cli("run", "-p", "bash", "-p", "coreutils", "--", *SETUID, env=env).returncode != 0
    return tmp_path / "home", env


def _entries(home: Path, kind: str) -> list[Path]:
    return sorted((home / "cache" / kind).iterdir())


TAMPER = {
    "allow-all seccomp program": ("seccomp", lambda p: p.write_bytes(ALLOW_ALL)),
    "garbage seccomp program": ("seccomp", lambda p: p.write_bytes(os.urandom(77))),
    "seccomp entry of another profile": (
        "seccomp",
        lambda p: p.write_bytes(p.read_bytes()[:-8] + ALLOW_ALL),
    ),
    "empty plan": ("plans", lambda p: p.write_bytes(b"")),
}


@pytest.mark.parametrize("case", list(TAMPER), ids=list(TAMPER))
def test_tampered_cache_entries_are_rebuilt_never_trusted(home, case):
    root, env = home
    kind, tamper = TAMPER[case]
    for entry in _entries(root, kind):
        tamper(entry)
    result = cli("run", "-p", "bash", "-p", "coreutils", "--", *SETUID, env=env)
    assert b"SETUID-WORKED" not in result.stdout  # the real filter ran
    assert b"Operation not permitted" in result.stderr, result.stderr
    assert b"Invalid seccomp" not in result.stderr
    for entry in _entries(root, kind):  # rebuilt and sealed again
        assert entry.read_bytes().startswith(MAGIC)
    again = cli("run", "-p", "bash", "-p", "coreutils", "--", "true", env=env)
    assert again.returncode == 0 and b"warning" not in again.stderr.lower()


def _unsealed(path: Path) -> dict:
    return json.loads(path.read_bytes()[len(MAGIC) + 32 :])


def test_a_forged_plan_binding_host_etc_is_not_used(home):
    root, env = home
    for entry in _entries(root, "plans"):
        record = marshal.loads(entry.read_bytes()[len(MAGIC) + 32 :])
        bind = {"kind": "ro-bind", "dest": "/hostetc", "src": "/etc"}
        record["plan"]["mounts"] = (*record["plan"]["mounts"], bind)
        record["args"] = [*record["args"], "--ro-bind", "/etc", "/hostetc"]
        entry.write_bytes(marshal.dumps(record))  # a valid plan, but not sealed by nixcell
    result = cli("run", "-p", "bash", "-p", "coreutils", "--", "ls", "/hostetc", env=env)
    assert result.returncode != 0 and b"passwd" not in result.stdout
    assert b"not sealed" in result.stderr


def test_a_forged_resolution_listing_host_etc_is_not_mounted(home):
    root, env = home
    for entry in _entries(root, "plans"):
        entry.unlink()  # take the resolution path
    for entry in _entries(root, "resolve"):
        closure = _unsealed(entry)
        closure["paths"].append("/etc")
        entry.write_text(json.dumps(closure))
    result = cli("run", "-p", "bash", "-p", "coreutils", "--", "ls", "/etc", env=env)
    assert b"shadow" not in result.stdout and b"hostname" in result.stdout
    assert b"not sealed" in result.stderr
    for entry in _entries(root, "resolve"):
        assert "/etc" not in _unsealed(entry)["paths"]


def test_an_unsafe_cache_dir_means_running_uncached(home):
    root, env = home
    (root / "cache" / "plans").chmod(0o777)
    result = cli("run", "-p", "bash", "--", "echo", "ok", env=env)
    assert result.returncode == 0 and result.stdout == b"ok\n"
    assert b"writable by others" in result.stderr


def test_an_unsafe_state_dir_is_refused_with_one_line(home):
    root, env = home
    (root / "state").chmod(0o777)
    one_line_error(cli("run", "-p", "bash", "--", "true", env=env))


def test_gc_clears_every_cache_and_voids_old_entries(home):
    root, env = home
    old_key = (root / "state" / "cache.key").read_bytes()
    kept = _entries(root, "plans")[0].read_bytes()
    other = root / "cache" / "some-backend-kind"  # a kind gc has no list of (microvm, runsc)
    other.mkdir(mode=0o700)
    (other / "entry").write_bytes(kept)
    result = cli("gc", env=env)
    assert result.returncode == 0, result.stderr
    assert os.listdir(root / "cache") == []  # every cache, known kinds or not
    assert cli("run", "-p", "bash", "--", "true", env=env).returncode == 0
    assert (root / "state" / "cache.key").read_bytes() != old_key
    # an entry saved before gc does not verify under the new key
    plans = root / "cache" / "plans"
    for entry in plans.iterdir():
        entry.write_bytes(kept)
    assert b"not sealed" in cli("run", "-p", "bash", "--", "true", env=env).stderr


# -- leftovers of killed runs -----------------------------------------------------------------


def _cell_cgroups(pid: int) -> list[Path]:
    found = []
    for base in Path("/sys/fs/cgroup").iterdir():
        found += base.glob(f"**/nixcell*/{pid}-*")
        found += base.glob(f"**/nixcell-{pid}-*")
    return found


def test_kill_9_leftovers_are_swept_by_the_next_start(offline_set, tmp_path):
    env = {**os.environ, "NIXCELL_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}
    cmd = [NIXCELL, "run", "-p", "coreutils", "--memory", "64M", "--pids", "50", "--"]
    proc = subprocess.Popen([*cmd, "sleep", "60"], env=env)
    try:
        for _ in range(300):
            if _cell_cgroups(proc.pid):
                break
            time.sleep(0.1)
        assert _cell_cgroups(proc.pid), "the cell never got its cgroup"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert _cell_cgroups(proc.pid)  # kill -9 skipped every finally
    reap_orphans()  # we are a subreaper (conftest): do init's job for the killed run's bwrap
    result = subprocess.run([*cmd[:4], "--", "true"], env=env, capture_output=True)
    assert result.returncode == 0, result.stderr
    assert not _cell_cgroups(proc.pid)
    assert not [p for p in Path("/proc").glob("[0-9]*") if _is_child_of_dead(p, proc.pid)]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _is_child_of_dead(proc_dir: Path, pid: int) -> bool:
    try:
        status = (proc_dir / "status").read_text()
    except OSError:
        return False
    return f"PPid:\t{pid}\n" in status


# -- host-side operations on paths the cell controls --------------------------------------------


def test_removing_a_workspace_a_real_cell_planted(cell, tmp_path):
    """What the leftover sweep and gc do to a directory a cell wrote (old-style session
    workspaces, killed runs): never through what the cell planted."""
    from nixcell.fsio import remove_tree as _remove_tree

    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    for d in (victim, victim / "inner"):
        d.chmod(0o755)
    (victim / "file").write_text("host")
    work = tmp_path / "ws"
    work.mkdir()
    script = (
        f"ln -s {victim} link && ln -s {victim}/inner deep && mkdir -p a/b && "
        f"ln -s {victim} a/b/up && mkfifo fifo && chmod 0 a/b && chmod 500 a && "
        f"ln -s {victim}/file flink"
    )
    result = cell(script, workdir=str(work), cwd="/workspace")
    assert result.exit_code == 0, result.stderr
    _remove_tree(str(work))
    assert not work.exists()
    assert stat_mode(victim) == 0o755 and stat_mode(victim / "inner") == 0o755
    assert (victim / "file").read_text() == "host"


def test_audit_file_planted_as_a_symlink_is_refused(offline_set, tmp_path):
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0\n")
    audit = tmp_path / "audit.jsonl"
    os.symlink(target, audit)
    result = cli("run", "-p", "bash", "--allow-host", "x.test", "--audit", str(audit), "--", "true")
    assert "symbolic link" in one_line_error(result)
    assert target.read_text() == "root:x:0:0\n"
    os.unlink(audit)
    os.link(target, audit)
    assert "hard links" in one_line_error(
        cli("run", "-p", "bash", "--allow-host", "x.test", "--audit", str(audit), "--", "true")
    )
    assert target.read_text() == "root:x:0:0\n"


def test_learn_output_replaces_a_planted_link_instead_of_writing_through_it(cell, tmp_path):
    work = tmp_path / "ws"
    work.mkdir()
    target = tmp_path / "victim.toml"
    target.write_text("keep")
    out = work / "learned.toml"
    # the cell itself plants the link, during the run, in the directory that gets the output
    plant = f"ln -s {target} /workspace/learned.toml"
    result = cli(
        "run", "-p", "bash", "-p", "coreutils", "--workdir", str(work), "--learn",
        "--learn-output", str(out), "--", "bash", "-c", plant,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "keep"
    assert not out.is_symlink() and "Written by nixcell --learn" in out.read_text()


# -- numeric limits and early errors, over the CLI ----------------------------------------------

EARLY = [
    (["--memory", "16777216T"], "--memory"),
    (["--memory", "1M"], "--memory"),
    (["--memory", "12X"], "--memory"),
    (["--disk", "0"], "--disk"),
    (["--disk", "99999999999T"], "--disk"),
    (["--timeout", "1e300"], "--timeout"),
    (["--timeout", "0"], "--timeout"),
    (["--timeout", "30x"], "--timeout"),
    (["--cpus", "nan"], "--cpus"),
    (["--cpus", "inf"], "--cpus"),
    (["--cpus", "1e400"], "--cpus"),
    (["--cpus", "-1"], "--cpus"),
    (["--pids", "1"], "--pids"),
    (["--pids", "0"], "--pids"),
    (["--pids", str(2**63)], "--pids"),
    (["--cwd", "/does/not/exist"], "--cwd"),
    (["--cwd", "/etc/passwd"], "--cwd"),
]


@pytest.mark.parametrize(("flags", "word"), EARLY, ids=[" ".join(f) for f, _ in EARLY])
def test_bad_limits_and_cwd_get_nixcell_errors_with_exit_2(offline_set, flags, word):
    for _ in range(2):  # the second time would take the fast path if anything was cached
        result = cli("run", "-p", "bash", *flags, "--", "true")
        assert result.returncode == 2, result.stderr
        assert word in one_line_error(result)


def test_commands_that_do_not_exist_in_the_cell(offline_set, tmp_path):
    work = tmp_path / "w"
    (work / "real").mkdir(parents=True)
    os.symlink("/nonexistent", work / "dangling")
    os.symlink("/etc", work / "etclink")  # in the cell: the cell's own /etc
    cases = [
        (["--", ""], 2, "command"),
        (["-e", "PATH=/nonexistent", "--", "true"], 127, "PATH"),
        (["-e", "PATH=/tmp:/workspace", "--", "bash"], 127, "PATH"),
        (["--", "./nothing-here"], 127, "does not exist"),
        (["--", "/usr/bin/true"], 127, "does not exist"),
        (["--workdir", str(work), "--cwd", "/workspace/dangling", "--", "true"], 2, "--cwd"),
        (["--workdir", str(work), "--cwd", "/workspace/nope", "--", "true"], 2, "--cwd"),
    ]
    for flags, code, word in cases:
        for _ in range(2):
            result = cli("run", "-p", "bash", "-p", "coreutils", *flags)
            assert result.returncode == code, (flags, result.stderr)
            assert word in one_line_error(result), flags
    ok = [
        ["--pids", "2", "--", "true"],
        ["--workdir", str(work), "--cwd", "/workspace/real", "--", "true"],
        ["--workdir", str(work), "--cwd", "/workspace/etclink", "--", "test", "-e", "hostname"],
        ["-e", "PATH=/bin:/nix/store", "--", "/bin/sh", "-c", "true"],
    ]
    for flags in ok:
        result = cli("run", "-p", "bash", "-p", "coreutils", *flags)
        assert result.returncode == 0, (flags, result.stderr)


def test_a_cell_cannot_be_given_write_access_to_nixcell_state(offline_set, tmp_path):
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    result = cli("run", "-p", "bash", "--workdir", str(tmp_path), "--", "true", env=env)
    assert result.returncode == 2
    assert "nixcell's own state" in one_line_error(result)
    hidden = cli(
        "run", "-p", "bash", "-p", "coreutils", "--workdir", str(tmp_path),
        "--hide", str(tmp_path / "home"), "--", "bash", "-c",
        "ls /workspace/home/state; echo > /workspace/home/state/cache.key; echo ran",
        env=env,
    )  # fmt: skip
    assert hidden.stdout == b"ran\n", hidden.stderr  # ran, but could neither see nor write it
    assert b"cache.key" not in hidden.stdout and b"denied" in hidden.stderr


def test_a_real_session_teardown_never_follows_what_its_cell_planted(offline_set, tmp_path):
    """A bash session plants links to a host directory, then locks its own directories; its
    workspace is a volume (no host directory is ever made for it), and the manager's shutdown
    leaves the host directory as it was."""
    from tests.integration.test_mcp_sessions import SH, with_manager

    victim = tmp_path / "victim"
    (victim / "inner").mkdir(parents=True)
    for d in (victim, victim / "inner"):
        d.chmod(0o755)
    (victim / "file").write_text("host")
    root = tmp_path / "workspaces"
    root.mkdir()
    plant = (
        f"cd /workspace && ln -s {victim} link && mkdir -p a/b && ln -s {victim}/inner a/b/in "
        f"&& ln -s {victim}/file f && mkfifo p && chmod 0 a/b && chmod 500 a && echo planted"
    )

    async def body(manager):
        result = await manager.call("s", SH, plant, 30)
        assert result.stdout.strip() == "planted", result
        assert list(root.iterdir()) == []  # the workspace lives in the session's namespaces

    with_manager(body, workspace_root=str(root))
    assert list(root.iterdir()) == []
    assert stat_mode(victim) == 0o755 and stat_mode(victim / "inner") == 0o755
    assert (victim / "file").read_text() == "host"


@pytest.mark.parametrize("flag", ["--workdir", "--bind", "--ro-bind"])
@pytest.mark.parametrize("where", ["last", "middle"])
def test_a_bind_source_through_a_planted_symlink_is_refused(offline_set, tmp_path, flag, where):
    """A cell given ./work earlier could have left ./work/data -> /etc (or ./work/sub -> /etc
    with the user then binding ./work/sub/x): bwrap would follow it. Refused, in one line."""
    victim = tmp_path / "victim"
    (victim / "x").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(victim, work / "data")
    source = work / "data" if where == "last" else work / "data" / "x"
    args = [flag, str(source)] if flag == "--workdir" else [flag, f"{source}:/mnt/x"]
    result = cli("run", "-p", "bash", *args, "--", "true")
    assert result.returncode == 2, result.stderr
    message = one_line_error(result)
    assert "is a symbolic link" in message and str(victim) in message
    real = cli("run", "-p", "bash", flag, str(victim if where == "last" else victim / "x")
               + ("" if flag == "--workdir" else ":/mnt/x"), "--", "true")  # fmt: skip
    assert real.returncode == 0, real.stderr


def test_a_bind_source_swapped_for_a_symlink_after_planning_is_not_followed(offline_set, tmp_path):
    """The window between the check and the bind: a root-run cell's bind sources are opened by
    fd without following links, so a directory swapped for a link in between is refused."""
    if os.geteuid() != 0:
        pytest.skip("root-run cells bind through fds (idmapped clones)")
    from nixcell.errors import SandboxError
    from nixcell.runner import execute, prepare
    from nixcell.spec import CellSpec

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("host")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    spec = CellSpec(
        command=["bash", "-c", "echo pwned > /mnt/keep"],
        packages=["bash"],
        mounts=[{"source": str(work / "data"), "target": "/mnt", "writable": True}],
    )
    plan, _ = prepare(spec)
    (work / "data").rmdir()
    os.symlink(victim, work / "data")  # what a cell running alongside could do
    with pytest.raises(SandboxError, match="symlink"):
        execute(plan, capture_output=True)
    assert (victim / "keep").read_text() == "host"
