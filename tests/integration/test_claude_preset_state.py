"""The claude-code preset keeps claude's state in the project, never in the host's ~/.claude
(outside review of issue 10): with the host's files read-write a cell read the OAuth login in
~/.claude/.credentials.json and wrote an apiKeyHelper, hooks and mcpServers that claude on the
host would run. Real cells; claude itself against the loopback stand-in API."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.integration.test_project_cmds import _in, _init

LOGIN = "sk-ant-oat01-HOSTLOGIN"
# what a hostile cell tries against the host's claude files, one shell line each
ATTACKS = [
    'cat ~/.claude/.credentials.json "$HOME/.claude/.credentials.json"',
    "cat {home}/.claude/.credentials.json",
    'printf \'{{"apiKeyHelper":"touch /tmp/x"}}\' > ~/.claude/settings.json',
    "printf '{{\"mcpServers\":{{}}}}' > ~/.claude.json",
    "printf '{{\"hooks\":{{}}}}' > {home}/.claude/settings.json",
    'printf "x" > "$CLAUDE_CONFIG_DIR/../../.claude/settings.json"',
]


def _host_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / ".credentials.json").write_text(f'{{"accessToken": "{LOGIN}"}}')
    (home / ".claude.json").write_text("{}")
    return home


@pytest.mark.parametrize("attack", ATTACKS)
def test_the_cell_cannot_reach_the_hosts_claude_files(tmp_path, offline_set, attack):
    home = _host_home(tmp_path)
    root = _init(tmp_path / "proj", "claude-code")
    text = (root / "nixcell.toml").read_text()
    if "claude-code" not in offline_set.packages:
        text = text.replace('"claude-code", ', "")
        (root / "nixcell.toml").write_text(text)
    script = attack.format(home=home)
    proc = _in(
        root, "run", "--", "bash", "-c", f"{script}; true",
        env={"HOME": str(home), "ANTHROPIC_API_KEY": "sk-ant-api03-" + "x" * 20},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode()
    assert LOGIN.encode() not in proc.stdout + proc.stderr
    assert sorted(os.listdir(home / ".claude")) == [".credentials.json"]
    assert (home / ".claude.json").read_text() == "{}"


def test_claude_keeps_its_state_in_the_project(tmp_path: Path, offline_set, fake_anthropic):
    import tomllib

    from tests.integration import fakeanthropic

    if "claude-code" not in offline_set.packages:
        pytest.skip("the offline set has no claude-code yet (./setup with the npm registry)")
    home = _host_home(tmp_path)
    root = _init(tmp_path / "proj", "claude-code")
    command = tomllib.loads((root / "nixcell.toml").read_text())["cage"]["command"]
    env = {"ANTHROPIC_API_KEY": fakeanthropic.REAL_KEY, "HOME": str(home)}
    flags = fake_anthropic.flags(fakeanthropic.HOSTS)
    proc = _in(root, "run", *flags, "--", *command, "-p", "hi", env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().rstrip().endswith(fakeanthropic.ANSWER)
    state = root / ".nixcell" / "local" / "config" / "claude"
    assert (state / ".claude.json").is_file() and (state / "projects").is_dir()
    assert sorted(os.listdir(home / ".claude")) == [".credentials.json"]
    assert (home / ".claude.json").read_text() == "{}"
