"""Outside review of issue 9's new surfaces: each attack that worked, as a test.

Flakes of NIX_SANDBOX_ENVS (evaluated on the host, their output seen by cells), the relay of a
cell's own pty (a host reader that went away, a cell that holds the terminal).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from tests.conftest import NIXCELL

from nixcell.mcp.config import ConfigError

SECRET = "review-e9-secret-value-0123456789"

# Each output shows, in nix's error, what the flake's evaluation could read of the host: the
# server's environment (a credential source, env = "..."), a host file, the host's system.
FLAKE = """{
  outputs = { self }: {
    env = throw "env=[${builtins.getEnv "REVIEW_E9_SECRET"}]";
    file = throw "file=[${builtins.readFile HOSTFILE}]";
  };
}
"""


@pytest.fixture
def flake(tmp_path):
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(SECRET)
    directory = tmp_path / "flake"
    directory.mkdir()
    (directory / "flake.nix").write_text(FLAKE.replace("HOSTFILE", f'"{host_file}"'))
    return directory


def _build_error(ref: str, cwd, impure: bool = False) -> str:
    from nixcell.mcp import flakebuild

    roots = cwd / "roots"
    roots.mkdir(exist_ok=True)
    with pytest.raises(ConfigError) as info:
        flakebuild.build(ref, str(cwd), roots, impure)
    return f"{info.value} {getattr(info.value, 'detail', '')}"


@pytest.mark.parametrize("attr", ["env", "file"])
def test_a_flake_cannot_read_the_servers_environment_or_host_files(
    flake, tmp_path, monkeypatch, attr
):
    """nix-sandbox-mcp built NIX_SANDBOX_ENVS with a pure `nix build`; the drop-in added
    --impure, so a flake (github:someone/envs) could put the server's credentials (env) or any
    file it can read into the artifact every cell of that environment mounts."""
    monkeypatch.setenv("REVIEW_E9_SECRET", SECRET)
    error = _build_error(f"path:{flake}#{attr}", tmp_path)
    assert SECRET not in error, error
    if attr == "env":
        assert "env=[]" in error, error  # pure: getEnv gives nothing
    else:
        assert "forbidden in pure" in error or "pure evaluation" in error, error


def test_impure_flakes_opted_into_still_see_none_of_the_servers_variables(
    flake, tmp_path, monkeypatch
):
    monkeypatch.setenv("REVIEW_E9_SECRET", SECRET)
    monkeypatch.setenv("NIX_CONFIG", f"access-tokens = github.com={SECRET}")
    error = _build_error(f"path:{flake}#env", tmp_path, impure=True)
    assert SECRET not in error and "env=[]" in error, error


def test_impure_env_keeps_only_nix_settings_and_basics():
    from nixcell.mcp.flakebuild import impure_env

    environ = {
        "PATH": "/bin",
        "HOME": "/root",
        "NIX_REMOTE": "daemon",
        "XDG_CACHE_HOME": "/c",
        "NIX_CONFIG": "access-tokens = x",
        "GITHUB_TOKEN": "ghp_x",
        "ANTHROPIC_API_KEY": "sk-ant-x",
        "nix_lower": "x",
        "PATHX": "x",
    }
    assert impure_env(environ) == {
        "PATH": "/bin",
        "HOME": "/root",
        "NIX_REMOTE": "daemon",
        "XDG_CACHE_HOME": "/c",
    }


# -- the relay of a cell's pty ----------------------------------------------------------------


def test_a_pty_cell_whose_reader_went_away_ends(offline_set):
    """`nixcell run -i -- yes | head -1`: without -i the cell gets SIGPIPE and ends (141); with
    a pty, nixcell dropped the output of a reader that was gone and relayed forever."""
    pipeline = f"'{NIXCELL}' run -i -p coreutils -- yes 2>/dev/null | head -1 >/dev/null"
    proc = subprocess.run(
        ["bash", "-c", pipeline + "; echo ${PIPESTATUS[0]}"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    code = int(proc.stdout.split()[-1])
    assert code == 128 + 1, proc  # the pty hung up: SIGHUP, as when a terminal goes away


def _alive(marker: str) -> bool:
    return subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0


def test_a_stalled_reader_does_not_stop_the_timeout(offline_set):
    """`nixcell run -i --timeout 2s -- … | reader-that-never-reads`: nixcell blocked in its
    write to the host and never got to kill the cell; without -i the timeout holds."""
    marker = "^sleep 4343$"  # the cell's own sleep (the command lines above spell it apart)
    pipeline = (
        f"'{NIXCELL}' run -i --timeout 2s -p coreutils -p bash -- "
        "bash -c 'yes & exec sleep $((4000 + 343))' 2>/dev/null </dev/null | sleep 300"
    )
    outer = subprocess.Popen(["bash", "-c", pipeline], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _alive(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _alive(marker), "the cell did not start"
        deadline = time.monotonic() + 60
        while _alive(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert outer.poll() is None  # the reader still reads nothing
        assert not _alive(marker), "the cell outlived its --timeout"
    finally:
        os.killpg(outer.pid, 9)
        outer.wait()


@pytest.mark.parametrize(
    "script",
    [
        "echo ready; kill -STOP $$",  # stopped: Ctrl-C stays pending, nobody continues it
        "stty -isig; trap '' INT TERM HUP QUIT; echo ready; while :; do sleep 1; done",
    ],
    ids=["stopped", "no-signal-keys"],
)
def test_the_user_can_always_get_the_terminal_back(offline_set, script):
    """A cell holding its pty (Ctrl-C is a byte for it) kept the user's terminal until killed
    from another one; ssh's `~.` at the start of a line ends it, the modes come back."""
    from tests.integration.test_terminal import Outer

    outer = Outer("run", "-p", "bash", "-p", "coreutils", "--", "bash", "-c", script)
    outer.child.expect("ready")
    time.sleep(0.5)
    outer.child.sendcontrol("c")
    outer.child.send("\r~.")
    outer.child.expect(r"nixcell: the cell was ended \(~\. typed\)\r\n")
    assert outer.finish() == 137


