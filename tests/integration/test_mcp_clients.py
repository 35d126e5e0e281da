"""MCP clients of one HTTP server are separate trust domains (issue 8 §7).

Sessions are keyed by (MCP session, name): another client cannot read, list, close or evict
them — by name, by list_sessions, or with a forged or altered Mcp-Session-Id — and they end
with their MCP session. Sharing is an explicit option. Real server, real cells, loopback HTTP,
one client the SDK's own (``mcp.client``), the others raw.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from tests.integration.mcp_http import INIT, Raw, http_server, text

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("offline_set")]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "xdg").mkdir()
    return tmp_path / "project"


def run(code: str, session: str) -> dict[str, Any]:
    return {"code": code, "env": "python", "session": session}


def names(result: dict[str, Any]) -> list[str]:
    return sorted(s["id"] for s in result["structuredContent"]["sessions"])


def workspaces(project: Path) -> set[int]:
    """The server's live session cells: agents descended from this test process (a session's
    workspace is a volume held by fds, not a directory one could count)."""
    parents: dict[int, int] = {}
    agents = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
        if comm != "bwrap" and b"/run/nixcell/agent.py\0--fd" in cmdline:
            agents.add(int(entry))
    mine = set()
    for pid in agents:
        seen, up = set(), pid
        while up > 1 and up not in seen:
            seen.add(up)
            if up == os.getpid():
                mine.add(pid)
                break
            up = parents.get(up, 0)
    return mine


def sdk(url: str, *calls: tuple[str, dict[str, Any]], mode: str = "legacy") -> list[Any]:
    """The SDK's client: the results of ``calls``, in order. ``legacy``: the initialize
    handshake, one MCP session; ``auto``: the SDK's default, 2026-07-28 (no MCP session)."""

    async def main() -> list[Any]:
        async with Client(url, mode=mode) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return anyio.run(main)


def test_clients_cannot_see_use_or_close_each_others_sessions(project):
    with http_server(project) as url:
        a = Raw(url)
        a_id = a.initialize()
        assert not a.tool("run", run("secret = 'of-a'", "s"))["isError"]

        listed, used, closed, closed_again, listed_after = sdk(
            url,
            ("list_sessions", {}),
            ("run", run("print(globals().get('secret'))", "s")),  # same name: B's own session
            ("close_session", {"session": "s"}),  # closes B's "s", not A's
            ("close_session", {"session": "s"}),
            ("list_sessions", {}),
        )
        assert listed.structured_content["sessions"] == [], listed
        assert used.structured_content["stdout"] == "None\n", used.content[0].text
        assert not closed.is_error and closed_again.is_error
        assert "no session 's'" in closed_again.content[0].text
        assert listed_after.structured_content["sessions"] == []

        b = Raw(url)
        b.initialize()
        assert b.tool("close_session", {"session": "s"})["isError"]  # B has none named "s"
        assert names(b.tool("list_sessions", {})) == []

        # Forged, replayed-after-change and malformed session ids never reach A's state.
        forged = [
            uuid.uuid4().hex,
            a_id.upper(),
            a_id[:-1] + ("0" if a_id[-1] != "0" else "1"),
            a_id + "0",
            a_id[:16],
            "../" + a_id,
        ]
        for sid in forged:
            status, answer = b.call(
                "tools/call", {"name": "run", "arguments": run("print(secret)", "s")}, session=sid
            )
            assert status in (400, 404), (sid, status, answer)
            assert "of-a" not in repr(answer)
            listing = {"name": "list_sessions", "arguments": {}}
            status, answer = b.call("tools/call", listing, session=sid)
            assert status in (400, 404), (sid, status)
            assert b.request("DELETE", session=sid)[0] in (400, 404), sid  # cannot end A's
        # Nor can a client pick its own id (to plant one, or to take one over): initialize with
        # a chosen id is refused; only the SDK mints ids.
        for sid in (uuid.uuid4().hex, a_id + "0"):
            status, _ = b.call("initialize", dict(INIT), session=sid)
            assert status == 404, (sid, status)

        # A's session is untouched by all of it.
        assert names(a.tool("list_sessions", {})) == ["s"]
        kept = a.tool("run", run("print(secret)", "s"))
        assert kept["structuredContent"]["stdout"] == "of-a\n", text(kept)


