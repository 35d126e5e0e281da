"""`nixcell mcp` driven by the official MCP SDK client over stdio (and HTTP), as a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from tests.conftest import NIXCELL

pytestmark = pytest.mark.integration

CONFIG = """
[defaults]
timeout_seconds = 20
memory_mb = 256

[project]
path = "{project}"
mount_point = "/src"

[environments.python]
preset = "python"

[environments.shell]
preset = "shell"

[environments.small]
preset = "python"
memory_mb = 128
timeout_seconds = 2
sessions = false

[environments.broken]
packages = ["no-such-package-xyz"]

[environments.net]
preset = "shell"
allow_hosts = ["api.example.com"]
"""


@pytest.fixture
def project(offline_set, tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "hello.txt").write_text("hello from the project\n")
    (tmp_path / "xdg").mkdir()  # no custom environments of the machine's user
    return tmp_path / "project"


def _params(project: Path, *args: str) -> StdioServerParameters:
    keep = ("NIXCELL_HOME", "NIXCELL_OFFLINE_DIR", "PYTHONDONTWRITEBYTECODE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["XDG_CONFIG_HOME"] = str(project.parent / "xdg")
    (project.parent / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(project.parent / "tmp")  # its session workspaces: this test's own
    return StdioServerParameters(command=NIXCELL, args=["mcp", *args], cwd=str(project), env=env)


def with_client(
    project: Path, body: Callable[[Client], Awaitable[Any]], *args: str, **client: Any
) -> Any:
    async def main() -> Any:
        async with Client(_params(project, *args), **client) as session:
            return await body(session)

    return anyio.run(main)


def configured(project: Path) -> str:
    path = project.parent / "config.toml"
    path.write_text(CONFIG.format(project=project))
    return str(path)


def bwrap_pids() -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "bwrap":
                pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def test_presets_listed_and_print_runs(project):
    async def body(client: Client) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        run = tools["run"]
        for name in ("shell: bash", "python: python", "node: node", "/project", "jq"):
            assert name in run.description
        assert len(run.description) / 4 < 400, run.description  # ~4 characters per token
        assert len(run.description.split()) * 4 / 3 < 400
        assert run.input_schema["required"] == ["code", "env"]
        result = await client.call_tool("run", {"code": "print(1)", "env": "python"})
        assert not result.is_error
        assert result.content[0].text == "1\nexit code: 0"
        assert result.structured_content["stdout"] == "1\n"
        assert result.structured_content["exit_code"] == 0
        assert result.structured_content["timed_out"] is False
        node = await client.call_tool("run", {"code": "console.log(6 * 7)", "env": "node"})
        assert node.structured_content["stdout"] == "42\n"
        shell = await client.call_tool("run", {"code": "echo a | sed s/a/b/; pwd", "env": "shell"})
        assert shell.structured_content["stdout"] == "b\n/workspace\n"

    with_client(project, body)


def test_errors_are_results(project):
    async def body(client: Client) -> None:
        failed = await client.call_tool(
            "run", {"code": "import sys\nprint('out')\nsys.exit('bad')", "env": "python"}
        )
        assert failed.is_error
        assert failed.structured_content["exit_code"] == 1
        text = failed.content[0].text
        assert text == "out\n--- stderr ---\nbad\nexit code: 1"
        unknown = await client.call_tool("run", {"code": "1", "env": "ruby"})
        assert unknown.is_error
        assert (
            "unknown environment 'ruby'; available: shell, python, node" in unknown.content[0].text
        )
        missing = await client.call_tool("run", {"env": "python"})
        assert missing.is_error and "'code'" in missing.content[0].text
        trace = await client.call_tool("run", {"code": "1/0", "env": "python"})
        assert 'File "/workspace/.nixcell/main.py", line 1' in trace.structured_content["stderr"]

    with_client(project, body)


def test_limits_are_enforced(project):
    async def body(client: Client) -> None:
        tools = (await client.list_tools()).tools
        assert "small: python; python3, pyyaml, coreutils" in tools[0].description
        assert "2 s, 128 MB memory" in tools[0].description
        ok = await client.call_tool("run", {"code": "x = b'x' * (16 << 20)", "env": "small"})
        assert not ok.is_error, ok.content[0].text
        oom = await client.call_tool("run", {"code": "x = b'x' * (1 << 30)", "env": "small"})
        assert oom.is_error
        assert oom.structured_content["exit_code"] == 137
        assert "out of memory (limit 128M)" in oom.content[0].text
        slow = await client.call_tool("run", {"code": "while True: pass", "env": "small"})
        assert slow.is_error and slow.structured_content["timed_out"] is True
        assert slow.content[0].text.endswith("(timed out after 2s)\nexit code: 124")
        big = await client.call_tool("run", {"code": "yes | head -c 3000000", "env": "shell"})
        assert big.structured_content["truncated"] is True
        assert len(big.structured_content["stdout"]) < (1 << 20) + 200
        assert "[output cut at 1 MiB: 1951424 more bytes not shown]" in big.content[0].text

    with_client(project, body, "--config", configured(project))


def test_broken_and_networked_environments(project):
    async def body(client: Client) -> None:
        description = (await client.list_tools()).tools[0].description
        assert "broken: bash; no-such-package-xyz" in description
        assert "UNAVAILABLE: unknown package 'no-such-package-xyz'" in description
        broken = await client.call_tool("run", {"code": "echo hi", "env": "broken"})
        assert broken.is_error
        assert broken.content[0].text.startswith("environment 'broken' is unavailable: ")
        shell = await client.call_tool("run", {"code": "echo hi", "env": "shell"})
        assert shell.structured_content["stdout"] == "hi\n"
        assert "net: bash; bash" in description and "network: api.example.com" in description
        net = await client.call_tool("run", {"code": "echo $HTTPS_PROXY", "env": "net"})
        assert net.structured_content["stdout"] == "http://127.0.0.1:3128\n", net.content

    with_client(project, body, "--config", configured(project))


def test_sessions_keep_state(project):
    try:
        import nixcell.mcp.sessions  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"persistent sessions are not there yet (nixcell.mcp.sessions: {exc})")

    def run(code: str, env: str = "python", session: str = "s1") -> dict[str, Any]:
        return {"code": code, "env": env, "session": session}

    async def body(client: Client) -> None:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"run", "close_session", "list_sessions"} <= names
        assert not (await client.call_tool("run", run("x = 41"))).is_error
        second = await client.call_tool("run", run("print(x + 1)"))
        assert second.structured_content["stdout"] == "42\n", second.content[0].text
        assert second.structured_content["session"] == "s1"
        shell = await client.call_tool("run", run("cd /tmp; y=7", "shell", "sh"))
        assert not shell.is_error, shell.content[0].text
        shell = await client.call_tool("run", run("echo $y $PWD", "shell", "sh"))
        assert shell.structured_content["stdout"] == "7 /tmp\n"
        listed = await client.call_tool("list_sessions", {})
        assert "s1" in listed.content[0].text and "sh" in listed.content[0].text
        refused = await client.call_tool("run", run("1", "small", "s2"))
        assert refused.is_error and "has no sessions" in refused.content[0].text
        assert (await client.call_tool("run", run("1", session="a b"))).is_error
        assert not (await client.call_tool("close_session", {"session": "s1"})).is_error
        assert (await client.call_tool("close_session", {"session": "s1"})).is_error
        # "sh" stays open: the server's shutdown at stdin EOF must end it

    with_client(project, body, "--config", configured(project))
    assert own_bwraps() == set()  # none of this test's cells is left


def test_project_read_only_workspace_writable_no_network(project):
    listener = socket.create_server(("127.0.0.1", 0))  # a host service the cell must not reach
    port = listener.getsockname()[1]
    code = f"""
