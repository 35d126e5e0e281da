"""The MCP server: config (nix-sandbox-mcp format), tool description, results, failures — no I/O
beyond temp files, no cells."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from nixcell.mcp.config import ConfigError, load_config
from nixcell.mcp.envs import Environments
from nixcell.mcp.tool import Outcome, code_plan

# The keys of nix-sandbox-mcp's config.example.toml, written the way its users write them.
NIX_SANDBOX_MCP = """
[daemon]
transport = "stdio"
log_level = "info"

[defaults]
backend = "jail"
timeout_seconds = 30
memory_mb = 512

[project]
path = "."
mount_point = "/project"
# use_flake = true
[project.inherit_env]
vars = ["RUST_LOG"]

[environments.shell]
preset = "shell"

[environments.python]
preset = "python"

[environments.node]
preset = "node"

[environments.jq-shell]
flake = "nixpkgs#jq"
interpreter = "bash -s"

[environments.python-alt]
flake = "nixpkgs#python3"
interpreter = "python3 -c"
memory_mb = 1024

[backends.jail]

[backends.microvm]
hypervisor = "cloud-hypervisor"

[session]
idle_timeout_seconds = 120
max_lifetime_seconds = 600
"""


@pytest.fixture
def no_user_envs(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_no_config_is_three_presets_and_cwd(no_user_envs):
    config = load_config()
    assert list(config.environments) == ["shell", "python", "node"]
    assert config.project == str(no_user_envs)
    assert config.mount_point == "/project"
    python = config.environments["python"]
    assert python.interpreter == "python"
    assert python.packages == ("python3", "python3Packages.pyyaml", "coreutils")
    assert (python.timeout, python.memory_mb, python.network) == (30.0, 512, None)
    assert "tree" in config.environments["shell"].packages


def test_nix_sandbox_mcp_config_reads_as_is(no_user_envs):
    config = load_config(write(no_user_envs / "config.toml", NIX_SANDBOX_MCP))
    assert list(config.environments) == ["shell", "python", "node", "jq-shell", "python-alt"]
    jq = config.environments["jq-shell"]
    assert (jq.interpreter, jq.packages) == ("bash", ("nixpkgs#jq", "bash"))
    alt = config.environments["python-alt"]
    assert (alt.interpreter, alt.packages, alt.memory_mb) == (
        "python",
        ("nixpkgs#python3", "python3"),
        1024,
    )
    assert (config.idle_timeout, config.max_lifetime) == (120.0, 600.0)
    assert config.pass_env == ("RUST_LOG",)
    assert config.transport == "stdio"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[defaults]\nmemroy_mb = 5\n", 2, "unknown key 'memroy_mb'"),
        ("[environments.x]\ninterpreter = 'ruby'\npackages = ['ruby']\n", 2, "unknown interp"),
        ("[environments.x]\n\ntimeout_seconds = 3\n", 1, "needs preset, packages or flake"),
        ("[defaults]\nmemory_mb = 2\n", 2, "memory_mb must be a whole number ≥ 4"),
        ("[environments.x]\npreset = 'shell'\nallow_hosts = ['a..b']\n", 3, "allow_hosts"),
        ("[environments.x]\npreset = 'shell'\nnetwork = true\n", 3, "needs allow_hosts"),
        ("[environments.x]\npreset = 'shell'\nbackend = 'lxc'\n", 3, "unknown backend 'lxc'"),
        ("[project]\nmount_point = '/workspace'\n", 2, "mount_point"),
        ("[defaults\n", 1, ""),
        ("[session]\nshare_sessions = 'yes'\n", 2, "share_sessions must be true or false"),
        ("[session]\n\nmax_client_sessions = 0\n", 3, "max_client_sessions must be ≥ 1"),
        ("[session]\nmax_client_sessions = true\n", 2, "max_client_sessions must be"),
        ("[session]\nshare = true\n", 2, "unknown key 'share'"),
    ],
)
def test_errors_name_file_and_line(no_user_envs, text, line, message):
    path = write(no_user_envs / "c.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_session_sharing_is_off_unless_asked(no_user_envs):
    assert load_config(write(no_user_envs / "a.toml", "")).share_sessions is None
    asked = load_config(write(no_user_envs / "b.toml", SHARED))
    assert (asked.share_sessions, asked.max_client_sessions) == (True, 3)


SHARED = "[session]\nshare_sessions = true\nmax_client_sessions = 3\n"


def test_network_and_policy_paths(no_user_envs):
    write(
        no_user_envs / "github.toml",
        '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "x.io"\n',
    )
    text = (
        "[defaults]\nallow_hosts = ['api.github.com']\n"
        "[environments.a]\npreset = 'shell'\n"
        "[environments.b]\npreset = 'shell'\nnetwork = false\n"
        "[environments.c]\npreset = 'python'\npolicy = 'github.toml'\nallow_hosts = []\n"
    )
    envs = load_config(write(no_user_envs / "c.toml", text)).environments
    assert envs["a"].network == {"allow_hosts": ["api.github.com"], "policy_files": []}
    assert envs["b"].network is None
    assert envs["c"].network == {
        "allow_hosts": [],
        "policy_files": [str(no_user_envs / "github.toml")],
    }


def test_env_dir_overrides_a_preset(no_user_envs, caplog):
    env_dir = no_user_envs / "envs"
    env_dir.mkdir()
    write(env_dir / "python.toml", "packages = ['python3', 'jq']\ninterpreter = 'python3'\n")
    write(env_dir / "data.toml", "preset = 'python'\nmemory_mb = 2048\nsessions = false\n")
    with caplog.at_level(logging.INFO, logger="nixcell.mcp.config"):
        config = load_config(env_dir=str(env_dir))
    assert list(config.environments) == ["shell", "python", "node", "data"]
    assert config.environments["python"].packages == ("python3", "jq")
    assert config.environments["data"].memory_mb == 2048
    assert "environment 'python' from" in caplog.text and "replaces the preset" in caplog.text
    write(env_dir / "bad name.toml", "preset = 'shell'\n")
    with pytest.raises(ConfigError, match="not a valid environment name"):
        load_config(env_dir=str(env_dir))


def test_description_is_short_and_names_everything(no_user_envs):
    description = Environments(load_config()).describe(sessions_available=True)
    assert len(description) / 4 < 400  # ~4 characters per token
    for part in ("shell: bash;", "python: python;", "node: node;", "/project", "session="):
        assert part in description
    assert "session=" not in Environments(load_config()).describe(sessions_available=False)


def test_result_text_and_structure():
    outcome = Outcome("1\n", "warn", 3, timed_out=False, duration_ms=1.23456, notices=["(x)"])
    assert outcome.text() == "1\n--- stderr ---\nwarn\n(x)\nexit code: 3"
    assert outcome.is_error
    assert outcome.structured() == {
        "stdout": "1\n",
        "stderr": "warn",
        "exit_code": 3,
        "timed_out": False,
        "truncated": False,
        "duration_ms": 1.235,
    }  # "session" only for session calls (no nullable union in the output schema)
    assert Outcome("", "", 0, session="s").structured()["session"] == "s"
    assert Outcome("", "", 0).text() == "exit code: 0"


def test_code_goes_into_a_data_mount_never_argv():
    from nixcell.plan import MountOp, Plan, PlanLimits

    plan = Plan(
        command=("python3",),
        mounts=(MountOp("tmpfs", "/workspace"), MountOp("remount-ro", "/")),
        env={},
        cwd="/workspace",
        limits=PlanLimits(),
        seccomp_profiles=(),
        closure=(),
        path_dirs=(),
        programs=("python3",),
    )
    cell = code_plan(plan, "python", "print('secret code')")
    assert cell.command == ("python3", "/workspace/.nixcell/main.py")
    assert cell.mounts[-2] == MountOp(
        "data", "/workspace/.nixcell/main.py", data="print('secret code')"
    )
    assert cell.mounts[-1].kind == "remount-ro"
    assert "secret code" not in " ".join(cell.bwrap_args())


def test_tool_failures_are_one_message(monkeypatch):
    import asyncio

    from nixcell.errors import LimitUnavailableError
    from nixcell.mcp import tool
    from nixcell.mcp.config import preset_env
    from nixcell.mcp.envs import Prepared

    class Envs:
        names = ["python", "off"]

        async def get(self, name: str) -> Prepared | None:
            if name == "off":
                return Prepared(preset_env("off", "shell"), error="nix is not installed")
            return Prepared(preset_env("python"), plan=object()) if name == "python" else None

    async def refuse(*args: object) -> None:
        raise LimitUnavailableError("the memory limit cannot be enforced on this host")

    monkeypatch.setattr(tool, "run_once", refuse)
    run = tool.RunTool(Envs(), lambda: None)  # type: ignore[arg-type]
    cases = [
        ({"code": "1", "env": "python"}, "the cell could not run: the memory limit cannot"),
        ({"code": "1", "env": "ruby"}, "unknown environment 'ruby'; available: python, off"),
        ({"code": "1", "env": "off"}, "environment 'off' is unavailable: nix is not installed"),
        ({"code": "1", "env": "python", "cmd": "x"}, "unknown argument 'cmd'"),
        ({"code": 1, "env": "python"}, "argument 'code'"),
        ({"code": "1", "env": "python", "session": "../x"}, "session must be a name"),
    ]
    for arguments, message in cases:
        with pytest.raises(tool.ToolFailure) as caught:
            asyncio.run(run.call(arguments))
        assert str(caught.value).startswith(message)
