"""nix-sandbox-mcp's variables and metadata.json, checked without a server: every value either
comes out well-typed or is one ConfigError line naming its variable or artifact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.mcp import artifacts, dropin, flakebuild
from nixcell.mcp.config import ConfigError, ServerConfig, load_config, preset_env
from nixcell.mcp.instructions import server_instructions

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@given(st.text(max_size=20))
def test_seconds_are_finite_and_in_range_or_refused_naming_the_variable(value):
    try:
        got = dropin.seconds("SESSION_IDLE_TIMEOUT", value)
    except ConfigError as exc:
        assert str(exc).startswith(f"SESSION_IDLE_TIMEOUT={value!r}: must be a number")
        assert "\n" not in str(exc)
    else:
        assert math.isfinite(got) and 0 < got <= 86400


@pytest.mark.parametrize(
    ("value", "expected"),
    [("300", 300.0), (" 2.5 ", 2.5), ("86400", 86400.0), ("1e3", 1000.0)]
    + [(v, None) for v in ("", "0", "-1", "86401", "nan", "inf", "-inf", "5s", "0x10", "1_0a")],
)
def test_seconds_table(value, expected):
    if expected is None:
        with pytest.raises(ConfigError, match="SESSION_MAX_LIFETIME="):
            dropin.seconds("SESSION_MAX_LIFETIME", value)
    else:
        assert dropin.seconds("SESSION_MAX_LIFETIME", value) == expected


@given(
    st.dictionaries(
        st.sampled_from([*artifacts._KEYS, "memroy_mb", "network", ""]) | st.text(max_size=4),
        JSON | st.sampled_from(["python", "bash", "node", "data", 64, 30.5, 0]),
        max_size=6,
    )
)
def test_metadata_is_well_typed_or_one_refusal(doc):
    def fail(message: str) -> artifacts.ArtifactError:
        return artifacts.ArtifactError(f"NIX_SANDBOX_DIR: artifact X: {message}")

    try:
        meta = artifacts._check_keys(doc, fail)
    except artifacts.ArtifactError as exc:
        assert str(exc).startswith("NIX_SANDBOX_DIR: artifact X: metadata.json")
    else:
        assert set(doc) <= set(artifacts._KEYS)
        assert meta["interpreter_type"] in ("python", "bash", "node")
        assert isinstance(meta["name"], str) and meta["name"] == doc["name"]
        assert 0 < meta["timeout_seconds"] <= 86400
        memory = meta["memory_mb"]
        assert type(memory) is int and (memory == 0 or memory >= 4)


def test_a_directory_outside_the_store_is_refused(tmp_path):
    (tmp_path / "a" / "bin").mkdir(parents=True)
    (tmp_path / "a" / "metadata.json").write_text('{"name": "a", "interpreter_type": "bash"}')
    with pytest.raises(ConfigError, match=r"artifact .*/a: not a Nix store path"):
        artifacts.read_artifact(str(tmp_path / "a"), "NIX_SANDBOX_DIR")
    fake = tmp_path / "nix" / "store" / ("0" * 32 + "-x")
    fake.mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a Nix store path"):
        artifacts.read_artifact(str(fake), "NIX_SANDBOX_DIR")


def test_project_dir_and_sandbox_dir(tmp_path):
    (tmp_path / "file").write_text("")
    assert dropin.project_dir("", str(tmp_path)) is None
    assert dropin.project_dir(".", str(tmp_path)) == str(tmp_path)
    for bad, why in (("missing", "does not exist"), ("file", "is not a directory")):
        with pytest.raises(ConfigError, match=f"^PROJECT_DIR='{bad}': .* {why}$"):
            dropin.project_dir(bad, str(tmp_path))
    assert dropin.sandbox_dir({"NIX_SANDBOX_DIR": ""}, str(tmp_path)) is None
    assert dropin.sandbox_dir({"NIX_SANDBOX_DIR": "."}, str(tmp_path)) == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^NIX_SANDBOX_DIR='file': "):
        dropin.sandbox_dir({"NIX_SANDBOX_DIR": "file"}, str(tmp_path))


def test_flake_refs_and_build_errors():
    assert flakebuild.parse_refs(" a#x, ,path:/b#y ,a#x,") == ["a#x", "path:/b#y"]
    assert flakebuild.parse_refs("") == []
    with pytest.raises(ConfigError, match=r"^NIX_SANDBOX_ENVS: 'a\\tb' is not a flake reference"):
        flakebuild.parse_refs("a\tb")
    offline = "warning: x\nerror: unable to download 'https://api.github.com/...': Couldn't\n"
    assert flakebuild._reason(offline).startswith("it needs the network")
    other = "trace: a\nerror: getting status of '/no/flake.nix': No such file or directory\n"
    assert flakebuild._reason(other) == (
        "getting status of '/no/flake.nix': No such file or directory"
    )


def test_variables_win_over_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "q").mkdir()
    config_file = tmp_path / "config.toml"
    config_file.write_text(
        f'[project]\npath = "{tmp_path / "p"}"\nmount_point = "/p"\n'
        "[session]\nidle_timeout_seconds = 50\nmax_lifetime_seconds = 500\n"
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    config = load_config(str(config_file))
    assert (config.project, config.mount_point, config.idle_timeout) == (
        str(tmp_path / "p"),
        "/p",
        50.0,
    )
    environ = {
        "PROJECT_DIR": "q",
        "PROJECT_MOUNT": "/q",
        "SESSION_IDLE_TIMEOUT": "70",
        "NIX_SANDBOX_DIR": "",
    }
    applied = dropin.apply(config, environ, str(tmp_path))
    assert (applied.project, applied.mount_point) == (str(tmp_path / "q"), "/q")
    assert (applied.idle_timeout, applied.max_lifetime) == (70.0, 500.0)
    assert dropin.apply(config, {"NIX_SANDBOX_DIR": ""}, str(tmp_path)) == config


def test_instructions_follow_the_configuration():
    envs = {n: preset_env(n) for n in ("shell", "python")}
    config = ServerConfig(envs, "/home/u/p", mount_point="/src")
    text = server_instructions(config, sessions=True, idle_timeout=120, max_lifetime=900)
    assert "Environments (env: interpreter): shell (bash), python (python)." in text
    assert "read-only at /src" in text and "after 120 s unused or 900 s after it started" in text
    assert "Prefer a session for multi-step work" in text
    assert len(text.split()) * 4 / 3 < 300, text  # about 200 tokens
    no_sessions = ServerConfig({"shell": preset_env("shell"), "x": preset_env("x", "python")}, None)
    no_sessions.environments["x"].__dict__["sessions"] = False  # frozen: a test-only edit
    text = server_instructions(no_sessions, sessions=True, idle_timeout=300, max_lifetime=3600)
    assert "Sessions (envs: shell):" in text and "No project directory is mounted." in text
    assert "session=" not in server_instructions(
        no_sessions, sessions=False, idle_timeout=300, max_lifetime=3600
    )


def test_default_sandbox_dir_is_nix_sandbox_mcps(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dropin.default_sandbox_dir() == tmp_path / ".config/nix-sandbox-mcp/sandboxes"
    assert dropin.sandbox_dir({}, "/") is None  # absent by default: nothing to scan
    Path(dropin.default_sandbox_dir()).mkdir(parents=True)
    assert dropin.sandbox_dir({}, "/") == str(dropin.default_sandbox_dir())