def test_two_sdk_clients_at_once_each_keep_their_own_state(project):
    """Two SDK clients, connected at the same time, calling the same session name in
    parallel: each sees only what it wrote."""

    async def use(client: Client, tag: str) -> list[str]:
        out = []
        for i in range(4):
            code = f"v = globals().get('v', []) + ['{tag}{i}']; print(','.join(v))"
            result = await client.call_tool("run", run(code, "same"))
            out.append(result.structured_content["stdout"].strip())
        listed = await client.call_tool("list_sessions", {})
        out.append(",".join(s["id"] for s in listed.structured_content["sessions"]))
        return out

    async def main() -> tuple[list[str], list[str]]:
        async with Client(url, mode="legacy") as a, Client(url, mode="legacy") as b:
            results: dict[str, list[str]] = {}

            async def one(client: Client, tag: str) -> None:
                results[tag] = await use(client, tag)

            async with anyio.create_task_group() as tg:
                tg.start_soon(one, a, "a")
                tg.start_soon(one, b, "b")
            return results["a"], results["b"]

    with http_server(project) as url:
        seen_a, seen_b = anyio.run(main)
    for tag, seen in (("a", seen_a), ("b", seen_b)):
        assert seen[:4] == [",".join(f"{tag}{j}" for j in range(i + 1)) for i in range(4)], seen
        assert seen[4] == "same"


def test_one_client_cannot_evict_anothers_sessions(project):
    with http_server(project, "--max-sessions", "3", "--max-client-sessions", "2") as url:
        a, b, c = Raw(url), Raw(url), Raw(url)
        for client in (a, b, c):
            client.initialize()
        for name in ("s", "t"):
            assert not a.tool("run", run(f"mine = 'a-{name}'", name))["isError"]
        for name in ("u", "v", "w"):  # past its own limit and the server's: evicts its own
            result = b.tool("run", run("mine = 'b'", name))
            assert not result["isError"], text(result)
        assert names(b.tool("list_sessions", {})) == ["w"]  # u, v evicted, each for B's next
        refused = c.tool("run", run("1", "x"))  # the server is full of A's and B's sessions
        assert refused["isError"] and "maximum of 3 sessions" in text(refused)
        assert not c.tool("run", {"code": "print(1)", "env": "python"})["isError"]  # one-shot
        assert names(a.tool("list_sessions", {})) == ["s", "t"]
        for name in ("s", "t"):
            kept = a.tool("run", run("print(mine)", name))
            assert kept["structuredContent"]["stdout"] == f"a-{name}\n", text(kept)


def test_ending_the_mcp_session_closes_its_cells(project):
    with http_server(project) as url:
        a, b = Raw(url), Raw(url)
        a.initialize()
        b.initialize()
        assert not a.tool("run", run("x = 1", "s"))["isError"]
        assert not b.tool("run", run("y = 2", "s"))["isError"]
        assert len(workspaces(project)) == 2
        assert a.delete() == 200
        status, _ = a.call("tools/call", {"name": "list_sessions", "arguments": {}})
        assert status == 404  # the id is dead; nothing of A's answers any more
        deadline = time.monotonic() + 60
        while len(workspaces(project)) != 1:
            assert time.monotonic() < deadline, "A's session cell was never closed"
            time.sleep(0.1)
        kept = b.tool("run", run("print(y)", "s"))  # B is unaffected
        assert kept["structuredContent"]["stdout"] == "2\n", text(kept)
    assert workspaces(project) == set()


