"""Presets for ``nixcell init --preset NAME``: the files a new project starts with, as data.

A preset is the text of a ``nixcell.toml`` (and of ``.nixcell/policy.toml`` when its network
needs credentials), written with comments so that the user can read and edit what they got.
Every preset loads with the project loader and runs a real cell (tests/integration/
test_project_cmds.py); nothing here is interpreted, so a preset can never mean more than the
file it writes.

Choices (docs/project.md, "Presets"):

- ``claude-code``: what docs/project.md "claude-code" found with real cells: only
  ``api.anthropic.com``, with telemetry, error reports and the self-updater switched off; the
  host's ``ANTHROPIC_API_KEY`` a credential of ``.nixcell/policy.toml`` whose same-shape dummy
  the cell holds as ``NIXCELL_ANTHROPIC_API_KEY`` and claude reads through an ``apiKeyHelper``
  (a dummy in ``ANTHROPIC_API_KEY`` would make interactive claude ask about it on every run);
  the proxy swaps the real key into the ``x-api-key`` header, towards that host only.
  Claude's state (settings, sessions, ``.claude.json``) lives in ``CLAUDE_CONFIG_DIR``, the
  project's ``.nixcell/local/config/claude``, never the host's ``~/.claude``: a cell that could
  write there could plant hooks or MCP servers for the host's claude to run.
- ``python-dev`` / ``node-dev``: the proxy limited to the language's package registry.
- ``shell``: no network at all; the project's files and the usual tools.
"""

from __future__ import annotations

from dataclasses import dataclass

from nixcell.errors import UsageError


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    config: str  # the nixcell.toml text
    policy: str | None = None  # the .nixcell/policy.toml text, when the config names one


_HEADER = """\
# nixcell project ({preset}): `nixcell run -- CMD`, `nixcell shell`, `nixcell status`.
# Format: docs/project.md. Flags of `nixcell run` win over this file; lists add.
"""

CLAUDE_CODE = Preset(
    "claude-code",
    "Claude Code (claude-code + nodejs): its state kept in the project, only api.anthropic.com, "
    "ANTHROPIC_API_KEY injected by the proxy",
    _HEADER.format(preset="claude-code")
    + """
[sandbox]
level = "standard"        # the project read-write, a fresh home, the network below

[sandbox.filesystem]
ro_bind = ["~/.gitconfig"]                  # missing ones are skipped (nixcell status lists them)
# Not the host's ~/.claude or ~/.claude.json: the cell could read a login kept there and plant
# commands (hooks, apiKeyHelper, mcpServers) that claude on the host would run. Claude keeps its
# state in .nixcell/local/config/claude instead (CLAUDE_CONFIG_DIR below), per project.
# To share the host's anyway (delete CLAUDE_CONFIG_DIR too), knowing the cell can then plant
# what the host's claude runs outside any cell:
# rw_bind = ["~/.claude", "~/.claude.json"]

[sandbox.network]
mode = "proxy"                              # only the hosts below, through nixcell's proxy
allow_hosts = ["api.anthropic.com"]
policy = ".nixcell/policy.toml"
credentials = ["anthropic"]                 # the cell holds a dummy of the key

[nix]
packages = ["claude-code", "nodejs", "bash", "coreutils", "git", "gnugrep", "gnused",
            "findutils", "diffutils", "which"]

[cage]
# The dummy key comes through an apiKeyHelper: a key in ANTHROPIC_API_KEY makes interactive
# claude ask whether to use it on every run (the dummy is new each time). printenv: coreutils.
command = ["claude", "--settings", '{"apiKeyHelper": "printenv NIXCELL_ANTHROPIC_API_KEY"}']
passthrough_env = ["TERM", "LANG", "COLORTERM"]

[cage.env]                # no telemetry, no error reports, no self-update: api.anthropic.com only
CLAUDE_CONFIG_DIR = "/home/cell/.config/claude"   # settings, sessions, .claude.json: the project's
DISABLE_AUTOUPDATER = "1"
DISABLE_TELEMETRY = "1"
DISABLE_ERROR_REPORTING = "1"
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1"
""",
    """\
# Credentials of this project's cell (nix-jail policy format plus [[credentials]]).
# The real ANTHROPIC_API_KEY stays in the host's environment: the cell's NIXCELL_ANTHROPIC_API_KEY
# holds a dummy of the same shape (claude reads it through its apiKeyHelper), and nixcell's
# proxy swaps the real key in wherever claude puts it (x-api-key, Authorization) on requests to
# api.anthropic.com only (responses are scrubbed of it).
[[credentials]]
name = "anthropic"
source = "env:ANTHROPIC_API_KEY"
hosts = ["api.anthropic.com"]
header = "x-api-key"
format = "{token}"
env = "NIXCELL_ANTHROPIC_API_KEY"
""",
)


def _language(name: str, summary: str, runtime: str, command: str, hosts: str, env: str) -> Preset:
    """A language preset: its runtime and the usual tools, the proxy to its registry."""
    return Preset(
        name,
        summary,
        _HEADER.format(preset=name)
        + f"""
[sandbox]
level = "standard"

[sandbox.filesystem]
ro_bind = ["~/.gitconfig"]

[sandbox.network]
mode = "proxy"
allow_hosts = [{hosts}]

[nix]
packages = ["{runtime}", "bash", "coreutils", "git", "gnugrep", "gnused", "findutils",
            "diffutils", "which"]

[cage]
command = ["{command}"]
passthrough_env = ["TERM", "LANG"]
env = {{ {env} }}
""",
    )


PYTHON_DEV = _language(
    "python-dev",
    "Python 3 with pip's registry (pypi.org, files.pythonhosted.org) through the proxy",
    "python3",
    "python3",
    '"pypi.org", "files.pythonhosted.org"',
    'PIP_DISABLE_PIP_VERSION_CHECK = "1"',
)
NODE_DEV = _language(
    "node-dev",
    "Node.js with npm's registry (registry.npmjs.org) through the proxy",
    "nodejs",
    "node",
    '"registry.npmjs.org"',
    'NPM_CONFIG_UPDATE_NOTIFIER = "false"',
)

SHELL = Preset(
    "shell",
    "bash and the usual tools on the project's files, no network",
    _HEADER.format(preset="shell")
    + """
[sandbox]
level = "standard"

[sandbox.network]
mode = "none"             # `nixcell run --network open` for one run that needs it

[nix]
packages = ["bash", "coreutils", "gnugrep", "gnused", "gawk", "findutils", "diffutils",
            "jq", "tree", "file", "which", "git"]

[cage]
command = ["bash"]
passthrough_env = ["TERM", "LANG"]
""",
)

PRESETS: dict[str, Preset] = {p.name: p for p in (CLAUDE_CODE, PYTHON_DEV, NODE_DEV, SHELL)}
DEFAULT = "shell"


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name is a one-line error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(PRESETS)
        raise UsageError(f"unknown preset {name!r} (known: {known})") from None