import errno, os, socket
print(open('/src/hello.txt').read(), end='')
try:
    open('/src/new.txt', 'w')
except OSError as exc:
    print('read-only', exc.errno == errno.EROFS)
open('/workspace/w.txt', 'w').write('ok')
print(os.getcwd(), sorted(os.listdir('/workspace')))
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=3)
    print('connected')
except OSError as exc:
    print('no network', exc.errno)
# no route anywhere (checked without sending a packet to any non-loopback address)
print('routes', len(open('/proc/net/route').read().splitlines()) - 1)
"""

    async def body(client: Client) -> None:
        result = await client.call_tool("run", {"code": code, "env": "python"})
        lines = result.structured_content["stdout"].splitlines()
        assert lines[:3] == [
            "hello from the project",
            "read-only True",
            "/workspace ['.nixcell', 'w.txt']",
        ], result.content[0].text
        assert lines[3].split()[:2] == ["no", "network"]
        assert lines[4] == "routes 0"

    with listener:
        with_client(project, body, "--config", configured(project))
    assert not (project / "new.txt").exists()


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_logging_set_level(project):
    received: list[tuple[str, str]] = []

    async def on_log(params: Any) -> None:
        received.append((params.level, str(params.data)))

    async def body(client: Client) -> None:
        await client.call_tool("run", {"code": "print(1)", "env": "python"})
        assert not [m for m in received if m[0] == "debug"]
        await client.set_logging_level("debug")
        await client.call_tool("run", {"code": "print(1)", "env": "python"})
        await anyio.sleep(0.2)  # notifications arrive before the response; allow for slack
        assert any(lvl == "debug" and "exited 0" in msg for lvl, msg in received), received
        assert client.server_capabilities.logging is not None

    with_client(project, body, mode="legacy", logging_callback=on_log)


def test_ten_sessions_in_parallel_from_one_client(project):
    """Ten sessions driven at once through one MCP client: each keeps its own state."""

    async def body(client: Client) -> list[str]:
        async def one(i: int, out: list[str]) -> None:
            first = await client.call_tool(
                "run", {"code": f"v = {i}", "env": "python", "session": f"p{i}"}
            )
            assert not first.is_error, first.content[0].text
            code = "import time; time.sleep(0.2); v *= 10; print(v)"
            second = await client.call_tool(
                "run", {"code": code, "env": "python", "session": f"p{i}"}
            )
            out[i] = second.structured_content["stdout"]

        out = [""] * 10
        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(one, i, out)
        return out

    out = with_client(project, body, "--config", configured(project), "--max-sessions", "16")
    assert out == [f"{i * 10}\n" for i in range(10)]
    assert own_bwraps() == set()  # none of this test's cells is left


@pytest.mark.parametrize("how", ["sigterm", "stdin-eof"])
def test_stopping_with_live_sessions_leaves_nothing(project, how):
    from nixcell.sandbox.cgroups import list_cell_cgroups

    proc = _start_raw(
        project, {"code": "import time; time.sleep(60)", "env": "python", "session": "s"}
    )
    cells = _wait_for_cell(proc)
    time.sleep(1.0)  # the session cell is up and running the call
    if how == "stdin-eof":  # the client is gone while its call runs
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdin = None
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert cells & bwrap_pids() == set()  # every cell of the server is gone
    assert _cgroups_of(proc, list_cell_cgroups()) == []
    assert not list((project.parent / "tmp").glob("nixcell-session-*"))


def _popen(project: Path, *args: str) -> subprocess.Popen[bytes]:
    """`nixcell mcp ARGS` with the test's environment, its stdio pipes ours."""
    params = _params(project, *args)
    return subprocess.Popen(
        [params.command, *params.args],
        cwd=params.cwd,
        env={**os.environ, **(params.env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _start_raw(project: Path, arguments: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
    proc = _popen(project)
    assert proc.stdin is not None and proc.stdout is not None

    def send(message: dict[str, Any]) -> None:
        proc.stdin.write((json.dumps({"jsonrpc": "2.0", **message}) + "\n").encode())  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]

    info = {"name": "t", "version": "1"}
    init = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": info}
    send({"id": 1, "method": "initialize", "params": init})
    assert json.loads(proc.stdout.readline())["id"] == 1
    send({"method": "notifications/initialized"})
    args = {"name": "run", "arguments": arguments or {"code": "sleep 60", "env": "shell"}}
    send({"id": 2, "method": "tools/call", "params": args})
    return proc


def own_bwraps() -> set[int]:
    """bwrap processes of this test process's servers (orphans come back to us: we are a
    subreaper), not of the other tests running on the machine."""
    return {p for p in bwrap_pids() if _descends(p, os.getpid())}


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(status.split("PPid:", 1)[1].split()[0])
    return False


def _cgroups_of(server: subprocess.Popen[bytes], cgroups: list[Path]) -> list[Path]:
    """The cell cgroups ``server`` made (named ``PID-RANDOM`` by the runner)."""
    return [c for c in cgroups if c.name.split("-", 1)[0] == str(server.pid)]


def _wait_for_cell(server: subprocess.Popen[bytes]) -> set[int]:
    """The bwrap processes of ``server``'s cells (not of other tests running alongside)."""
    deadline = time.monotonic() + 60
    while not (ours := {p for p in bwrap_pids() if _descends(p, server.pid)}):
        assert time.monotonic() < deadline, "the cell never started"
        time.sleep(0.05)
    return ours


@pytest.mark.parametrize("how", ["stdin-eof", "sigterm", "sigint"])
def test_server_stops_cleanly(project, how):
    from nixcell.sandbox.cgroups import list_cell_cgroups

    proc = _start_raw(project)
    cells = _wait_for_cell(proc)
    if how == "stdin-eof":
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdin = None  # communicate() must not flush it
    else:
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err
    assert cells & bwrap_pids() == set()  # every cell of the server is gone
    assert _cgroups_of(proc, list_cell_cgroups()) == []


def test_bad_config_is_one_line(project, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[defaults]\ntimeout_seconds = 5\n\n[environments.py]\npreset = "pyton"\n')
    proc = subprocess.run([NIXCELL, "mcp", "--config", str(bad)], capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.decode() == (
        f"nixcell: {bad}:5: unknown preset 'pyton' (expected shell, python, node, python-data)\n"
    )
    assert proc.stdout == b""
    missing = subprocess.run([NIXCELL, "mcp", "--config", "/nonexistent.toml"], capture_output=True)
    assert missing.returncode == 2
    assert missing.stderr.decode().count("\n") == 1


def test_http_transport_with_rebinding_protection(project):
    import urllib.error
    import urllib.request

    params = _params(project)
    proc = subprocess.Popen(
        [params.command, "mcp", "--transport", "http", "--port", "0"],
        cwd=params.cwd,
        env={**os.environ, **(params.env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = _served_url(proc)
        assert url.startswith("http://127.0.0.1:")

        async def main() -> str:
            async with Client(url) as client:
                result = await client.call_tool("run", {"code": "print(3)", "env": "python"})
                return result.content[0].text

        assert anyio.run(main) == "3\nexit code: 0"
        request = urllib.request.Request(
            url, data=b"{}", headers={"Host": "evil.example", "Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code in (403, 421)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out == b""  # logging goes to stderr only


def _served_url(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        if b"serving MCP on " in line:
            return line.decode().split("serving MCP on ", 1)[1].strip()
    raise AssertionError("the server did not log its URL")
