"""Level relaxed shows the host home read-only: no credential file of a common tool, no key
and no shell history may be readable from a real cell, wherever it sits and whatever it is (a
file, a directory, a file in a directory, a symlink to one)."""

from __future__ import annotations

import os

import pytest
from tests.integration.test_project import run_in

MARK = "SECRET-c0ffee"
# (path under the home, how it is made): "file" = the secret in it, "dir" = a directory
# holding one; "link" / "rlink" = an absolute / relative symlink to such a directory elsewhere
# in the home (a dotfile manager's), "flink" = a symlink to such a file
PLACES = [
    (".ssh", "link"),
    (".ssh", "rlink"),
    (".gnupg", "dir"),
    (".aws", "rlink"),
    (".npmrc", "file"),
    (".npmrc", "flink"),
    (".pypirc", "file"),
    (".yarnrc.yml", "file"),
    (".cargo/credentials.toml", "file"),
    (".gem/credentials", "file"),
    (".m2/settings.xml", "file"),
    (".vault-token", "file"),
    (".terraform.d/credentials.tfrc.json", "file"),
    (".pgpass", "file"),
    (".my.cnf", "flink"),
    (".azure", "dir"),
    (".claude/.credentials.json", "file"),
    (".bash_history", "file"),
    (".zsh_history", "file"),
    (".python_history", "file"),
    ("notes", "rlink"),  # the config's blacklist, below
    ("notes", "file"),
]


def _plant(home, name: str, kind: str) -> None:
    place = home / name
    place.parent.mkdir(parents=True, exist_ok=True)
    if kind == "file":
        place.write_text(f"token = {MARK}\n")
        return
    real = home / "dotfiles" / "d"
    if kind == "dir":
        real = place
    real.mkdir(parents=True)
    (real / "secret").write_text(MARK)
    if kind == "flink":
        real = real / "secret"
    if kind != "dir":
        place.symlink_to(real if kind != "rlink" else os.path.relpath(real, place.parent))


@pytest.mark.parametrize(("name", "kind"), PLACES, ids=[f"{p}-{k}" for p, k in PLACES])
def test_relaxed_home_shows_no_credential(offline_set, tmp_path, monkeypatch, name, kind):
    home = tmp_path / "home"
    _plant(home, name, kind)
    (home / "visible").write_text("shown\n")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "nixcell.toml").write_text(
        '[sandbox]\nlevel = "relaxed"\n[nix]\npackages = ["bash", "coreutils"]\n'
        'nixpkgs = "offline"\n[sandbox.filesystem]\nblacklist = ["~/notes"]\n'
    )
    monkeypatch.setenv("HOME", str(home))
    script = (  # every file the cell can reach under its home (also through ~/.ssh's link)
        "cat ~/visible; shopt -s globstar dotglob nullglob; "
        'for f in ~/** ~/.ssh/*; do [ -f "$f" ] && cat "$f" 2>/dev/null; done; true'
    )
    result = run_in(root, "--network", "none", "--", "bash", "-c", script)
    out = result.stdout.decode()
    assert result.returncode == 0 and out.startswith("shown\n"), result
    assert MARK not in out, f"~/{name} readable in the cell"
