"""claude-code from the offline set, for real: the npm native build in nixcell cells.

Every cell here is the real CLI. The API is a loopback stand-in for api.anthropic.com
(fakeanthropic.py) reached through the proxy with ``--resolve``/``--allow-cidr``, so nothing
leaves loopback; the host's ANTHROPIC_API_KEY is a random test value, the cell gets a dummy
through ``--credential`` and the proxy puts the real one on the wire.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pexpect
import pytest
from tests.conftest import NIXCELL, cli
from tests.integration import fakeanthropic, fakeapi
from tests.integration.screen import Screen, screen_text

from nixcell.nix.offline import elf, recipe
from nixcell.nix.offline.stage import GLIBC_SONAMES, Glibc, SourceMissing, Stager
from nixcell.nix.offline.store import NO_SUBSTITUTERS

pytestmark = [pytest.mark.integration, pytest.mark.root]

# What the claude-code preset sets (docs/project.md, "claude-code"): no traffic beyond the API.
QUIET = {
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
}
POLICY = """\
[[rules]]
action = "allow"
credential = "anthropic"
[rules.pattern]
host = "api.anthropic.com"

[[credentials]]
name = "anthropic"
source = "env:ANTHROPIC_API_KEY"
hosts = ["api.anthropic.com"]
header = "x-api-key"
format = "{token}"
env = "ANTHROPIC_API_KEY"
"""
PROBE = "printenv ANTHROPIC_API_KEY LD_LIBRARY_PATH; ls -d /nix/store"
NEEDLE = "nixcell-needle"


class ProbingHandler(fakeanthropic.Handler):
    tool = ("Bash", {"command": PROBE, "description": "probe the cell"})


class GrepHandler(fakeanthropic.Handler):
    """claude's Grep tool: its embedded ripgrep, run by the real binary, not the launcher."""

    tool = ("Grep", {"pattern": NEEDLE, "path": "/tmp/g", "output_mode": "content"})


@pytest.fixture(scope="module")
def claude(offline_set) -> str:
    path = offline_set.packages.get("claude-code")
    if path is None:
        pytest.skip("claude-code is not in the offline set (npm registry unreachable at ./setup?)")
    return path


@pytest.fixture(scope="module")
def glibc(offline_set) -> str:
    return offline_set.packages["glibc"]


@pytest.fixture
def api(tmp_path):
    server = fakeapi.start(fakeanthropic.HOSTS, tmp_path, ProbingHandler)
    yield server
    server.stop()


@pytest.fixture
def text_api(tmp_path):
    """The fake API answering text only (no tool call)."""
    server = fakeapi.start(fakeanthropic.HOSTS, tmp_path, fakeanthropic.Handler)
    yield server
    server.stop()


def version_of(store_path: str) -> str:
    return Path(store_path).name.split("-claude-code-", 1)[1]


def run_args(api: fakeapi.FakeApi, tmp_path: Path, policy: str = POLICY) -> list[str]:
    """`nixcell run` holding claude-code, with the fake API and the anthropic credential."""
    policy_file = tmp_path / "anthropic.toml"
    policy_file.write_text(policy)
    args = ["run", "-p", "claude-code", "-p", "bash", "-p", "coreutils"]
    args += ["--policy", str(policy_file), "--credential", "anthropic"]
    args += ["--audit", str(tmp_path / "audit.jsonl"), *api.flags(fakeanthropic.HOSTS)]
    return args + [f"-e{k}={v}" for k, v in QUIET.items()]


def claude_run(
    api: fakeapi.FakeApi, tmp_path: Path, command: str, *flags: str
) -> subprocess.CompletedProcess[bytes]:
    """`nixcell run` of ``bash -c command`` (see ``run_args``); the real key is never printed."""
    env = {"ANTHROPIC_API_KEY": fakeanthropic.REAL_KEY}
    proc = cli(*run_args(api, tmp_path), *flags, "--", "bash", "-c", command, env=env)
    out = proc.stdout + proc.stderr
    assert fakeanthropic.REAL_KEY.encode() not in out, "the real key was printed"
    return proc


def cell_environ(stdout: bytes) -> dict[str, str]:
    """The ``cat /proc/self/environ | tr '\\0' '\\n'`` part of a cell's output."""
    pairs = (line.split("=", 1) for line in stdout.decode().splitlines() if "=" in line)
    return {k: v for k, v in pairs if k.isidentifier()}


