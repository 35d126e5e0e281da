"""What the CLI says besides a cell's output: the offline-set notice once per state dir, and
usage errors that point at the help of the command they are about."""

from __future__ import annotations

import click
import pytest
from tests.conftest import cli

from nixcell.cli.main import cli as root

pytestmark = pytest.mark.integration

NOTICE = b"nixcell: no nixpkgs found on this host: using nixcell's offline package set"


def test_offline_notice_once_per_state_dir(offline_set, tmp_path):
    """The first resolution says where packages come from; later ones (new package sets too)
    do not. Another state dir is told again."""
    env = {"NIXCELL_HOME": str(tmp_path / "a"), "NIX_PATH": "", "HOME": str(tmp_path)}
    runs = [("-p", "jq"), ("-p", "jq", "-p", "gawk"), ("-p", "gawk")]
    said = [cli("run", *p, "--", "true", env=env).stderr.count(NOTICE) for p in runs]
    assert said == [1, 0, 0]
    other = {**env, "NIXCELL_HOME": str(tmp_path / "b")}
    assert cli("run", "-p", "jq", "--", "true", env=other).stderr.count(NOTICE) == 1


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def _usage_cases():
    """Per command: an unknown option, and every option that takes a value given none (click
    raises that one before it makes the command's context)."""
    for path, cmd in _commands(root):
        yield path, ("--no-such-option",)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.is_flag and param.nargs == 1:
                yield path, (param.opts[0],)


CASES = list(_usage_cases())


@pytest.mark.parametrize(("path", "args"), CASES, ids=[" ".join(p + a) for p, a in CASES])
def test_usage_errors_name_the_commands_help(path, args):
    result = cli(*path, *args)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("nixcell: ")
    assert lines[0].endswith(f"(see `nixcell {' '.join(path)} --help`)"), lines[0]
