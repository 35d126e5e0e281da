"""Errors a user can act on, through the real `nixcell` CLI: one line, the right exit code, the
words that say what to do — and never a traceback, "internal error", pydantic or bwrap wording.

Each table is one class of input (a package name, a file-taking option, an output option, a
host/address flag); the rows come at it from several sides.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli

FORBIDDEN = ("Traceback", "internal error", "pydantic", "validation error", "bwrap:", "Input sh")


NOTE = "nixcell: no nixpkgs found on this host: using nixcell's offline package set"


def one_line(result: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The one error line (after the offline set's note, printed on a first resolution)."""
    err = "".join(ln for ln in result.stderr.decode().splitlines(True) if not ln.startswith(NOTE))
    assert result.returncode == code, (result.returncode, err)
    assert err.startswith("nixcell: ") and err.count("\n") == 1, err
    for word in FORBIDDEN:
        assert word not in err, err
    return err


# -- packages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (  # every missing name at once, where they are missing, how to get real nixpkgs
            ["-p", "ripgrep", "-p", "bash", "-p", "fd", "-p", "pyton3"],
            1,
            ["'ripgrep'", "'fd'", "'pyton3'", "offline package set", "this host", "--nixpkgs"],
        ),
        (["-p", "pyton3"], 1, ["unknown package 'pyton3'", "did you mean python3"]),
        (["-p", "ripgrep"], 1, ["unknown package 'ripgrep'", "--nixpkgs", "NIX_PATH"]),
        # a remote flake cannot be fetched with the offline set: said before nix tries the net
        (["-p", "nixpkgs#jq"], 2, ["nixpkgs#jq", "offline package set", "-p jq", "--nixpkgs"]),
        (["-p", "github:o/r#x", "-p", "nixpkgs#jq"], 2, ["github:o/r#x", "nixpkgs#jq"]),
        ([], 2, ["no packages", "-p coreutils", "echo is in coreutils"]),  # run -- echo
    ],
)
def test_packages_the_set_lacks(offline_set, args, code, needles):
    err = one_line(cli("run", *args, "--", "echo", "hi", timeout=120), code)
    for needle in needles:
        assert needle in err, err


def test_every_missing_name_of_a_local_flake_is_named(offline_set, tmp_path):
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    err = one_line(cli("run", "-p", f"{flake}#nope", "-p", "nosuchpkg", "--", "true"), 1)
    assert f"flake {flake} has no package 'nope'" in err
    assert "unknown package 'nosuchpkg'" in err


# -- flags naming fields of ours ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bind", "/tmp:/proc"], "--bind"),
        (["--ro-bind", "/tmp:relative"], "--ro-bind"),
        (["--pass-env", "1X"], "--pass-env"),
        (["-e", "1X=2"], "-e/--env"),
        (["--cwd", "relative"], "--cwd"),
        (["--memory", "1K"], "--memory"),
        (["--hardening-profile", "nope"], "nope"),
        (["--deny-host", "x.test"], "--allow-host"),  # a network needs something to allow
        (["--allow-cidr", "x"], "ADDRESS/BITS"),
        (["--allow-host", "a.test:99999"], "1-65535"),
        (["--json"], "--dry-run"),  # --json is for --dry-run only
        # an empty value (an unset shell variable) never quietly means "none"
        (["--audit", "", "--allow-host", "a.test"], "--audit needs a path"),
        (["--learn", "--learn-output", ""], "--learn-output needs a path"),
        (["--policy", ""], "--policy needs a path"),
        (["--allow-host", "a.test", "--upstream-ca", ""], "--upstream-ca needs a path"),
        (["--workdir", ""], "--workdir needs a path"),
    ],
)
def test_flag_errors_name_the_flag(offline_set, args, needle):
    err = one_line(cli("run", "-p", "bash", *args, "--", "true"), 2)
    assert needle in err
    for field in ("mounts", "pass_env", "allow_hosts", "hardening_profiles", "limits."):
        assert field not in err


@pytest.mark.parametrize(
    ("value", "needles"),
    [
        ("a.test:notip", ["'notip' is not an IP address"]),
        ("a.test:1.2.3.4:80", ["no port", "a.test:1.2.3.4"]),
        ("a.test:[::1]:443", ["no port", "a.test:[::1]"]),
        ("a.test:0x7f.1", ["not an IP address"]),
        ("a.test:fe80::1%eth0", ["not an IP address"]),
        ("notip", ["HOST:ADDR"]),
        (":127.0.0.1", ["HOST:ADDR"]),
        ("a..b:127.0.0.1", ["invalid host"]),
    ],
)
def test_resolve_values(offline_set, value, needles):
    args = ("run", "-p", "bash", "--allow-host", "a.test", "--resolve", value, "--", "true")
    err = one_line(cli(*args), 2)
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("host", ["notip", "[::1", "1.2.3.4.5", ""])
def test_mcp_listen_address_is_an_ip_literal(host):
    # checked before anything listens; names are never looked up (no DNS from tests either)
    err = one_line(cli("mcp", "--transport", "http", "--host", host, "--port", "0"), 2)
    assert "--host" in err and "not an IP address" in err