def test_claude_version_in_a_cell(claude):
    proc = cli("run", "-p", "claude-code", "--", "claude", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"{version_of(claude)} (Claude Code)\n"


def test_closure_is_claude_code_and_glibc(claude, glibc):
    out = subprocess.run(
        ["nix-store", *NO_SUBSTITUTERS, "-qR", claude], capture_output=True, text=True, check=True
    ).stdout
    assert set(out.split()) == {claude, glibc}
    real = elf.read_elf(Path(claude, "libexec/claude-code/claude"))
    assert real is not None and real.interpreter == f"{glibc}/lib/{recipe.glibc_dir()[1]}"
    assert real.search_path is None  # layout kept: Bun's payload survives only so
    assert set(real.needed) <= GLIBC_SONAMES
    assert f"{glibc}/lib".encode() in Path(claude, "bin/claude").read_bytes()


def test_a_real_request_carries_the_real_key_the_cell_holds_a_dummy(claude, api, tmp_path):
    """Tmpfs home, nothing prepared: `claude -p` sends its first request with only the key."""
    command = "cat /proc/self/environ | tr '\\0' '\\n'; claude -p hi"
    proc = claude_run(api, tmp_path, command)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().rstrip().endswith(fakeanthropic.ANSWER)
    dummy = cell_environ(proc.stdout)["ANTHROPIC_API_KEY"]
    assert dummy != fakeanthropic.REAL_KEY and len(dummy) == len(fakeanthropic.REAL_KEY)
    assert dummy.startswith("sk-ant-api03-")
    messages = [r for r in api.requests if r["path"].startswith("/v1/messages")]
    assert messages, [r["path"] for r in api.requests]
    keys = {r["headers"].get("x-api-key") for r in api.requests}
    assert keys == {fakeanthropic.REAL_KEY}, "a request reached the API without the real key"
    assert not any(dummy in json.dumps(r) for r in api.requests)  # headers and bodies
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {(a["host"], a["action"]) for a in audit} == {("api.anthropic.com", "allow")}


def tool_result(api: fakeapi.FakeApi) -> str:
    """The text of the one tool result claude sent back to the API."""
    results = [
        block
        for r in api.requests
        if r["path"].startswith("/v1/messages")
        for m in json.loads(r["body"]).get("messages", [])
        if isinstance(m.get("content"), list)
        for block in m["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(results) == 1 and not results[0].get("is_error"), results
    content = results[0]["content"]
    return content if isinstance(content, str) else "".join(c.get("text", "") for c in content)


def test_programs_claude_starts_see_the_dummy_and_work(claude, glibc, api, tmp_path):
    """claude's Bash tool runs a set program: LD_LIBRARY_PATH (G's lib) is harmless there."""
    proc = claude_run(api, tmp_path, "claude -p 'run the probe' --allowedTools Bash")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    key, library_path, store = tool_result(api).splitlines()
    assert key.startswith("sk-ant-api03-") and key != fakeanthropic.REAL_KEY
    assert library_path == f"{glibc}/lib" and store == "/nix/store"


def test_claudes_grep_tool_works_in_the_cell(claude, tmp_path):
    api = fakeapi.start(fakeanthropic.HOSTS, tmp_path, GrepHandler)
    try:
        make = f"mkdir /tmp/g && echo 'a {NEEDLE} here' > /tmp/g/f.txt && echo nothing > /tmp/g/o"
        proc = claude_run(api, tmp_path, f"{make}; claude -p 'grep it' --allowedTools Grep")
    finally:
        api.stop()
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert tool_result(api) == f"/tmp/g/f.txt:1:a {NEEDLE} here"


def test_state_kept_in_a_bound_claude_dir(claude, api, tmp_path):
    """A read-write ~/.claude receives claude's session files."""
    state = tmp_path / "dot-claude"
    state.mkdir()
    proc = claude_run(api, tmp_path, "claude -p hi", f"--bind={state}:/home/cell/.claude")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    sessions = list(state.glob("projects/*/*.jsonl"))
    assert sessions, sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    assert any(fakeanthropic.ANSWER in p.read_text() for p in sessions)
    assert fakeanthropic.REAL_KEY not in "".join(
        p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()
    )


def test_without_the_registry_the_set_builds_without_claude_code(offline_set, tmp_path):
    """A closed loopback port as the registry and an empty npm cache: a notice, not a failure."""
    env = {
        "npm_config_registry": "http://127.0.0.1:9/",
        "npm_config_cache": str(tmp_path / "npm-cache"),
        "npm_config_fetch_retries": "0",
        "NIXCELL_CLAUDE_PREFIX": str(tmp_path / "claude-code"),
    }
    proc = cli("offline", "build", "--fetch-claude-code", "--dir", str(tmp_path / "set"), env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err[-2000:]
    assert "claude-code: not fetched, the set is built without it" in err
    assert "claude-code: skipped" in err
    assert not (tmp_path / "claude-code").exists()
    assert not (tmp_path / "claude-code.partial").exists()
    packages = json.loads((tmp_path / "set" / "set.json").read_text())["packages"]
    assert "claude-code" not in packages and {"bash", "coreutils", "glibc"} <= set(packages)


@pytest.mark.parametrize(
    "program",
    [shutil.which("curl"), shutil.which("git")],  # each needs libraries beyond glibc
    ids=["curl", "git"],
)
def test_a_fixed_layout_binary_needing_more_than_glibc_is_refused(offline_set, tmp_path, program):
    if program is None or not os.path.exists(program):
        pytest.skip("host program missing")
    glibc = Glibc(offline_set.packages["glibc"], recipe.glibc_dir()[1])
    stager = Stager(tmp_path / "stage", glibc)
    stager.fixed_layout(program, "libexec/x/x")
    with pytest.raises(SourceMissing, match="beyond glibc"):
        stager.finish()


def test_interactive_claude_answers_without_a_key_prompt(claude, text_api, tmp_path):
    """The preset's interactive set-up (docs/project.md): onboarding done in ~/.claude.json
    (the preset's own layout, CLAUDE_CONFIG_DIR: test_project_claude_state.py),
    the dummy in NIXCELL_ANTHROPIC_API_KEY read by an apiKeyHelper, so claude never asks to
    approve a key (the dummy differs on every run); a typed prompt gets the fake API's answer."""
    state = tmp_path / "claude.json"
    state.write_text(
        json.dumps(
            {
                "hasCompletedOnboarding": True,
                "projects": {"/workspace": {"hasTrustDialogAccepted": True}},
            }
        )
    )
    policy = POLICY.replace('env = "ANTHROPIC_API_KEY"', 'env = "NIXCELL_ANTHROPIC_API_KEY"')
    helper = json.dumps({"apiKeyHelper": "printenv NIXCELL_ANTHROPIC_API_KEY"})
    args = [*run_args(text_api, tmp_path, policy), f"--bind={state}:/home/cell/.claude.json"]
    args += ["-eTERM=xterm-256color", "--", "claude", "--settings", helper]
    env = {**os.environ, "ANTHROPIC_API_KEY": fakeanthropic.REAL_KEY}
    child = pexpect.spawn(NIXCELL, args, env=env, encoding="utf-8", codec_errors="replace",
                          dimensions=(40, 120), timeout=5)  # fmt: skip
    screen = Screen(child)
    try:
        assert screen.until(f"ClaudeCodev{version_of(claude)}"), screen.text[-2000:]
        child.send("hi")
        child.send("\r")
        assert screen.until(fakeanthropic.ANSWER.replace(" ", "")), screen.text[-2000:]
    finally:
        child.terminate(force=True)
    seen = screen.seen
    assert "APIkey" not in screen_text(seen), "claude asked about the key"
    assert fakeanthropic.REAL_KEY not in seen
    messages = [r for r in text_api.requests if r["path"].startswith("/v1/messages")]
    assert messages and all(
        r["headers"].get("x-api-key") == fakeanthropic.REAL_KEY for r in messages
    )
    bearers = {r["headers"].get("authorization") for r in text_api.requests} - {None}
    assert bearers <= {f"Bearer {fakeanthropic.REAL_KEY}"}  # the helper's key goes here too
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert {a["host"] for a in audit if a["action"] == "allow"} == {"api.anthropic.com"}
