"""`nixcell mcp --stdio` as a drop-in for nix-sandbox-mcp: its environment variables, mkSandbox
artifacts (real store paths built offline by artifacts.nix) run from their closures with their
limits enforced, NIX_SANDBOX_ENVS flakes built at start, every bad value one line at start."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from tests.conftest import NIXCELL

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def built(offline_set, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every artifact of artifacts.nix, linked by name under one store path."""
    link = tmp_path_factory.mktemp("artifacts") / "all"
    offline = os.environ["NIXCELL_OFFLINE_DIR"]
    argv = ["nix-build", str(HERE / "artifacts.nix"), "--argstr", "offline", offline]
    subprocess.run(
        [*argv, "-A", "all", "-o", str(link)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return link


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "hello.txt").write_text("hello from the project\n")
    (tmp_path / "xdg").mkdir()
    (tmp_path / "tmp").mkdir()
    (tmp_path / "sandboxes").mkdir()
    return tmp_path


def sandboxes(home: Path, built: Path, *names: str) -> str:
    directory = home / "sandboxes"
    for name in names:
        (directory / name).symlink_to(built / name)
    return str(directory)


def server_env(home: Path, **variables: str) -> dict[str, str]:
    keep = ("NIXCELL_HOME", "NIXCELL_OFFLINE_DIR", "PYTHONDONTWRITEBYTECODE", "PATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(XDG_CONFIG_HOME=str(home / "xdg"), TMPDIR=str(home / "tmp"), HOME=str(home))
    return {**env, **variables}


def with_client(home: Path, env: dict[str, str], body: Any) -> Any:
    params = StdioServerParameters(command=NIXCELL, args=["mcp", "--stdio"], cwd=str(home), env=env)

    async def main() -> Any:
        async with Client(params, mode="legacy") as client:
            return await body(client)

    return anyio.run(main)


def start(home: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The server started with no client (stdin /dev/null): refused or exits at once."""
    return subprocess.run(
        [NIXCELL, "mcp", "--stdio"],
        cwd=home,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )


def refusal(proc: subprocess.CompletedProcess[str]) -> str:
    """The one error line of a server that refused to start."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if not ln.startswith("nixcell: INFO ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_artifacts_run_from_their_closures_with_their_limits(home, built):
    env = server_env(
        home,
        NIX_SANDBOX_DIR=sandboxes(home, built, "data", "tools", "js"),
        PROJECT_DIR=str(home / "project"),
        PROJECT_MOUNT="/src",
        SESSION_IDLE_TIMEOUT="120",
        SESSION_MAX_LIFETIME="900",
    )

    async def body(client: Client) -> None:
        run = {t.name: t for t in (await client.list_tools()).tools}["run"]
        assert run.input_schema["properties"]["env"]["enum"][-3:] == ["data", "js", "tools"]
        assert "- data: python; python3-3.11" in run.description
        assert "sandbox-env-tools" in run.description
        instructions = client.instructions or ""
        assert (
            "data (python, artifact)" in instructions and "tools (bash, artifact)" in instructions
        )
        assert "read-only at /src" in instructions
        assert "after 120 s unused or 900 s after it started" in instructions

        async def call(code: str, env: str, **extra: str) -> Any:
            return await client.call_tool("run", {"code": code, "env": env, **extra})

        py = await call("import sys; print(sys.executable, open('/src/hello.txt').read())", "data")
        assert not py.is_error, py.content[0].text
        assert py.structured_content["stdout"].endswith("hello from the project\n\n")
        sh = await call('echo "$BASH_VERSION"; jq -n 1+1; cat /src/hello.txt', "tools")
        assert sh.structured_content["stdout"].startswith("5.")
        assert sh.structured_content["stdout"].endswith("2\nhello from the project\n")
        js = await call("console.log(typeof require, 6 * 7)", "js")
        assert js.structured_content["stdout"] == "function 42\n"
        # memory_mb = 64 is enforced (nix-sandbox-mcp declared it and never applied it)
        oom = await call("x = bytearray(512 << 20)\nprint('survived')", "data")
        assert oom.is_error and oom.structured_content["exit_code"] == 137
        assert "survived" not in oom.structured_content["stdout"]
        assert "(killed: out of memory (limit 64M))" in oom.content[0].text
        # memory_mb = 0: no limit, as in nixcell's config
        big = await call("const b = Buffer.alloc(200 << 20, 1); console.log(b.length)", "js")
        assert big.structured_content["stdout"] == f"{200 << 20}\n"
        # timeout_seconds = 4 is enforced
        slow = await call("import time\ntime.sleep(60)", "data")
        assert slow.structured_content["timed_out"] is True
        assert "(timed out after 4s)" in slow.content[0].text
        # sessions where the artifact has bin/session-run; none where it has not
        first = await call("x = 41", "data", session="s")
        assert not first.is_error, first.content[0].text
        second = await call("print(x + 1)", "data", session="s")
        assert second.structured_content["stdout"] == "42\n"
        assert second.structured_content["session"] == "s"
        none = await call("echo hi", "tools", session="t")
        assert none.is_error and "has no sessions" in none.content[0].text

    with_client(home, env, body)


BAD = [
    ("missing-name", "metadata.json: 'name' is missing"),
    ("missing-interpreter", "metadata.json: 'interpreter_type' is missing"),
    ("timeout-string", "timeout_seconds '30' must be seconds"),
    ("timeout-zero", "timeout_seconds 0 must be seconds"),
    ("memory-float", "memory_mb 1.5 must be a whole number"),
    ("memory-negative", "memory_mb -1 must be a whole number"),
    ("memory-bool", "memory_mb True must be a whole number"),
    ("ruby", "interpreter_type 'ruby' must be python, bash or node"),
    ("bad-name", "name '../x' is not a valid environment name"),
    ("unknown-key", "unknown key 'memroy_mb'"),
    ("not-json", "metadata.json is not valid JSON"),
    ("not-object", "metadata.json must hold a JSON object"),
    ("duplicate-key", "duplicate key 'name'"),
    ("huge", "metadata.json is 102478 bytes (at most 65536)"),
    ("metadata-link", "metadata.json is a symbolic link"),
    ("run-outside", "bin/run resolves outside the artifact's closure (/etc/passwd)"),
    ("session-outside", "bin/session-run resolves outside the artifact's closure (/etc/shadow)"),
    ("no-run", "no bin/run"),
    ("no-interpreter", "no python3 in its closure"),
    ("interpreter-outside", "-sandbox-env-io/bin/python3 resolves outside the artifact's closure"),
    ("clash", "its name 'python' is already the preset 'python'"),
]


@pytest.mark.parametrize(("name", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_artifacts_are_refused_at_start(home, built, name, message):
    directory = sandboxes(home, built, name, "data")
    line = refusal(start(home, server_env(home, NIX_SANDBOX_DIR=directory)))
    assert line.startswith(f"nixcell: NIX_SANDBOX_DIR: artifact {directory}/{name}: ") or (
        name == "clash" and line.startswith(f"nixcell: artifact {directory}/{name}: ")
    ), line
    assert message in line, line


def test_a_name_taken_twice_or_a_directory_outside_the_store_is_refused(home, built):
    directory = sandboxes(home, built, "data", "twin")
    line = refusal(start(home, server_env(home, NIX_SANDBOX_DIR=directory)))
    assert f"artifact {directory}/twin: its name 'data' is already the one from artifact" in line
    plain = home / "plain"
    (plain / "bin").mkdir(parents=True)
    (plain / "metadata.json").write_text('{"name": "plain", "interpreter_type": "bash"}')
    (plain / "bin" / "run").write_text("#!/bin/sh\nexec bash -s\n")
    os.unlink(Path(directory) / "twin")
    (Path(directory) / "plain").symlink_to(plain)
    line = refusal(start(home, server_env(home, NIX_SANDBOX_DIR=directory)))
    assert (
        f"artifact {directory}/plain: not a Nix store path ({directory}/plain -> {plain})" in line
    )
    # plain files and hidden entries of the directory are not artifacts
    os.unlink(Path(directory) / "plain")
    (Path(directory) / "README").write_text("my sandboxes\n")
    (Path(directory) / ".cache").mkdir()
    assert start(home, server_env(home, NIX_SANDBOX_DIR=directory)).returncode == 0
    (Path(directory) / "gone").symlink_to("/nix/store/" + "0" * 32 + "-sandbox-gone")
    line = refusal(start(home, server_env(home, NIX_SANDBOX_DIR=directory)))
    assert f"artifact {directory}/gone: a link to nothing (-> /nix/store/000" in line


BAD_VARIABLES = [
    ("PROJECT_DIR", "/nonexistent/project", "does not exist"),
    ("PROJECT_DIR", "project/hello.txt", "is not a directory"),
    ("PROJECT_MOUNT", "src", "must be an absolute path"),
    ("PROJECT_MOUNT", "/tmp", "PROJECT_MOUNT='/tmp': must be an absolute path outside /workspace"),
    ("PROJECT_MOUNT", "/nix/store", "would cover the cell's own /nix"),
    ("PROJECT_MOUNT", "", "is not a valid path"),
    ("NIX_SANDBOX_DIR", "/nonexistent", "does not exist"),
    ("NIX_SANDBOX_DIR", "project/hello.txt", "is not a directory"),
    ("NIX_SANDBOX_ENVS", "path:/nonexistent/flake#x", "building path:/nonexistent/flake#x failed"),
    ("NIX_SANDBOX_ENVS", "path:/a b#x", "is not a flake reference (no spaces)"),
    ("SESSION_IDLE_TIMEOUT", "five", "must be a number of seconds between 0 and 86400"),
    ("SESSION_IDLE_TIMEOUT", "0", "must be a number of seconds"),
    ("SESSION_IDLE_TIMEOUT", "", "must be a number of seconds"),
    ("SESSION_MAX_LIFETIME", "-5", "must be a number of seconds"),
    ("SESSION_MAX_LIFETIME", "inf", "must be a number of seconds"),
    ("SESSION_MAX_LIFETIME", "1e9", "must be a number of seconds"),
]


@pytest.mark.parametrize(("var", "value", "message"), BAD_VARIABLES)
def test_bad_values_of_the_variables_are_one_line_naming_them(
    home, offline_set, var, value, message
):
    line = refusal(start(home, server_env(home, **{var: value})))
    assert line.startswith(f"nixcell: {var}"), line
    assert message in line, line


def test_flakes_of_nix_sandbox_envs_are_built_at_start(home, built):
    """A local flake whose input (the offline set and artifacts.nix) is local too, named with
    a relative and an absolute reference; nix writes its missing flake.lock, as for
    nix-sandbox-mcp."""
    from nixcell.nix.resolve import system

    inputs, flake = home / "inputs", home / "envs"
    inputs.mkdir()
    flake.mkdir()
    shutil.copy(Path(os.environ["NIXCELL_OFFLINE_DIR"]) / "set.nix", inputs / "set.nix")
    shutil.copy(HERE / "artifacts.nix", inputs / "artifacts.nix")
    (flake / "flake.nix").write_text(
        f'{{ inputs.sets = {{ url = "path:{inputs}"; flake = false; }};\n'
        '  outputs = { self, sets }: let a = import (sets + "/artifacts.nix") '
        "{ offline = sets; }; in {\n"
        f'    packages."{system()}" = {{ data = a.data; default = a.tools; }};\n'
        "  }; }\n"
    )
    # the offline set is builtins.storePath: impure evaluation, opted into
    envs = f" ./envs#data , path:{flake},"
    env = server_env(home, NIX_SANDBOX_ENVS=envs, PROJECT_DIR="", NIXCELL_IMPURE_FLAKES="1")

    async def body(client: Client) -> None:
        run = {t.name: t for t in (await client.list_tools()).tools}["run"]
        assert run.input_schema["properties"]["env"]["enum"][-2:] == ["data", "tools"]
        assert "No project directory is mounted." in (client.instructions or "")
        result = await client.call_tool("run", {"code": "jq -n 6*7; ls /project", "env": "tools"})
        assert result.structured_content["stdout"] == "42\n"  # PROJECT_DIR="": no project
        assert "No such file" in result.structured_content["stderr"]
        data = await client.call_tool("run", {"code": "print(6 * 7)", "env": "data"})
        assert data.structured_content["stdout"] == "42\n"

    with_client(home, env, body)
    assert (flake / "flake.lock").exists()
    missing = refusal(start(home, server_env(home, NIX_SANDBOX_ENVS=f"path:{flake}#nope")))
    assert missing.startswith(f"nixcell: NIX_SANDBOX_ENVS: building path:{flake}#nope failed: ")
    assert "does not provide attribute 'packages." in missing


@pytest.mark.parametrize(
    ("variables", "why"),
    [
        ({"SESSION_IDLE_TIMEOUT": "1"}, "ended after going unused (1s)"),
        (
            {"SESSION_MAX_LIFETIME": "1.5", "SESSION_IDLE_TIMEOUT": "600"},
            "reached the maximum session lifetime (1.5s)",
        ),
    ],
)
def test_session_variables_end_sessions(home, offline_set, variables, why):
    async def body(client: Client) -> None:
        first = await client.call_tool("run", {"code": "x = 1", "env": "python", "session": "s"})
        assert not first.is_error, first.content[0].text
        await anyio.sleep(4)  # well past the limit (the reaper looks every limit/4)
        again = await client.call_tool("run", {"code": "print(x)", "env": "python", "session": "s"})
        assert "NameError" in again.structured_content["stderr"]
        assert f"session 's' {why}" in again.content[0].text

    with_client(home, server_env(home, **variables), body)


def test_nix_sandbox_mcps_flags(home, offline_set):
    """--stdio (the default transport) and --log-level, as nix-sandbox-mcp's daemon took them."""

    def mcp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NIXCELL, "mcp", *args],
            capture_output=True,
            text=True,
            cwd=home,
            env=server_env(home),
            stdin=subprocess.DEVNULL,
            timeout=300,
        )

    contradiction = mcp("--stdio", "--transport", "http")
    assert contradiction.returncode == 2
    assert contradiction.stderr.startswith("nixcell: --stdio and --transport http contradict")
    quiet = mcp("--stdio", "--log-level", "error")
    assert (quiet.returncode, quiet.stderr) == (0, "")
    chatty = mcp("--stdio", "--log-level", "trace")
    assert chatty.returncode == 0 and "nixcell: INFO nixcell.mcp.stdio: stdin closed" in (
        chatty.stderr
    )
