"""A stranger's nixcell.toml in a shared sticky directory (like /tmp) does not stop our runs.

Another local user can create names in /tmp; a config there owned by them (uid 65534 here) is
ignored with one warning line, and the walk goes on upward: the real CLI, real cells.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")


def _shared(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    planted = shared / "nixcell.toml"
    planted.write_text('[sandbox]\nlevel = "relaxed"\n[nix]\npackages = ["bash"]\n')
    os.chown(planted, 65534, 65534)
    shared.chmod(0o1777)
    return shared


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NIXCELL, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_plain_run_below_a_strangers_config(tmp_path: Path, offline_set) -> None:
    work = _shared(tmp_path) / "work"
    work.mkdir()
    proc = _run(work, "run", "-p", "coreutils", "--", "sh", "-c", 'echo "$HOME"')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "/home/cell\n"
    assert proc.stderr.startswith(f"nixcell: warning: {tmp_path}/shared/nixcell.toml ignored: ")
    assert "uid 65534" in proc.stderr and proc.stderr.count("ignored") == 1  # once, not twice
    # --project naming it is the user's word for that file: still refused, one line
    named = _run(work, "run", "--project", str(tmp_path / "shared"), "--", "true")
    last = named.stderr.splitlines()[-1]
    assert named.returncode == 2 and "owned by uid 65534" in last and last.startswith("nixcell: ")
    assert "Traceback" not in named.stderr


def test_our_project_inside_the_shared_dir_is_not_nested_in_it(tmp_path: Path, offline_set):
    root = _shared(tmp_path) / "proj"
    root.mkdir()
    (root / "nixcell.toml").write_text('[nix]\npackages = ["coreutils"]\n')
    proc = _run(root, "run", "--", "pwd")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{root}\n"  # standard level: the project at its own path
    status = _run(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert f'"root": "{root}"' in status.stdout
