"""``nixcell run --debug`` (issue 10 part 7): real cells under the host's real strace, through
the real CLI; the summary's parser is unit-tested on a real trace in tests/unit/test_debugtrace.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli

pytestmark = pytest.mark.usefixtures("offline_set")

HEADER = re.compile(r"^Sandbox access failures \((\d+)(\+?) unique, (\d+) total\):$", re.M)
NOTHING = (
    "Sandbox access failures: none (no file or network access failed, the proxy denied nothing)\n"
)


def debug_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return cli("run", "--debug", *args, env=env)


def split(stderr: bytes) -> tuple[str, tuple[int, bool, int], list[list[str]], list[str]]:
    """(the cell's own stderr, (unique, cut, total), table rows, lines after the table)."""
    text = stderr.decode()
    found = HEADER.search(text)
    assert found, text
    rows, rest = [], []
    for line in text[found.end() :].strip("\n").splitlines():
        parts = line.split(None, 3)
        if not rest and len(parts) == 4 and parts[0].isdigit():
            rows.append(parts)
        else:
            rest.append(line)
    head = (int(found.group(1)), bool(found.group(2)), int(found.group(3)))
    return text[: found.start()], head, rows, rest


@pytest.fixture
def shared_dir():
    """A directory the cell's own uid may write through a bind (tmp_path is under a 0700 dir),
    removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="nixcell-debug-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_missing_and_forbidden_paths_counted_after_the_cells_output(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        "for i in 1 2 3; do cat /home/cell/.config/foo.json; done; touch /etc/forbidden; "
        "touch /data/new; echo out; echo err >&2; exit 7"
    )
    result = debug_run(
        "-p", "bash", "-p", "coreutils", "--ro-bind", f"{ro}:/data", "--", "bash", "-c", script
    )
    assert result.returncode == 7, result  # the cell's exit code, unchanged
    assert result.stdout == b"out\n"
    own, (unique, cut, total), rows, rest = split(result.stderr)
    assert own.endswith("err\n") and "cat: /home/cell/.config/foo.json" in own  # the cell first
    assert ["3", "ENOENT", "openat", "/home/cell/.config/foo.json"] in rows, rows
    assert ["1", "EROFS", "openat", "/etc/forbidden"] in rows, rows  # the cell's / is read-only
    assert ["1", "EROFS", "openat", "/data/new"] in rows, rows  # a read-only bind
    assert unique == len(rows) and not cut and total == sum(int(r[0]) for r in rows) and not rest
    for noise in ("/proc", "/sys", "/dev", "/nix/store", "/usr/lib/locale", "/etc/ld.so"):
        assert not any(r[3].startswith(noise) for r in rows), (noise, rows)
    assert not (ro / "new").exists()


def test_denied_host_through_a_policy_joins_the_summary(plain, tmp_path):
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[rules]]\naction = "allow"\nport = {plain.port}\n[rules.pattern]\nhost = "up.test"\n'
    )
    result = debug_run(
        "-p", "curl", "--policy", str(policy), "--allow-cidr=127.0.0.1/32",
        "--resolve=up.test:127.0.0.1", "--resolve=other.test:127.0.0.1", "--",
        "curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} ",
        plain.url("/ok"), plain.url("/x", host="other.test"),
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == b"200 403 ", result
    assert [s.path for s in plain.seen][-1:] == ["/ok"]
    err = result.stderr.decode()
    network = f"Network: 1 request denied by the proxy: GET other.test:{plain.port}/x (no rule)"
    assert err.splitlines()[-1] == network, err
    assert "nixcell: 1 request denied" not in err  # said once, in the block


def test_a_limited_cell_is_traced_inside_its_cgroup():
    """With limits the cell starts through the cgroup-joining shell (then nsenter, then bwrap):
    strace still attaches to bwrap's pid-1, and none of the launchers' calls are counted."""
    result = debug_run("--pids", "64", "--memory", "256M", "-p", "bash", "-p", "coreutils",
                       "--", "bash", "-c", "cat /nope; exit 2")  # fmt: skip
    assert result.returncode == 2, result
    _, _, rows, _ = split(result.stderr)
    assert rows == [["1", "ENOENT", "openat", "/nope"]], rows


def test_nothing_to_report_is_one_line_every_time():
    for _ in range(2):  # the second run would be the warm path's: --debug never takes it
        result = debug_run("-p", "coreutils", "--", "true")
        assert result.returncode == 0 and result.stderr.decode() == NOTHING, result


def test_exit_codes_and_signals_are_the_cells():
    assert debug_run("-p", "bash", "--", "bash", "-c", "exit 42").returncode == 42
    killed = debug_run("-p", "bash", "--", "bash", "-c", "kill -TERM $$")
    assert killed.returncode == 143 and killed.stderr.decode().endswith(NOTHING), killed


def _path_without_strace(farm: Path) -> str:
    """$PATH's programs, each linked into ``farm``, except strace."""
    farm.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = farm / name
            if name != "strace" and not os.path.lexists(target):
                target.symlink_to(os.path.join(directory, name))
    return str(farm)


def test_without_strace_on_path_nothing_runs(tmp_path, shared_dir):
    out = shared_dir
    args = ("-p", "coreutils", "--bind", f"{out}:/out", "--", "touch", "/out/ran")
    refused = debug_run(*args, env={"PATH": _path_without_strace(tmp_path / "bin")})
    err = refused.stderr.decode()
    assert refused.returncode != 0 and err.count("\n") == 1, refused
    assert err.startswith("nixcell: --debug needs strace") and "Traceback" not in err
    assert not (out / "ran").exists()  # refused before anything ran
    ran = debug_run(*args)  # the same run with strace on PATH: the test can fail
    assert ran.returncode == 0 and (out / "ran").exists(), ran


def test_doctor_says_whether_debug_can_run(tmp_path):
    found = cli("doctor", env={"COLUMNS": "200"})
    assert re.search(rb"ok +strace \(--debug\) +strace -- version 6\.", found.stdout), found
    missing = cli("doctor", env={"COLUMNS": "200", "PATH": _path_without_strace(tmp_path / "b")})
    assert missing.returncode == 0, missing  # optional: only --debug needs it
    assert re.search(rb"warn +strace \(--debug\) +not found on PATH", missing.stdout), missing


def test_the_plan_is_the_same_with_debug(tmp_path):
    """--debug changes how the cell is watched, never the cell: the planned cell is the same
    (and planning it needs no strace)."""
    args = ("--dry-run", "--json", "-p", "bash", "--", "bash", "-c", "true")
    plain = cli("run", *args)
    traced = cli("run", "--debug", *args, env={"PATH": _path_without_strace(tmp_path / "bin")})
    assert plain.returncode == traced.returncode == 0, (plain, traced)
    assert json.loads(plain.stdout) == json.loads(traced.stdout)


def test_hostile_file_names_never_reach_the_terminal():
    name = r"$'/tmp/\e]0;pwned\a\e[2J\n\xff\u202eend'"
    result = debug_run("-p", "bash", "-p", "coreutils", "--", "bash", "-c", f"cat {name} 2>&-")
    assert result.returncode == 1, result
    err = result.stderr
    for raw in (b"\x1b", b"\x07", b"\xff", "\u202e".encode()):
        assert raw not in err, (raw, err)
    _, _, rows, _ = split(err)
    assert ["1", "ENOENT", "openat", r"/tmp/\x1b]0;pwned\x07\x1b[2J\n\xff\u202eend"] in rows
    assert all(line.isprintable() for line in err.decode().splitlines())


def test_a_flood_of_failures_is_bounded_and_said():
    code = "for i in range(30000):\n    try: open(f'/nope/{i}')\n    except OSError: pass"
    result = debug_run("-p", "python3", "--", "python3", "-c", code)
    assert result.returncode == 0, result
    _, (unique, cut, total), rows, rest = split(result.stderr)
    assert unique == 10000 and cut and total >= 30000, (unique, cut, total)
    assert len(rows) == 20 and all(r[0] == "1" for r in rows)
    assert rest[0].startswith("  ... and ") and "beyond the first 10000" in rest[1], rest


def _find(marker: str) -> int | None:
    """The cell's ``sleep MARKER`` (not nixcell's or bwrap's argv, which name it too)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[:2] == [b"sleep", marker.encode()]:
            return int(pid)
    return None


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _tracers() -> set[int]:
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"strace" and b"trace=%file,%network" in argv:
            found.add(int(pid))
    return found


def test_cell_keeps_its_uids_under_strace_and_ctrl_c_ends_both():
    marker = f"3600.{os.getpid()}{time.monotonic_ns() % 10**6}"
    proc = subprocess.Popen(
        [NIXCELL, "run", "--debug", "-p", "coreutils", "--", "sleep", marker],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        pid = None
        while pid is None or _status(pid).get("TracerPid", "0") == "0":
            assert time.monotonic() < deadline and proc.poll() is None, "the cell did not start"
            time.sleep(0.05)
            pid = _find(marker)
        status = _status(pid)
        tracer = int(status["TracerPid"])
        assert Path(f"/proc/{tracer}/comm").read_text().strip() == "strace"
        assert Path(f"/proc/{tracer}/cmdline").read_bytes().split(b"\0")[0] == b"strace"
        uids, gids = status["Uid"].split(), status["Gid"].split()
        assert "0" not in uids and "0" not in gids, status  # never host root, strace or not
        assert len(set(uids)) == 1 and int(status["CapEff"], 16) == 0, status
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, proc.stderr.read()
    assert _find(marker) is None and not os.path.exists(f"/proc/{tracer}")


def test_timeout_kills_the_cell_and_strace():
    before = _tracers()
    marker = f"3601.{os.getpid()}{time.monotonic_ns() % 10**6}"
    script = f"sleep {marker} & sleep {marker}"
    result = debug_run(
        "--timeout", "2s", "-p", "bash", "-p", "coreutils", "--", "bash", "-c", script
    )
    assert result.returncode == 124, result
    assert result.stderr.decode() == "nixcell: timed out after 2s\n" + NOTHING, result
    assert _find(marker) is None
    assert not (_tracers() - before)


def test_interactive_shell_under_a_pty_is_traced():
    """A terminal run (the cell's own PTY, as ``nixcell shell`` makes): the same trace."""
    import pexpect

    child = pexpect.spawn(
        NIXCELL, ["run", "--debug", "-p", "bash", "-p", "coreutils", "--", "bash", "--norc", "-i"],
        encoding="utf-8", timeout=60,
    )  # fmt: skip
    child.expect(r"bash-[0-9.]+\$ ")
    child.sendline("cat /home/cell/.netrc; tty; exit 3")
    child.expect(r"/dev/console\r\n")  # the cell's own terminal
    child.expect(r"Sandbox access failures \(\d+ unique, \d+ total\):\r\n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3
    assert re.search(r"^ +1  ENOENT  openat +/home/cell/\.netrc\r$", child.before, re.M)


def test_ordinary_user_gets_the_same_summary(user_home):
    from tests.integration.test_ordinary_user import as_nobody

    result = as_nobody(
        user_home, "run", "--debug", "-p", "bash", "--", "bash", "-c", "echo x >/etc/y; exit 5"
    )
    assert result.returncode == 5, result
    _, _, rows, _ = split(result.stderr)
    assert ["1", "EROFS", "openat", "/etc/y"] in rows, rows
