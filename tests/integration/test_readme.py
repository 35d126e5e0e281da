"""The README (and docs/mcp.md) as a user reads them: every example runs as written.

Each ```console, ```python and MCP ```json block is run (conventions: tests/integration/
docblocks.py), so a command added to the docs later is tested with no change here, and one that
fails names itself (file:line, the command, its output). The user's machine is simulated once:

- commands run with bash, one after another, in one scratch directory holding a copy of
  ``examples/`` and the checkout's ``.venv`` (so ``nixcell`` and ``.venv/bin/nixcell`` both work),
  with a scratch ``HOME`` and the host's ``GITHUB_TOKEN`` set to a fresh fake token;
- network: a ``nixcell run`` that uses the network (``--allow-host``, ``--policy``, ``--learn``,
  ``--credential``, ``--allow-cidr``) gets ``--resolve HOST:ADDR --allow-cidr ADDR/32
  --upstream-ca CA`` for every host its URLs name, ADDR being a loopback server that answers like
  those APIs (fakeapi.py). Nothing leaves loopback. The real token must never be printed.
- ``NOT_RUN`` lists, with the reason, the few commands that cannot run inside a test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import anyio
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from tests.conftest import REPO
from tests.integration import docblocks, fakeapi

pytestmark = pytest.mark.integration

DOCS = ("README.md", "docs/mcp.md")
NOT_RUN = {  # a regex matching the command -> why the test does not run it
    r"^\./setup\b": "it made this machine (apt, pip, the shared offline set)",
    r"^\./test\b": "it is the suite this test is part of",
    r"^nixcell mcp\b.*--transport http": "it serves a fixed port until stopped (see mcp tests)",
}
COMMAND_TIMEOUT = 300
NET_FLAGS = re.compile(r"\s--(allow-host|policy|learn|credential|allow-cidr)\b")
URL_HOST = re.compile(r"https?://([A-Za-z0-9.-]+)")
RUN = re.compile(r"(?:^|(?<=[\s;&|(]))((?:\.venv/bin/)?nixcell run)(?=\s)")


def _blocks() -> list[tuple[str, docblocks.Block]]:
    return [(doc, b) for doc in DOCS for b in docblocks.blocks((REPO / doc).read_text())]


BLOCKS = [
    (doc, b)
    for doc, b in _blocks()
    if b.lang in ("console", "python") or (b.lang == "json" and "mcpServers" in b.text)
]
HOSTS = sorted({h for _, b in BLOCKS for h in URL_HOST.findall(b.text) if not h[0].isdigit()})


@pytest.fixture(scope="module")
def scratch(offline_set, tmp_path_factory) -> Path:
    """The user's checkout after ./setup: examples/ and .venv, nothing of ours."""
    where = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "examples", where / "examples")
    (where / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (where / "home").mkdir()
    return where


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    if os.getuid() != 0:
        pytest.skip("the stand-in APIs listen on port 443 (needs root)")
    server = fakeapi.start(HOSTS, tmp_path_factory.mktemp("fakeapi"))
    yield server
    server.stop()


def user_env(scratch: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(scratch / "home"),
        "XDG_CONFIG_HOME": str(scratch / "home" / ".config"),
        "GITHUB_TOKEN": fakeapi.REAL_TOKEN,
    }


def with_network(command: str, api: fakeapi.FakeApi) -> str:
    """``command`` with the loopback flags after each networked ``nixcell run``."""
    if not NET_FLAGS.search(command):
        return command
    hosts = sorted(set(URL_HOST.findall(command)))
    flags = " ".join(api.flags(hosts))
    return RUN.sub(lambda m: f"{m.group(1)} {flags}", command)


def not_run(command: str) -> str | None:
    return next((why for pat, why in NOT_RUN.items() if re.search(pat, command)), None)


def run_console(doc: str, block: docblocks.Block, scratch: Path, api: fakeapi.FakeApi) -> None:
    for command in docblocks.commands(block):
        where = f"{doc}:{command.line}: `{command.text}`"
        if not_run(command.text):
            continue
        if re.match(r"^nixcell mcp\b", command.text):
            argv = command.text.split("#", 1)[0].split()
            check_mcp_server(where, "nixcell", argv[1:], None, scratch)
            continue
        try:
            result = subprocess.run(
                ["bash", "-c", with_network(command.text, api)],
                cwd=scratch,
                env=user_env(scratch),
                stdin=subprocess.DEVNULL,  # typed at a prompt, but the output is captured: pipes
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=COMMAND_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{where} still ran after {COMMAND_TIMEOUT} s")
        output = result.stdout.decode(errors="replace")
        assert fakeapi.REAL_TOKEN not in output, f"{where} printed the real token"
        assert result.returncode == command.exit_code, (
            f"{where} exited {result.returncode}, the docs say {command.exit_code}:\n{output}"
        )
        lost = docblocks.missing(command.expected, output)
        assert lost is None, f"{where} did not print {lost!r}; it printed:\n{output}"


def run_python(doc: str, block: docblocks.Block, scratch: Path) -> None:
    script = scratch / f"block-{block.line}.py"
    script.write_text(block.text + "\n")
    result = subprocess.run(
        [sys.executable, script.name],
        cwd=scratch,
        env=user_env(scratch),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    where = f"{doc}:{block.line}: python block"
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, f"{where} failed:\n{output}{result.stderr.decode()}"
    lost = docblocks.missing(docblocks.python_expected(block), output)
    assert lost is None, f"{where} did not print {lost!r}; it printed:\n{output}"


def run_mcp_config(doc: str, block: docblocks.Block, scratch: Path) -> None:
    servers = json.loads(block.text)["mcpServers"]
    for name, server in servers.items():
        cwd = server.get("cwd")
        cwd = cwd if cwd and os.path.isdir(cwd) else None  # "/path/to/project": the scratch dir
        check_mcp_server(
            f"{doc}:{block.line}: server {name!r}", server["command"], server["args"], cwd, scratch
        )


def configured_envs(args: list[str], cwd: Path) -> list[str]:
    """The environments a ``--config FILE`` among ``args`` defines (none without one)."""
    if "--config" not in args:
        return []
    config = cwd / args[args.index("--config") + 1]
    return list(tomllib.loads(config.read_text()).get("environments", {}))


def check_mcp_server(
    where: str, command: str, args: list[str], cwd: str | None, scratch: Path
) -> None:
    """Start the server as the client config says and run ``print(6*7)`` in its python env."""
    env = user_env(scratch)
    program = shutil.which(command, path=env["PATH"])
    assert program, f"{where}: {command} is not on PATH"
    (scratch / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(scratch / "tmp")
    params = StdioServerParameters(command=program, args=args, cwd=cwd or str(scratch), env=env)

    async def main():
        async with Client(params) as client:
            tools = await client.list_tools()
            result = await client.call_tool("run", {"code": "print(6*7)", "env": "python"})
            return {t.name: t.description or "" for t in tools.tools}, result

    tools, result = anyio.run(main)
    assert "run" in tools, f"{where}: no run tool ({list(tools)})"
    for env_name in configured_envs(args, Path(cwd or scratch)):
        assert env_name in tools["run"], f"{where}: environment {env_name!r} not offered"
    assert result.structured_content["stdout"] == "42\n", f"{where}: {result}"


@pytest.mark.parametrize(
    ("doc", "block"), BLOCKS, ids=[f"{doc}:{b.line}:{b.lang}" for doc, b in BLOCKS]
)
def test_doc_block_runs_as_written(doc, block, scratch, api):
    if block.lang == "console":
        run_console(doc, block, scratch, api)
    elif block.lang == "python":
        run_python(doc, block, scratch)
    else:
        run_mcp_config(doc, block, scratch)


def test_the_credential_example_sent_the_real_token_to_its_host_only(scratch, api):
    """After the README's blocks (module order): the swap happened on the wire, for GitHub."""
    used = [s for s in api.seen if s[3] == f"Bearer {fakeapi.REAL_TOKEN}"]
    if not any(b.lang == "console" and "--credential" in b.text for _, b in BLOCKS):
        pytest.skip("the docs have no credential example")
    assert used, f"no request carried the real token: {api.seen}"
    assert all(s[0].split(":")[0] == "api.github.com" for s in used), used


def test_a_failing_example_fails_naming_itself(scratch):
    """The harness itself, from several sides: exit code, output, order, notes, wildcards."""
    api = fakeapi.FakeApi("127.0.0.9", Path("/nonexistent/ca.pem"))
    fine = docblocks.Block("console", 1, "$ printf 'a 1 b\\nnoise\\nz\\n'\na ... b  # note\nz")
    run_console("X.md", fine, scratch, api)
    for text, message in [
        ("$ false", r"X\.md:2: `false` exited 1, the docs say 0"),
        ("$ true  # exit 3", r"X\.md:2: `true  # exit 3` exited 0, the docs say 3"),
        ("$ echo b; echo a\na\nb", r"X\.md:2: `echo b; echo a` did not print 'b'"),
        ("$ echo one\n$ echo two\nthree", r"X\.md:3: `echo two` did not print 'three'"),
    ]:
        with pytest.raises(AssertionError, match=message):
            run_console("X.md", docblocks.Block("console", 1, text), scratch, api)


@pytest.mark.parametrize(
    ("command", "flagged"),
    [
        ("nixcell run -p curl --allow-host a.test -- curl https://a.test/x", "nixcell run"),
        ("x=1 .venv/bin/nixcell run --policy p -- curl http://a.test", ".venv/bin/nixcell run"),
        ("nixcell run --learn -p curl -- curl https://a.test/ > out.toml", "nixcell run"),
        ("nixcell run -p curl -- curl https://a.test/", None),  # no network flag: no network
        ("nixcell policy check https://a.test/ --policy p.toml", None),  # not a cell
    ],
)
def test_network_commands_get_the_loopback_flags(command, flagged):
    api = fakeapi.FakeApi("127.0.0.9", Path("/ca.pem"))
    changed = with_network(command, api)
    if flagged is None:
        assert changed == command
        return
    flags = " ".join(api.flags(["a.test"]))
    assert changed == command.replace(flagged, f"{flagged} {flags}", 1)
    assert "--resolve=a.test:127.0.0.9" in changed and "--allow-cidr=127.0.0.9/32" in changed
