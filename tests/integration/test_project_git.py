# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""A cell at level standard must not make host git run its code: git takes config and hooks
not only from ``.git/config`` and ``.git/hooks`` but from a ``commondir`` file, from
``modules/*/`` (a submodule, reached through an index the cell writes) and ``worktrees/*/``.
Each way in is planted from a real cell, then real host git runs in the project."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from tests.integration.test_project import run_in

# each plant ends by making host git run `touch $MARK` through a core.fsmonitor it controls
EVIL = (
    'printf "[core]\\n\\trepositoryformatversion = 0\\n\\tfsmonitor = \\"touch $MARK; false\\"\\n"'
)
PLANTS = {
    "commondir": f"mkdir -p .g && cp -r .git/objects .git/refs .git/HEAD .g/ && {EVIL} > .g/config && echo $PWD/.g > .git/commondir",
    "config": f"{EVIL} >> .git/config",
    "gitlink-in-index": 'git init -q sub && git -C sub config core.fsmonitor "touch $MARK; false" && git -C sub -c user.name=a -c user.email=a@b commit -q --allow-empty -m x && git update-index --add --cacheinfo 160000,$(git -C sub rev-parse HEAD),sub',
    "hook": 'printf "#!/bin/sh\\ntouch $MARK\\n" > .git/hooks/post-index-change && chmod +x .git/hooks/post-index-change',
    "modules": f"mkdir -p .git/modules/m && {EVIL} > .git/modules/m/config",
    "worktree-commondir": "mkdir -p .git/worktrees/w && echo /tmp > .git/worktrees/w/commondir",
    "move-aside": "mv .git .git-aside && mkdir .git",
}


def git(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)


@pytest.mark.skipif(shutil.which("git") is None, reason="host git")
@pytest.mark.parametrize("name", sorted(PLANTS))
def test_a_cell_cannot_make_host_git_run_its_code(offline_set, tmp_path, name):
    root = tmp_path / "proj"
    root.mkdir()
    git("init", "-q", ".", cwd=root)
    git(
        "-c",
        "user.name=a",
        "-c",
        "user.email=a@b",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "i",
        cwd=root,
    )
    (root / "nixcell.toml").write_text(
        '[nix]\npackages = ["bash", "coreutils", "git"]\nnixpkgs = "offline"\n'
    )
    before = sorted(p.relative_to(root) for p in (root / ".git").rglob("*"))
    mark = tmp_path / "ran"
    result = run_in(
        root, "--", "bash", "-c", f"MARK={mark}; {PLANTS[name]}; git log --oneline | wc -l"
    )
    assert result.stdout.decode().split()[-1:] == ["1"], result  # the cell's git still reads
    assert sorted(p.relative_to(root) for p in (root / ".git").rglob("*")) == before
    git("status", cwd=root)
    git("add", "-A", cwd=root)
    assert not mark.exists(), f"host git ran the cell's code ({name})"