# -- file-taking options -----------------------------------------------------------------------


@pytest.fixture
def bad_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b"# caf\xe9\n")
    return {
        "/dev/zero": "is a device",
        str(fifo): "is a FIFO",
        str(big): "over the 1.0 MiB limit",
        str(tmp_path): "Is a directory",
        str(latin): "not valid UTF-8",
        str(tmp_path / "missing"): "No such file",
    }


FILE_OPTIONS = [
    (("run", "-p", "bash", "--policy", "{}", "--", "true"), 2),
    (("run", "-p", "bash", "--allow-host", "a.test", "--upstream-ca", "{}", "--", "true"), 1),
    (("policy", "check", "https://a.test/", "--policy", "{}"), 2),
    (("mcp", "--config", "{}"), 2),
]


@pytest.mark.parametrize(("argv", "code"), FILE_OPTIONS)
def test_file_options_refuse_what_is_not_a_small_regular_file(offline_set, bad_files, argv, code):
    for path, needle in bad_files.items():
        if "UTF-8" in needle and "--upstream-ca" in argv:
            needle = "not a PEM or DER certificate"
        args = [a.replace("{}", path) for a in argv]
        err = one_line(cli(*args, timeout=60, input=b""), code)  # a hang fails by timeout
        assert path in err and needle in err, (args, err)


def test_credential_file_that_is_a_fifo_is_one_line(offline_set, tmp_path, tls):
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    policy = tmp_path / "p.toml"
    policy.write_text(
        f'[[credentials]]\nname = "t"\nsource = "file:{fifo}"\nhosts = ["up.test"]\n'
        '[[rules]]\naction = "allow"\ncredential = "t"\n[rules.pattern]\nhost = "up.test"\n'
    )
    err = one_line(cli("run", "-p", "bash", "--policy", str(policy), "--", "true", timeout=60), 1)
    assert "credential 't'" in err and "is a FIFO" in err


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('name = "x"\nsorce = "env:X"\nhosts = ["a.test"]', "unknown key(s) 'sorce'"),
        ('name = "x"\nhosts = ["a.test"]', "source is required"),
        ('name = "bad name"\nsource = "env:X"\nhosts = ["a.test"]', "needs a name"),
        ('name = "x"\nsource = "vault:X"\nhosts = ["a.test"]', "'x'"),
    ],
)
def test_credentials_tables_are_checked_even_when_unused(offline_set, tmp_path, table, needle):
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "a.test"\n\n'
        f"[[credentials]]\n{table}\n"
    )
    for argv in (
        ("run", "-p", "bash", "--policy", str(policy), "--", "true"),
        ("policy", "check", "https://a.test/", "--policy", str(policy)),
    ):
        err = one_line(cli(*argv), 2)
        assert f"{policy}:6:" in err and needle in err, err


# -- output options: checked before the cell runs ----------------------------------------------


@pytest.mark.parametrize(
    ("where", "needle"),
    [
        ("{dir}", "it is a directory"),
        ("{dir}/missing/learned.toml", "No such file or directory"),
        ("/proc/learned.toml", "cannot write /proc/learned.toml"),
    ],
)
def test_learn_output_is_checked_before_the_cell_runs(offline_set, tmp_path, where, needle):
    work = tmp_path / "work"
    work.mkdir()
    target = where.format(dir=tmp_path)
    argv = ["run", "-p", "coreutils", "--workdir", str(work), "--learn"]
    result = cli(*argv, "--learn-output", target, "--", "touch", "/workspace/ran")
    assert needle in one_line(result, 1)
    assert not (work / "ran").exists()  # the cell never started


