"""Loading nixcell.toml (strict) and nixcage.toml (lenient): every malformed config is one line
naming the file, the line and the key; unknown keys are errors in one, warnings in the other."""

from __future__ import annotations

import pytest

from nixcell.errors import UsageError
from nixcell.project.discover import find
from nixcell.project.load import load


def _load(tmp_path, text: str, name: str = "nixcell.toml"):
    (tmp_path / name).write_text(text)
    found = find(str(tmp_path))
    assert found is not None
    return load(found)


# (config text, what the one-line error must hold: "<line>: [table] key" and a reason)
MALFORMED = [
    ("[sandbox\nlevel = 1\n", "not valid TOML"),
    ('a = "x\nb = 2\n', "not valid TOML"),
    ('[sandbox]\nlevel = "paranoid"\n', ":2: [sandbox] level: 'paranoid' is not one of"),
    ("[sandbox]\nlevel = 3\n", ":2: [sandbox] level: must be a string"),
    ('[sandbox]\nbackend = "lxc"\n', ":2: [sandbox] backend: 'lxc' is not one of bwrap"),
    ('[sandbox]\nlevle = "strict"\n', ":2: [sandbox] levle: unknown key"),
    ('[sandbx]\nlevel = "strict"\n', ":1: [sandbx]: unknown table"),
    ('level = "strict"\n', ":1: level: unknown key outside any table"),
    ("sandbox = 3\n", ":1: [sandbox]: must be a table"),
    ('[sandbox.network]\nmode = "wide"\n', ":2: [sandbox.network] mode: 'wide' is not one of"),
    ('[sandbox.network]\nallow = "yes"\n', ":2: [sandbox.network] allow: must be true or false"),
    ('[sandbox.network]\nallow_hosts = "a.com"\n', "allow_hosts: must be an array of strings"),
    ('[sandbox.network]\nallow_hosts = ["a..com"]\n', ":2: [sandbox.network] allow_hosts:"),
    ('[sandbox.network]\nallow_cidrs = ["10.0.0.0/99"]\n', ":2: [sandbox.network] allow_cidrs:"),
    ('[sandbox.network]\nmode = "proxy"\n', ":2: [sandbox.network] mode: 'proxy' needs"),
    (
        '[sandbox.network]\nmode = "none"\nallow_hosts = ["a.com"]\n',
        ":3: [sandbox.network] allow_hosts: has no effect with mode = 'none'",
    ),
    (
        '[sandbox.network]\nmode = "host"\ndeny_hosts = ["a.com"]\n',
        ":3: [sandbox.network] deny_hosts: has no effect",
    ),
    ('[sandbox.network]\npolicy = "nope.toml"\n', ":2: [sandbox.network] policy:"),
    (
        '[sandbox.network]\npolicy = ["/etc/hostname", "conf/p.toml"]\n',
        ":2: [sandbox.network] policy: ... a policy file belongs in .nixcell/ or the project root",
    ),
    (
        '[sandbox.network]\ncredentials = ["x"]\nallow_hosts = ["a.com"]\n',
        ":2: [sandbox.network] credentials: names [[credentials]] of a policy",
    ),
    ('\n[sandbox.resources]\nmemory = "4Q"\n', ":3: [sandbox.resources] memory: invalid memory"),
    ('[sandbox.resources]\nmemory = "1K"\n', ":2: [sandbox.resources] memory: --memory must be"),
    ("[sandbox.resources]\nmemory = true\n", ":2: [sandbox.resources] memory: must be a string"),
    ('[sandbox.resources]\ndisk = "-1G"\n', ":2: [sandbox.resources] disk: invalid disk"),
    ('[sandbox.resources]\ncpus = "many"\n', ":2: [sandbox.resources] cpus: must be a number"),
    ("[sandbox.resources]\ncpus = 0\n", ":2: [sandbox.resources] cpus: --cpus must be between"),
    ("[sandbox.resources]\npids = 1.5\n", ":2: [sandbox.resources] pids: must be a whole number"),
    ("[sandbox.resources]\npids = 1\n", ":2: [sandbox.resources] pids: --pids must be at least"),
    ('[sandbox.resources]\ntimeout = "soon"\n', ":2: [sandbox.resources] timeout: invalid"),
    ('[nix]\npackages = "bash"\n', ":2: [nix] packages: must be an array of strings"),
    ('[nix]\npackages = ["bash", 3]\n', ":2: [nix] packages: must be an array of strings"),
    ('[nix]\npackages = [""]\n', ":2: [nix] packages: must not hold empty strings"),
    ('[nix]\npackages = [" bash"]\n', ":2: [nix] packages: invalid package name"),
    ('[nix]\nstore_mode = "overlay"\n', ":2: [nix] store_mode: 'overlay' is not one of"),
    ("[nix]\npure = 1\n", ":2: [nix] pure: must be true or false"),
    ('[nix]\nflake = "path:.#x"\n', ":2: [nix] flake: names a flake reference"),
    ('[nix]\nflake = "path:."\nnixpkgs = "offline"\n', ":2: [nix] flake: and nixpkgs"),
    ("[cage]\ncommand = 3\n", ":2: [cage] command: must be an array of strings"),
    ('[cage]\ncommand = "echo \'unclosed"\n', ":2: [cage] command: cannot be split"),
    ('[cage]\npassthrough_env = ["A-B"]\n', ":2: [cage] passthrough_env: 'A-B' is not"),
    ('[cage]\nenv = { "1X" = "y" }\n', ":2: [cage] env: '1X' is not a variable name"),
    ("[cage]\nenv = { X = 1 }\n", ":2: [cage] env: X must be a string"),
    ('[cage]\nenv = "X=1"\n', ":2: [cage] env: must be a table"),
    ('[sandbox.filesystem]\nro_bind = [":/x"]\n', ":2: [sandbox.filesystem] ro_bind: ':/x' has"),
    ('[sandbox.filesystem]\nblacklist = "~/.ssh"\n', "blacklist: must be an array of strings"),
]


