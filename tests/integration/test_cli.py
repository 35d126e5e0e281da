"""The `nixcell` console script end to end: output, exit codes, dry-run, one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from tests.conftest import cli


def one_line_error(result) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err
    assert err.startswith("nixcell: ") and err.count("\n") == 1, err
    return err


def test_echo_hi_cold_then_warm(offline_set, tmp_path):
    env = {"NIXCELL_HOME": str(tmp_path / "fresh")}
    for _ in range(3):  # cold resolve, then plan cached, then fast path
        result = cli("run", "-p", "bash", "--", "echo", "hi", env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hi\n"
    assert list((tmp_path / "fresh" / "cache" / "plans").iterdir())


def test_fast_path_follows_changed_flags_and_commands(offline_set):
    a = cli("run", "-p", "bash", "-e", "X=1", "--", "bash", "-c", "echo $X")
    b = cli("run", "-p", "bash", "-e", "X=2", "--", "bash", "-c", "echo $X")
    c = cli("run", "-p", "bash", "-e", "X=2", "--", "bash", "-c", "echo again $X")
    assert (a.stdout, b.stdout, c.stdout) == (b"1\n", b"2\n", b"again 2\n")


def test_exit_codes_and_stdin(offline_set):
    assert cli("run", "-p", "bash", "--", "bash", "-c", "exit 42").returncode == 42
    assert cli("run", "-p", "bash", "--", "bash", "-c", "kill -TERM $$").returncode == 143
    piped = cli("run", "-p", "coreutils", "--", "tr", "a-z", "A-Z", input=b"shout")
    assert piped.stdout == b"SHOUT"


def test_interspersed_command_without_dashes(offline_set):
    result = cli("run", "-p", "bash", "bash", "-c", "echo $0", "word")
    assert result.stdout == b"word\n"


def test_dry_run_json_is_the_plan(offline_set):
    result = cli(
        "run",
        "-p",
        "bash",
        "--memory",
        "256M",
        "--pids",
        "64",
        "--timeout",
        "30s",
        "--dry-run",
        "--json",
        "--",
        "true",
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["command"][-1] == "true"  # a builtin: run through the closure's bash
    assert plan["limits"] == {
        "memory": 256 << 20,
        "cpus": None,
        "pids": 64,
        "timeout": 30.0,
        "disk": None,
    }
    assert "--unshare-net" in plan["bwrap_args"]
    assert plan["env"]["PATH"].startswith("/nix/store/")
    assert any(m["kind"] == "proc" for m in plan["mounts"])
    assert set(plan["closure"]) >= {offline_set.packages["bash"]}
    human = cli("run", "-p", "bash", "--dry-run", "--", "true")
    assert human.returncode == 0 and b"bwrap" in human.stdout


def test_version_and_doctor(offline_set):
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.decode().startswith("nixcell ")
    doctor = cli("doctor")
    assert doctor.returncode == 0, doctor.stdout
    assert b"bubblewrap" in doctor.stdout


def test_unknown_package_suggests_close_names(offline_set):
    err = one_line_error(cli("run", "-p", "pyton3", "--", "true"))
    assert "unknown package 'pyton3'" in err
    assert "python3" in err


def test_missing_nix_is_explained(offline_set, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bwrap",):
        (bin_dir / tool).symlink_to(f"/usr/bin/{tool}")
    result = cli(
        "run",
        "-p",
        "bash",
        "--",
        "true",
        env={"PATH": str(bin_dir), "NIXCELL_HOME": str(tmp_path / "h")},
    )
    err = one_line_error(result)
    assert "nix is not installed" in err


def test_command_not_in_packages(offline_set):
    result = cli("run", "-p", "bash", "--", "jq", ".")
    assert result.returncode == 127
    assert "command 'jq' not found" in one_line_error(result)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "-p", "bash", "--memory", "lots", "--", "true"], "--memory"),
        (["run", "-p", "bash", "--timeout", "soon", "--", "true"], "--timeout"),
        (["run", "-p", "bash", "--cpus", "x", "--", "true"], "--cpus"),
        (["run", "-p", "bash", "-e", "NOEQUALS", "--", "true"], "K=V"),
        (["run", "-p", "bash", "--frobnicate", "--", "true"], "frobnicate"),
        (["run", "-p", "bash"], "COMMAND"),
        (["run", "--", "true"], "package"),
        (["run", "-p", "bash", "--workdir", "/no/such/dir", "--", "true"], "/no/such/dir"),
        (["run", "-p", "bash", "--ro-bind", "/no/such/src:/x", "--", "true"], "/no/such/src"),
        (["run", "-p", "bash", "--bind", "/tmp:/proc/x", "--", "true"], "/proc"),
        (["run", "-p", "bash", "--hardening-profile", "nope", "--", "true"], "nope"),
        (["run", "-p", "bad package", "--", "true"], "bad package"),
        (["run", "-p", "bash", "--nixpkgs", "not-a-pin", "--", "true"], "--nixpkgs"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_malformed_input_is_one_line(offline_set, args, needle):
    err = one_line_error(cli(*args))
    assert needle in err


def test_verbose_shows_detail_for_nix_errors(offline_set, tmp_path):
    # (a name the offline set lacks is refused without nix; a local flake is nix's to judge)
    (tmp_path / "flake.nix").write_text("{ outputs = { self }: { }; }\n")
    result = cli("-v", "run", "-p", f"{tmp_path}#nope", "--", "true")
    assert result.returncode != 0
    assert b"Traceback" not in result.stderr
    assert b"nixcell-unknown-packages: " in result.stderr


def test_no_packages_given_from_env(offline_set):
    # make sure nothing of the caller's environment leaks into the cell
    result = cli("run", "-p", "coreutils", "--", "env", env={"SECRET_TOKEN": "hunter2"})
    assert b"hunter2" not in result.stdout
    passed = cli(
        "run",
        "-p",
        "coreutils",
        "--pass-env",
        "SECRET_TOKEN",
        "--",
        "env",
        env={"SECRET_TOKEN": "hunter2"},
    )
    assert b"SECRET_TOKEN=hunter2" in passed.stdout
    assert os.environ.get("SECRET_TOKEN") is None