def test_learned_policy_that_cannot_be_written_after_the_run_goes_to_stdout(offline_set, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = in_mount_ns(  # the directory fills up while the cell runs
        f'mount -t tmpfs -o size=64k tmpfs "{out_dir}" || exit 99\n'
        f'( sleep 1; head -c 1M /dev/zero > "{out_dir}/fill" ) 2>/dev/null &\n'
        f'"$N" run -p coreutils --learn --learn-output "{out_dir}/learned.toml" -- sleep 4\n'
        'echo "rc=$?"',
        tmp_path / "home",
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "rc=1" in out and "# Written by nixcell --learn" in out, result
    assert "cannot write the learned policy to learned.toml" in err, err
    assert "No space left on device" in err and "it follows on stdout" in err


@pytest.mark.parametrize("where", ["{dir}", "/dev/null", "{dir}/missing/audit.jsonl"])
def test_audit_output_is_checked_before_the_cell_runs(offline_set, tmp_path, where):
    work = tmp_path / "work"
    work.mkdir()
    argv = ["run", "-p", "coreutils", "--workdir", str(work), "--allow-host", "a.test"]
    result = cli(*argv, "--audit", where.format(dir=tmp_path), "--", "touch", "/workspace/ran")
    assert "audit file" in one_line(result, 1)
    assert not (work / "ran").exists()


# -- the host around nixcell -------------------------------------------------------------------


def sh(script: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    """``script`` in sh with $N the nixcell script: for redirections cli() cannot express."""
    return subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        timeout=120,
        env={**os.environ, "N": NIXCELL, **env},
    )


@pytest.mark.parametrize(
    ("redirect", "flags"),
    [
        (">&-", ""),
        ("2>&-", ""),
        (">&- 2>&-", ""),
        ("2>/dev/full", ""),
        (">/dev/full", ""),
        ("<&- >&-", ""),
        (">&-", "--memory 256M"),  # the cgroup path (not the same code as a plain run)
        ("2>/dev/full", "-p python3"),  # cold: the resolution's notes go to a full stderr
    ],
)
def test_closed_or_full_std_streams_keep_the_cells_exit_code(offline_set, redirect, flags):
    result = sh(f'"$N" run -p bash {flags} -- bash -c "echo out; echo err >&2; exit 7" {redirect}')
    assert result.returncode == 7, result
    assert b"Traceback" not in result.stderr and b"internal error" not in result.stderr


def test_closed_stdout_is_not_reused_for_the_cells_output(offline_set, tmp_path):
    # with fd 1 closed, a file nixcell opened could take number 1 and get the cell's output
    audit = tmp_path / "audit.jsonl"
    args = f"--allow-host a.test --audit {audit}"
    result = sh(f'"$N" run -p bash {args} -- bash -c "echo LEAK; exit 3" >&-')
    assert result.returncode == 3, result
    assert b"LEAK" not in audit.read_bytes()


def test_deleted_current_directory(offline_set, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    result = sh(f'cd "{gone}" && rmdir "{gone}" && exec "$N" run -p bash -- true')
    assert "current directory was deleted" in one_line(result, 1)


def in_mount_ns(script: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    """``script`` in a private mount namespace (``unshare -m``), NIXCELL_HOME=home."""
    if os.getuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        timeout=300,
        env={**os.environ, "N": NIXCELL, "NIXCELL_HOME": str(home)},
    )


def test_read_only_state_dir(offline_set, tmp_path):
    home = tmp_path / "home"
    assert cli("run", "-p", "bash", "--", "true", env={"NIXCELL_HOME": str(home)}).returncode == 0
    result = in_mount_ns(
        f'mount --bind -o ro "{home}" "{home}" && mount -o remount,bind,ro "{home}" || exit 99\n'
        '"$N" run -p bash -- sh -c "exit 4"; echo "warm=$?"\n'
        '"$N" run -p bash --memory 64M -- sh -c "exit 4"; echo "replanned=$?"\n'
        '"$N" run -p gnugrep -p gnused -- true; echo "new=$?"',
        home,
    )
    out = result.stdout.decode()
    assert "warm=4" in out and "replanned=4" in out, result  # caches unwritable: still runs
    assert "new=1" in out, result
    err = result.stderr.decode()
    assert f"{home}/state" in err and "read-only file system" in err, err
    assert "Traceback" not in err and "internal error" not in err


def test_full_state_dir(offline_set, tmp_path):
    warm = tmp_path / "warm"
    assert cli("run", "-p", "bash", "--", "true", env={"NIXCELL_HOME": str(warm)}).returncode == 0
    home = tmp_path / "full"
    home.mkdir()
    result = in_mount_ns(  # the warm caches, then nothing left: every cache write fails
        f'mount -t tmpfs -o size=2m tmpfs "{home}" && cp -a "{warm}/." "{home}/" || exit 99\n'
        f'head -c 4M /dev/zero > "{home}/fill" 2>/dev/null\n'
        '"$N" run -p bash -- sh -c "exit 4"; echo "warm=$?"\n'
        '"$N" run -p bash --memory 64M -- sh -c "exit 4"; echo "replanned=$?"\n'
        '"$N" run -p bash -p gnugrep -- sh -c "exit 4"; echo "resolved=$?"',
        home,
    )
    out, err = result.stdout.decode(), result.stderr.decode()
    assert "warm=4" in out and "replanned=4" in out and "resolved=4" in out, result
    assert "No space left on device" in err  # the skipped cache writes are logged
    assert "Traceback" not in err and "internal error" not in err, err


# -- a cached plan whose --hide target changed -------------------------------------------------


def test_hide_target_that_changed_kind_is_planned_again(offline_set, tmp_path):
    work = tmp_path / "work"
    (work / "secret").mkdir(parents=True)
    (work / "secret" / "key").write_text("hunter2")
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    argv = ("run", "-p", "coreutils", "--workdir", str(work), "--hide", str(work / "secret"))
    probe = ("--", "stat", "-c", "%F", "/workspace/secret")
    for _ in range(2):  # cold, then from the cached plan
        first = cli(*argv, *probe, env=env)
        assert first.stdout == b"directory\n", first
    assert list((tmp_path / "home" / "cache" / "plans").iterdir())
    (work / "secret" / "key").unlink()
    (work / "secret").rmdir()
    (work / "secret").write_text("hunter2")  # now a file: hidden by /dev/null, not a tmpfs
    changed = cli(*argv, *probe, env=env)
    assert changed.returncode == 0 and changed.stdout == b"character special file\n", changed
    leak = cli(*argv, "--", "cat", "/workspace/secret", env=env)
    assert b"hunter2" not in leak.stdout
    (work / "secret").unlink()
    (work / "secret").mkdir()  # and back
    assert cli(*argv, *probe, env=env).stdout == b"directory\n"


# -- the proxy's end-of-run summary ------------------------------------------------------------


def test_summary_says_failed_for_502_and_guard_and_denied_only_for_rules(
    offline_set, plain, tmp_path
):
    with socket.socket() as s:  # a loopback port nothing listens on: the upstream fails (502)
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    p = plain.port
    policy = tmp_path / "p.toml"
    policy.write_text(
        '[[rules]]\naction = "deny"\n[rules.pattern]\nhost = "denied.test"\n\n'
        f'[[rules]]\naction = "allow"\nport = {p}\n[rules.pattern]\nhost = "up.test"\n\n'
        f'[[rules]]\naction = "allow"\nport = {p}\n[rules.pattern]\nhost = "guarded.test"\n\n'
        f'[[rules]]\naction = "allow"\nport = {closed}\n[rules.pattern]\nhost = "down.test"\n'
    )
    pins = ["up.test:127.0.0.1", "denied.test:127.0.0.1", "down.test:127.0.0.1"]
    pins.append("guarded.test:127.0.0.2")  # loopback outside the cidr rule: the guard refuses
    urls = [
        f"http://up.test:{p}/ok",
        f"http://denied.test:{p}/no",
        f"http://nowhere.test:{p}/none",
        f"http://guarded.test:{p}/g",
        f"http://down.test:{closed}/d",
    ]
    result = cli(
        "run", "-p", "curl", "--policy", str(policy), "--allow-cidr", "127.0.0.1/32",
        *[f"--resolve={pin}" for pin in pins], "--",
        "curl", "-s", "-w", "%{http_code} ", *[a for u in urls for a in ("-o", "/dev/null", u)],
    )  # fmt: skip
    assert result.stdout == b"200 403 403 403 502 ", result
    line = next(ln for ln in result.stderr.decode().splitlines() if "request" in ln)
    denied, _, failed = line.partition("; ")
    assert denied.startswith("nixcell: 2 requests denied: "), line
    assert f"GET denied.test:{p}/no (by rule 1 at {policy}:1)" in denied
    assert f"GET nowhere.test:{p}/none (no rule)" in denied
    assert failed.startswith("2 requests failed: "), line
    assert f"GET guarded.test:{p}/g (403: " in failed and "127.0.0.2" in failed
    assert f"GET down.test:{closed}/d (502: " in failed
    assert "guarded" not in denied and "down.test" not in denied


@pytest.mark.parametrize(
    "content",
    [b"\x1f\x8b\x08\x00binary\n", b"{ x = \xff; }\n", b"\xc3(\nsecond\n", b"a\n\x00\x01\n"],
)
@pytest.mark.parametrize("as_dir", [False, True])
def test_nix_output_that_is_not_utf8_is_one_line(offline_set, tmp_path, content, as_dir):
    """nix echoes a pin's own bytes in its errors (found by test_flag_messages with
    /proc/config.gz; nix shows the line with the error when the file has a newline): they are
    read with replacement, never a UnicodeDecodeError."""
    pin = tmp_path / "pin"
    if as_dir:
        pin.mkdir()
        pin = pin / "default.nix"
    pin.write_bytes(content)
    target = pin.parent if as_dir else pin
    result = cli("run", "-p", "bash", "--nixpkgs", str(target), "--dry-run", "--", "true")
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1, result
    assert err.count("\n") == 1 and err.startswith("nixcell: "), err
    assert "internal error" not in err and "Traceback" not in err