@pytest.mark.parametrize(("text", "expected"), MALFORMED)
def test_malformed_config_is_one_line_naming_file_line_key(tmp_path, text, expected):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "p.toml").write_text("")
    with pytest.raises(UsageError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "nixcell.toml")), message
    head, _, tail = expected.partition(" ... ")
    assert head in message and tail in message, message


@pytest.mark.parametrize(
    ("text", "known_to_nixcell"),
    [
        ("[sandbox]\nlevle = 'x'\n", False),
        ("[tools]\nx = 1\n", False),
        ("[sandbox.network]\nmode = 'open'\n", True),
    ],
    ids=["unknown-key", "unknown-table", "nixcell-only-key"],
)
def test_unknown_keys_are_warnings_in_nixcage_toml(tmp_path, text, known_to_nixcell):
    (tmp_path / "cage").mkdir()
    (tmp_path / "cell").mkdir()
    project = _load(tmp_path / "cage", text, "nixcage.toml")
    assert len(project.warnings) == 1 and "(ignored)" in project.warnings[0]
    assert project.warnings[0].startswith(str(tmp_path / "cage" / "nixcage.toml") + ":")
    if known_to_nixcell:
        assert _load(tmp_path / "cell", text).warnings == ()
    else:
        with pytest.raises(UsageError, match="unknown"):
            _load(tmp_path / "cell", text)


def test_nixcage_defaults_apply_to_nixcage_toml_only(tmp_path):
    (tmp_path / "cage").mkdir()
    (tmp_path / "cell").mkdir()
    cage = _load(tmp_path / "cage", "[sandbox]\nlevel = 'strict'\n", "nixcage.toml")
    assert cage.config.packages == ("nodejs_22",) and cage.level == "strict"
    assert cage.config.store_mode == "closure"  # nixcage's default is readonly: ours is stronger
    assert _load(tmp_path / "cell", "").config.packages == ()


def test_values_are_normalised(tmp_path):
    text = """
[sandbox]
level = "relaxed"
[sandbox.network]
policy = ".nixcell/policy.toml"
[sandbox.resources]
memory = "4096M"
timeout = "1h"
cpus = 2
[nix]
pure = false
[cage]
command = "claude --resume 'a b'"
"""
    (tmp_path / ".nixcell").mkdir()
    (tmp_path / ".nixcell" / "policy.toml").write_text("")
    project = _load(tmp_path, text)
    c = project.config
    assert c.memory == 4096 << 20 and c.timeout == 3600 and c.cpus == 2
    assert c.command == ("claude", "--resume", "a b")
    assert c.policy == (str(tmp_path / ".nixcell" / "policy.toml"),)
    assert any("[nix] pure: false has no effect" in w for w in project.warnings)
    assert project.where("sandbox.resources", "timeout").endswith(
        "nixcell.toml:8: [sandbox.resources] timeout"
    )