def test_sharing_is_explicit(project, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[session]\nshare_sessions = true\n")
    for args in (["--share-sessions"], ["--config", str(config)]):
        with http_server(project, *args) as url:
            a, b = Raw(url), Raw(url)
            a.initialize()
            b.initialize()
            assert not a.tool("run", run("shared = 'yes'", "common"))["isError"]
            assert names(b.tool("list_sessions", {})) == ["common"]
            seen = b.tool("run", run("print(shared)", "common"))
            assert seen["structuredContent"]["stdout"] == "yes\n", text(seen)
            assert not b.tool("close_session", {"session": "common"})["isError"]
            assert names(a.tool("list_sessions", {})) == []


def test_http_request_without_mcp_session_has_no_sessions(project):
    """The stateless 2026-07-28 era (the SDK client's default) has no Mcp-Session-Id: session
    calls are refused (fail closed), one-shot calls work; with sharing on they work."""
    calls = [
        ("run", run("x = 1", "s")),
        ("list_sessions", {}),
        ("run", {"code": "print(5)", "env": "python"}),
    ]

    async def offered(url: str, mode: str) -> set[str]:
        async with Client(url, mode=mode) as client:
            return {t.name for t in (await client.list_tools()).tools}

    with http_server(project) as url:
        refused, unlisted, once = sdk(url, *calls, mode="auto")
        assert anyio.run(offered, url, "auto") == {"run"}  # session tools not offered
        assert anyio.run(offered, url, "legacy") == {"run", "close_session", "list_sessions"}
    for result in (refused, unlisted):
        assert result.is_error and "belong to an MCP session" in result.content[0].text
    assert once.structured_content["stdout"] == "5\n"
    with http_server(project, "--share-sessions") as url:
        kept, listed, once = sdk(url, *calls, mode="auto")
    assert not kept.is_error and [s["id"] for s in listed.structured_content["sessions"]] == ["s"]


def test_log_level_is_per_client(project):
    """A's logging/setLevel decides what A is sent, not what B is sent."""

    def debug_lines(client: Raw) -> list[str]:
        args = {"name": "run", "arguments": {"code": "print(1)", "env": "python"}}
        call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": args}
        status, _, messages = client.request("POST", json.dumps(call).encode())
        assert status == 200
        return [
            m["params"]["data"]
            for m in messages
            if m.get("method") == "notifications/message" and m["params"]["level"] == "debug"
        ]

    with http_server(project) as url:
        a, b = Raw(url), Raw(url)
        a.initialize()
        b.initialize()
        status, answer = a.call("logging/setLevel", {"level": "debug"})
        assert status == 200 and answer["result"] == {}, answer
        assert any("exited 0" in line for line in debug_lines(a))
        assert debug_lines(b) == []


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
def test_an_idle_expired_mcp_session_closes_its_cells(project, monkeypatch):
    """The SDK ends an MCP session nobody used for its idle time (1 s here; in ``nixcell mcp``
    the larger of 30 min and --idle-timeout): its cells are closed, its id answers 404. The
    server runs in-process (real SDK session manager, uvicorn, cells) to set that idle time."""
    import socket
    import tempfile

    from nixcell.mcp.app import App
    from nixcell.mcp.config import load_config
    from nixcell.mcp.server import build_server
    from nixcell.mcp.transports import serve_http

    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(project.parent / "xdg"))
    temp = project.parent / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the session workspaces go here
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/mcp"
    seen: dict[str, Any] = {}

    def client() -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.05)
        a = Raw(url)
        a.initialize()
        seen["ran"] = a.tool("run", run("x = 1", "s"))
        seen["during"] = len(workspaces(project))
        while workspaces(project):  # no request now: the MCP session goes idle
            assert time.monotonic() < deadline + 60, "the idle MCP session's cell was not closed"
            time.sleep(0.1)
        seen["after"] = a.call("tools/call", {"name": "list_sessions", "arguments": {}})[0]

    async def main() -> None:
        app = App(
            load_config(None, None),
            max_sessions=4,
            idle_timeout=300,
            max_lifetime=3600,
            transport="http",
        )
        app.envs.start()
        stoppers: list[Any] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(serve_http, build_server(app), "127.0.0.1", port, stoppers, 1.0)
                await anyio.to_thread.run_sync(client)
                stoppers[0]()  # uvicorn's graceful stop
        finally:
            with anyio.CancelScope(shield=True):
                await app.shutdown()

    anyio.run(main)
    assert not seen["ran"]["isError"] and seen["during"] == 1
    assert seen["after"] == 404