# -- shell completion ---------------------------------------------------------------------------

HOSTILE = "import os\nopen(os.environ['REVIEW_E9_MARKER'], 'w').write('ran')\n"


def test_completion_runs_nothing_of_the_current_directory(tmp_path):
    """TAB in a cloned repository: the background evaluation was `python -m` in the shell's
    directory, whose json.py (or nixcell/) came first on sys.path and ran as the user."""
    from tests.integration.test_completion import complete, shell_env

    nixpkgs, repo, marker = tmp_path / "nixpkgs", tmp_path / "repo", tmp_path / "marker"
    nixpkgs.mkdir()
    (nixpkgs / "default.nix").write_text("{ ... }: { ripgrep = 1; }\n")
    (repo / "nixcell" / "cli").mkdir(parents=True)
    for name in ("json.py", "re.py", "hashlib.py", "nixcell/__init__.py"):
        (repo / name).write_text(HOSTILE)
    home = tmp_path / "nixcell-home"
    env = shell_env(
        tmp_path,
        NIX_PATH=f"nixpkgs={nixpkgs}",
        NIXCELL_HOME=str(home),
        REVIEW_E9_MARKER=str(marker),
    )
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        assert complete("bash", "nixcell run -p rip", env) == []
    finally:
        os.chdir(cwd)
    cache_dir = home / "cache" / "completion"
    deadline = time.monotonic() + 120
    while not list(cache_dir.glob("nixpkgs-*.txt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not marker.exists(), "a file of the current directory ran"
    assert list(cache_dir.glob("nixpkgs-*.txt")), "the evaluation itself still works"


# -- the tty layer's kernel surface ---------------------------------------------------------------

LDISC = r"""
import fcntl, os, struct, sys
master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
fcntl.ioctl(master, 0x40045431, struct.pack("i", 0))  # TIOCSPTLCK: unlock
n = struct.unpack("I", fcntl.ioctl(master, 0x80045430, bytes(4)))[0]  # TIOCGPTN
own = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
for name, fd in (("stdin", 0), ("master", master), ("own", own)):
    if not os.isatty(fd):
        print(name, "not-a-tty")
        continue
    for ldisc in (0, 13, 21):  # N_TTY, N_HDLC, N_GSM
        try:
            fcntl.ioctl(fd, 0x5423, struct.pack("i", ldisc))  # TIOCSETD
            print(name, ldisc, "set")
        except OSError as exc:
            print(name, ldisc, "errno", exc.errno)
"""


@pytest.mark.parametrize("flags", [(), ("-i",)], ids=["pipes", "own-pty"])
def test_no_line_discipline_can_be_set(offline_set, flags):
    """TIOCSETD on the cell's pty or one it opens: refused by seccomp (EPERM), whatever the
    discipline: with dev.tty.ldisc_autoload=1 it would load n_hdlc or n_gsm for the cell."""
    import re

    from tests.conftest import cli

    result = cli("run", *flags, "-p", "python3", "--", "python3", "-c", LDISC, input=b"")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().replace("\r", "").split("\n")
    tried = [ln for ln in lines if re.match(r"(stdin|master|own) \d+ ", ln)]
    assert len(tried) == (9 if flags else 6), lines
    assert all(ln.endswith("errno 1") for ln in tried), lines


# -- no descriptor of any process in the cell is the host's terminal -----------------------------

ALL_FDS = r"""
import os
seen = set()
for pid in (p for p in os.listdir("/proc") if p.isdigit()):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        continue
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if st.st_rdev:
            seen.add(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
print("rdevs=" + ",".join(sorted(seen)) + "=end")
"""


@pytest.mark.parametrize("flags", [(), ("-T",), ("-i",)], ids=["auto", "-T", "-i"])
@pytest.mark.parametrize("stdin", ["terminal", "piped"])
def test_no_process_of_the_cell_holds_the_host_terminal(offline_set, flags, stdin):
    """Every descriptor of every process in the cell (bwrap's pid 1 included), in every mode:
    none is the outer terminal (its major:minor)."""
    import pexpect

    inner = " ".join(f"'{a}'" for a in [NIXCELL, "run", *flags, "-p", "python3", "--", "python3"])
    feed = "echo | " if stdin == "piped" else ""
    script = f"stat -L -c 'outer=%t:%T' /proc/self/fd/0; {feed}{inner} -c \"$PROBE\""
    env = {**os.environ, "TERM": "xterm", "PROBE": ALL_FDS}
    child = pexpect.spawn("/bin/sh", ["-c", script], env=env, encoding="utf-8", timeout=60)
    child.expect(r"outer=([0-9a-f]+):([0-9a-f]+)")
    outer = f"{int(child.match.group(1), 16)}:{int(child.match.group(2), 16)}"
    child.expect(r"rdevs=(.*)=end")
    rdevs = child.match.group(1).split(",")
    child.expect(pexpect.EOF)
    assert outer not in rdevs, rdevs
