"""The MCP config's ``backend`` key: nix-sandbox-mcp's names mapped to nixcell's, nixcell's own
accepted, an unknown one a file:line error; off bwrap, no sessions and no pool; the compiled
CellSpec carries the backend (the engine, not the front, runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nixcell.mcp.config import ConfigError, ServerConfig, load_config
from nixcell.mcp.envs import cell_spec
from nixcell.sandbox import backends


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(here: Path, text: str) -> ServerConfig:
    (here / "c.toml").write_text(text)
    return load_config(str(here / "c.toml"))


@pytest.mark.parametrize(
    ("value", "name"),
    [("jail", "bwrap"), ("microvm", "microvm"), ("bwrap", "bwrap"), ("gvisor", "gvisor"),
     ("docker", "docker"), ("systemd", "systemd")],
)  # fmt: skip
def test_each_backend_name_maps_and_reaches_the_spec(here, value, name):
    env = load(here, f'[environments.x]\npreset = "shell"\nbackend = "{value}"\n').environments["x"]
    assert env.backend == name
    config = load(here, "")
    assert cell_spec(env, config, list(env.packages), timeout=1.0).backend == name
    if name != "bwrap":
        assert (env.sessions, env.pool) == (False, 0)
    else:
        assert env.sessions and env.pool is None


def test_defaults_backend_applies_and_an_environment_overrides_it(here):
    envs = load(
        here,
        '[defaults]\nbackend = "docker"\n[environments.a]\npreset = "shell"\n'
        '[environments.b]\npreset = "shell"\nbackend = "jail"\n',
    ).environments
    assert (envs["a"].backend, envs["b"].backend) == ("docker", "bwrap")
    assert envs["b"].sessions and not envs["a"].sessions


def test_auto_is_resolved_when_the_config_is_read(here, monkeypatch):
    table = {n: backends.Availability(n == "gvisor", "x") for n in backends.NAMES}
    monkeypatch.setattr(backends, "_cache", table)
    env = load(here, '[defaults]\nbackend = "auto"\n').environments["shell"]
    assert (env.backend, env.sessions, env.pool) == ("gvisor", False, 0)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[environments.x]\npreset = "shell"\nbackend = "lxc"\n', 3, "unknown backend 'lxc'"),
        ("[defaults]\nbackend = 3\n", 2, "unknown backend 3"),
        ('[environments.x]\npreset = "shell"\nbackend = "gvisor"\nsessions = true\n', 4,
         "sessions needs the bwrap backend (this environment runs on gvisor)"),
        ('[defaults]\nsessions = true\n[environments.x]\npreset = "shell"\nbackend = "docker"\n',
         2, "sessions needs the bwrap backend"),
        ('[environments.x]\npreset = "shell"\nbackend = "microvm"\npool = 2\n', 4,
         "pool needs the bwrap backend"),
    ],
)  # fmt: skip
def test_bad_backend_settings_are_one_line_at_file_and_line(here, text, line, message):
    path = str(here / "c.toml")
    with pytest.raises(ConfigError) as caught:
        load(here, text)
    assert str(caught.value).startswith(f"{path}:{line}: ")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_sessions_false_and_pool_0_are_fine_off_bwrap(here):
    text = '[environments.x]\npreset = "shell"\nbackend = "gvisor"\nsessions = false\npool = 0\n'
    env = load(here, text).environments["x"]
    assert (env.backend, env.sessions, env.pool) == ("gvisor", False, 0)


def test_the_one_shot_cell_keeps_the_environments_backend():
    """``run``'s one-shot path hands ``runner.execute_async`` a plan of the same backend."""
    from nixcell.host import HostFacts
    from nixcell.mcp.tool import code_plan
    from nixcell.nix.closure import Closure
    from nixcell.plan import plan
    from nixcell.spec import make_spec

    env = "/nix/store/" + "a" * 32 + "-nixcell-env"
    closure = Closure(env, (env,), ("bash",), "offline package set", ("bash", "sh"))
    spec = make_spec(command=["bash"], packages=["bash"], backend="docker")
    planned = plan(spec, closure, HostFacts(uid=0, gid=0, backend="docker"))
    assert code_plan(planned, "bash", "echo hi").backend == "docker"
