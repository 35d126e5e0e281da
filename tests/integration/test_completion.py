"""`nixcell completion bash|zsh|fish`: the printed scripts, sourced into the real shells, complete
subcommands, flags and ``-p`` package names (the offline set's and a host nixpkgs's)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import cli

pytestmark = pytest.mark.integration

BASH = """
eval "$(nixcell completion bash)"
complete -p nixcell >/dev/null || exit 9
read -r -a COMP_WORDS <<< "$LINE"
[[ $LINE == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_nixcell_completion nixcell
printf '%s\\n' "${COMPREPLY[@]}"
"""
# zsh's completion system is interactive; its two output builtins are stood in for by functions
# printing what the script hands them (everything else: the real zsh running the real script).
ZSH = """
compdef() { : }
eval "$(nixcell completion zsh)"
_describe() { print -rl -- "${(@P)3%%:*}" }
compadd() { print -rl -- "${(@P)5}" }
words=(${(z)LINE}); [[ $LINE == *" " ]] && words+=("")
CURRENT=${#words}
_nixcell_completion
"""
FISH = 'nixcell completion fish | source; complete -C "$LINE"'


@pytest.fixture(scope="module")
def offline_names(offline_set) -> list[str]:
    listed = cli("offline", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return sorted(json.loads(listed.stdout))


def shell_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NIX_PATH"}  # no host nixpkgs unless given
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(tmp_path)  # no ~/.nix-defexpr channel either
    return {**env, **extra}


def complete(shell: str, line: str, env: dict[str, str]) -> list[str]:
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (./setup installs it)")
    argv = {"bash": ["bash", "--norc", "--noprofile", "-c", BASH], "zsh": ["zsh", "-f", "-c", ZSH],
            "fish": ["fish", "--no-config", "-c", FISH]}[shell]  # fmt: skip
    done = subprocess.run(argv, env={**env, "LINE": line}, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    return [w.split("\t")[0] for w in done.stdout.decode().splitlines() if w]


CASES = [  # what the user typed -> what must be offered (exactly)
    ("nixcell ru", ["run"]),
    ("nixcell run --mem", ["--memory"]),
    ("nixcell run --nixp", ["--nixpkgs"]),
    ("nixcell of", ["offline"]),
    ("nixcell offline l", ["list"]),
    ("nixcell completion ", ["bash", "fish", "zsh"]),
    ("nixcell run -p pyt", "pyt"),  # a prefix: the offline set's names starting with it
    ("nixcell run -p bash --package cor", "cor"),
    ("nixcell run -p zzz-no-such", []),
    ("nixcell run --nixpkgs nixos-", ["nixos-24.11", "nixos-unstable"]),
    ("nixcell run --hardening-profile de", ["debugger"]),
]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
@pytest.mark.parametrize(("line", "want"), CASES, ids=[c[0] for c in CASES])
def test_completes_commands_flags_and_packages(shell, line, want, offline_names, tmp_path):
    if isinstance(want, str):
        want = [n for n in offline_names if n.startswith(want)]
        assert want, "the offline set has a python3 and a coreutils"
    assert sorted(complete(shell, line, shell_env(tmp_path))) == sorted(want)


def test_host_nixpkgs_names_are_evaluated_once_and_cached(offline_names, tmp_path):
    """The first TAB starts one background evaluation and answers from the offline set; later
    TABs read the cache. Names a shell would glob or split are never offered."""
    nixpkgs = tmp_path / "nixpkgs"
    nixpkgs.mkdir()
    (nixpkgs / "default.nix").write_text(
        '{ ... }: { ripgrep = 1; python3Packages = {}; "rip grep" = 2; "rip*" = 3; }\n'
    )
    home = tmp_path / "nixcell-home"
    env = shell_env(tmp_path, NIX_PATH=f"nixpkgs={nixpkgs}", NIXCELL_HOME=str(home))
    assert complete("bash", "nixcell run -p rip", env) == []
    cache_dir = home / "cache" / "completion"
    deadline = time.monotonic() + 120
    while not list(cache_dir.glob("nixpkgs-*.txt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert complete("bash", "nixcell run -p rip", env) == ["ripgrep"]
    assert "python3Packages" in complete("bash", "nixcell run -p pyt", env)
    assert complete("bash", "nixcell run --nixpkgs offline -p rip", env) == []
    assert (cache_dir.stat().st_mode & 0o777) == 0o700
    # A changed nixpkgs (a channel update: new mtime) is evaluated again.
    (nixpkgs / "default.nix").write_text("{ ... }: { ripgrep-all = 1; }\n")
    os.utime(nixpkgs, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    complete("bash", "nixcell run -p rip", env)
    deadline = time.monotonic() + 120
    while len(list(cache_dir.glob("nixpkgs-*.txt"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert complete("bash", "nixcell run -p rip", env) == ["ripgrep-all"]
    # `nixcell gc` clears these names too: the next TAB evaluates nixpkgs again
    assert cli("gc", env={"NIXCELL_HOME": str(home)}).returncode == 0
    assert not cache_dir.exists()
    assert complete("bash", "nixcell run -p rip", env) == []
    assert cache_dir.is_dir()  # made again by that TAB (its refresh is under way)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_script_is_printed(shell):
    done = cli("completion", shell)
    assert done.returncode == 0
    assert b"_NIXCELL_COMPLETE" in done.stdout and done.stdout.endswith(b"\n")


@pytest.mark.parametrize("args", [["completion"], ["completion", "tcsh"], ["completion", "-x"]])
def test_bad_shell_is_a_one_line_usage_error(args):
    done = cli(*args)
    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr.decode().count("\n") == 1 and done.stderr.startswith(b"nixcell: ")
