"""The presets as data: each config is valid TOML of the project schema, the claude-code
credential sends the real key only to api.anthropic.com, in the header Claude Code uses."""

from __future__ import annotations

import tomllib

import pytest

from nixcell.errors import UsageError
from nixcell.net.credsource import parse_credentials
from nixcell.net.policyfile import parse_policy
from nixcell.project import presets


@pytest.mark.parametrize("preset", presets.PRESETS.values(), ids=list(presets.PRESETS))
def test_each_preset_is_standard_with_packages_and_a_command(preset) -> None:
    doc = tomllib.loads(preset.config)
    assert doc["sandbox"]["level"] == "standard"
    assert doc["nix"]["packages"] and doc["cage"]["command"]
    assert "~/.ssh" not in str(doc)
    names = doc.get("sandbox", {}).get("network", {}).get("credentials", [])
    assert bool(names) == (preset.policy is not None)


def test_claude_code_credential() -> None:
    policy = parse_policy(presets.CLAUDE_CODE.policy or "", "policy.toml")
    (cred,) = parse_credentials(policy.credentials, "policy.toml")
    assert cred.name == "anthropic"
    assert cred.source == "env:ANTHROPIC_API_KEY"
    assert [h.text for h in cred.hosts] == ["api.anthropic.com"]
    assert (cred.header, cred.format, cred.env) == (
        "x-api-key",
        "{token}",
        "NIXCELL_ANTHROPIC_API_KEY",
    )
    assert not cred.allow_plaintext
    net = tomllib.loads(presets.CLAUDE_CODE.config)["sandbox"]["network"]
    assert net["mode"] == "proxy" and net["allow_hosts"] == ["api.anthropic.com"]
    assert net["credentials"] == [cred.name]
    command = tomllib.loads(presets.CLAUDE_CODE.config)["cage"]["command"]
    assert command[:2] == ["claude", "--settings"] and f"printenv {cred.env}" in command[2]


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="claude-code, python-dev, node-dev, shell"):
        presets.get("nope")


def test_claude_code_shares_the_hosts_claude_state_only_when_uncommented() -> None:
    """The host's ~/.claude is a commented-out opt-in (the cell could plant what host claude
    runs); uncommented, with CLAUDE_CONFIG_DIR deleted as it says, it is valid and binds them."""
    text = presets.CLAUDE_CODE.config
    doc = tomllib.loads(text)
    assert "rw_bind" not in doc["sandbox"]["filesystem"]
    assert doc["cage"]["env"]["CLAUDE_CONFIG_DIR"] == "/home/cell/.config/claude"
    opted = text.replace('# rw_bind = ["~/.claude"', 'rw_bind = ["~/.claude"')
    opted = "\n".join(line for line in opted.splitlines() if "CLAUDE_CONFIG_DIR =" not in line)
    doc = tomllib.loads(opted)
    assert doc["sandbox"]["filesystem"]["rw_bind"] == ["~/.claude", "~/.claude.json"]
    assert "CLAUDE_CONFIG_DIR" not in doc["cage"]["env"]
