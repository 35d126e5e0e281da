"""The MCP server's ``backend`` key end to end, with the official SDK client over stdio: an
environment on an explicit bwrap backend runs (one-shot and session), one on a backend this host
cannot run (systemd: no PID 1 here) is a clear error result, never a crash, while the others
stay usable."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp.client import Client
from tests.integration.test_mcp_server import with_client

pytestmark = pytest.mark.integration

CONFIG = """
[defaults]
timeout_seconds = 20
backend = "jail"

[environments.jailed]
preset = "shell"
backend = "bwrap"

[environments.unit]
preset = "shell"
backend = "systemd"
"""


@pytest.fixture
def project(offline_set, tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "xdg").mkdir()  # no custom environments of the machine's user
    return tmp_path / "project"


def test_bwrap_runs_and_an_unavailable_backend_is_an_error_result(project: Path):
    config = project.parent / "config.toml"
    config.write_text(CONFIG)

    async def body(client: Client) -> None:
        description = (await client.list_tools()).tools[0].description
        assert "UNAVAILABLE: the systemd backend cannot run here" in description
        ok = await client.call_tool("run", {"code": "echo hi; id -u", "env": "jailed"})
        assert not ok.is_error and ok.structured_content["stdout"] == "hi\n1000\n"
        kept = await client.call_tool("run", {"code": "x=7", "env": "jailed", "session": "s"})
        assert not kept.is_error, kept.content[0].text
        again = await client.call_tool("run", {"code": "echo $x", "env": "jailed", "session": "s"})
        assert again.structured_content["stdout"] == "7\n"  # sessions stay on bwrap
        refused = await client.call_tool("run", {"code": "echo hi", "env": "unit"})
        assert refused.is_error
        text = refused.content[0].text
        assert text.startswith("environment 'unit' is unavailable: the systemd backend cannot")
        assert "\n" not in text.strip() and "Traceback" not in text
        session = await client.call_tool("run", {"code": "1", "env": "unit", "session": "s"})
        assert session.is_error and "unavailable" in session.content[0].text
        after = await client.call_tool("run", {"code": "echo still", "env": "jailed"})
        assert after.structured_content["stdout"] == "still\n"  # the server lives on

    with_client(project, body, "--config", str(config))
