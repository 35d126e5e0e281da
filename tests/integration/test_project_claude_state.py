# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The claude-code preset's Claude state in the project (``CLAUDE_CONFIG_DIR``, the cell's
``~/.config/claude`` = ``.nixcell/local/config/claude``) works for claude itself: it persists
between runs, and interactive claude reads its answers there. What a cell cannot do to the
host's ``~/.claude``: test_claude_preset_state.py. Real cells, the real claude from the offline
set against the loopback stand-in API (fakeanthropic.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pexpect
import pytest
from tests.conftest import NIXCELL, cli
from tests.integration import fakeanthropic
from tests.integration.screen import Screen


def _project(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A claude-code project and a HOME of the test's own holding host Claude state."""
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude/settings.json").write_text('{"theme": "dark"}\n')
    (home / ".claude.json").write_text('{"hasCompletedOnboarding": true}\n')
    root = tmp_path / "proj"
    root.mkdir()
    proc = cli("init", "--preset", "claude-code", str(root), env={"HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    env = {**os.environ, "HOME": str(home), "ANTHROPIC_API_KEY": fakeanthropic.REAL_KEY}
    return root, home, env


def _tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(top.rglob("*"))}  # fmt: skip


def _run(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([NIXCELL, *args], cwd=root, env=env, capture_output=True, timeout=300)
    assert fakeanthropic.REAL_KEY.encode() not in proc.stdout + proc.stderr
    return proc


@pytest.fixture
def claude(offline_set) -> str:
    if "claude-code" not in offline_set.packages:
        pytest.skip("the offline set has no claude-code (./setup with the npm registry)")
    return offline_set.packages["claude-code"]


def test_claude_p_keeps_its_state_in_the_project_between_runs(
    tmp_path: Path, claude, fake_anthropic
) -> None:
    root, home, env = _project(tmp_path)
    before = _tree(home)
    flags = fake_anthropic.flags(fakeanthropic.HOSTS)
    for _ in range(2):  # the preset's own command, `-p hi` added
        proc = _run(root, env, "run", *flags, "--", *_preset_command(root), "-p", "hi")
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert proc.stdout.decode().rstrip().endswith(fakeanthropic.ANSWER)
    state = root / ".nixcell/local/config/claude"
    sessions = list(state.glob("projects/*/*.jsonl"))
    assert len(sessions) == 2, sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    assert all(fakeanthropic.ANSWER in p.read_text() for p in sessions)
    assert (state / ".claude.json").is_file()  # claude's global config follows CLAUDE_CONFIG_DIR
    assert fakeanthropic.REAL_KEY not in "".join(
        p.read_text(errors="replace") for p in state.rglob("*") if p.is_file()
    )
    assert _tree(home) == before


def _preset_command(root: Path) -> list[str]:
    import tomllib

    return tomllib.loads((root / "nixcell.toml").read_text())["cage"]["command"]


def test_interactive_claude_in_the_preset_layout(tmp_path: Path, claude, fake_anthropic) -> None:
    """`nixcell run` with no command (the preset's claude), the onboarding and folder trust
    answered in the project's own .claude.json: no onboarding, no key prompt, an answer."""
    root, home, env = _project(tmp_path)
    before = _tree(home)
    state = root / ".nixcell/local/config/claude"
    state.mkdir(parents=True)
    (state / ".claude.json").write_text(json.dumps({
        "hasCompletedOnboarding": True, "projects": {str(root): {"hasTrustDialogAccepted": True}}}))  # fmt: skip
    args = ["run", *fake_anthropic.flags(fakeanthropic.HOSTS)]
    child = pexpect.spawn(NIXCELL, args, cwd=str(root), env={**env, "TERM": "xterm-256color"},
                          encoding="utf-8", codec_errors="replace", dimensions=(40, 120),
                          timeout=5)  # fmt: skip
    screen = Screen(child)
    try:
        assert screen.until("ClaudeCodev"), screen.text[-2000:]
        child.send("hi")
        child.send("\r")
        assert screen.until(fakeanthropic.ANSWER.replace(" ", "")), screen.text[-2000:]
    finally:
        child.terminate(force=True)
    text, seen = screen.text, screen.seen
    assert "APIkey" not in text and "Choosethetext" not in text, "onboarding or key prompt"
    assert fakeanthropic.REAL_KEY not in seen
    assert any(r["path"].startswith("/v1/messages") for r in fake_anthropic.requests)
    assert _tree(home) == before
