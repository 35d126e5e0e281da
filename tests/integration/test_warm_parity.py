"""The warm path runs a cached plan only while the normal path would make the same cell now.

Each case caches a plan with a real `nixcell run`, changes the host the way a user (or a cell
with a writable project) could, and runs again: the cell must be what the normal path makes
now, or the normal path's refusal. Found by reading the warm path against the normal one
(the outside view of this stop); `-i`'s PTY is in test_fast_path.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.conftest import cli
from tests.integration.test_project import run_in

MARK_A, MARK_B = "SECRET-aaaa", "SECRET-bbbb"


def _plans(home: Path) -> list[Path]:
    where = home / "cache" / "plans"
    return sorted(where.iterdir()) if where.is_dir() else []


def _project(tmp_path: Path, extra: str = "") -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "nixcell.toml").write_text(
        '[sandbox]\nlevel = "relaxed"\n' + extra + '[nix]\npackages = ["bash", "coreutils"]\n'
        'nixpkgs = "offline"\n'
    )
    return root


def test_a_hidden_link_pointed_elsewhere_is_hidden_on_the_warm_path(offline_set, tmp_path):
    """`~/.ssh -> dotfiles/a` hides dotfiles/a; pointed at dotfiles/b since, b is hidden."""
    home = tmp_path / "home"
    for name, mark in (("a", MARK_A), ("b", MARK_B)):
        (home / "dotfiles" / name).mkdir(parents=True)
        (home / "dotfiles" / name / "id").write_text(mark)
    (home / ".ssh").symlink_to(home / "dotfiles" / "a")
    root = _project(tmp_path)
    env = {"HOME": str(home), "NIXCELL_HOME": str(tmp_path / "nx")}
    script = "cat ~/.ssh/id ~/dotfiles/*/id 2>/dev/null; true"
    for _ in range(2):  # the second run is warm
        out = run_in(root, "--network", "none", "--", "bash", "-c", script, env=env)
        assert out.returncode == 0 and MARK_A not in out.stdout.decode(), out
        assert MARK_B in out.stdout.decode()  # (the rest of the home is shown)
    assert _plans(tmp_path / "nx"), "no plan was cached: the warm path was not tried"
    (home / ".ssh").unlink()
    (home / ".ssh").symlink_to(home / "dotfiles" / "b")
    out = run_in(root, "--network", "none", "--", "bash", "-c", script, env=env)
    assert out.returncode == 0, out
    assert MARK_B not in out.stdout.decode(), "the re-pointed ~/.ssh is readable"
    assert MARK_A in out.stdout.decode()  # no longer behind a link to be hidden


def test_a_link_planted_at_a_protected_path_is_refused_on_the_warm_path(offline_set, tmp_path):
    """A cell with the project writable plants `.envrc -> nowhere` (dangling): the next run
    refuses it as the normal path does, though it was missing when the plan was cached."""
    root = _project(tmp_path)
    env = {"HOME": str(tmp_path), "NIXCELL_HOME": str(tmp_path / "nx")}
    for _ in range(2):
        assert run_in(root, "--network", "none", "--", "true", env=env).returncode == 0
    assert _plans(tmp_path / "nx")
    (root / ".envrc").symlink_to("/nowhere/at/all")
    out = run_in(root, "--network", "none", "--", "true", env=env)
    assert out.returncode != 0 and b"symbolic link" in out.stderr, out


@pytest.mark.parametrize("change", ["group-writable", "other-owner"])
def test_a_store_copy_made_writable_by_others_is_refused_warm(offline_set, tmp_path, change):
    store = tmp_path / "store"
    env = {"NIXCELL_HOME": str(tmp_path / "nx")}
    flags = ("run", "--store", "copy", "--store-dir", str(store), "-p", "coreutils", "--")
    for _ in range(2):
        assert cli(*flags, "true", env=env).returncode == 0
    assert _plans(tmp_path / "nx")
    if change == "group-writable":
        store.chmod(0o775)
    else:
        os.chown(store, 4242, 4242)
    out = cli(*flags, "true", env=env)
    assert out.returncode != 0 and b"writable by you alone" in out.stderr, out
    assert out.stderr.count(b"\n") == 1 and b"Traceback" not in out.stderr


def test_a_project_backend_auto_is_chosen_again_on_every_run(offline_set, tmp_path):
    root = _project(tmp_path, 'backend = "auto"\n')  # (under [sandbox])
    env = {"HOME": str(tmp_path), "NIXCELL_HOME": str(tmp_path / "nx")}
    for _ in range(2):
        out = run_in(root, "--network", "none", "--", "echo", "hi", env=env)
        assert out.returncode == 0 and out.stdout == b"hi\n", out
    assert _plans(tmp_path / "nx") == [], "a plan for 'auto' was cached with the backend it chose"


def test_the_plan_records_every_proc_entry_it_masks_and_a_new_one_makes_it_stale(offline_set):
    """A module loaded since (/proc/config.gz, /proc/asound) adds an entry the normal path
    masks: the cached plan, made while it was missing, is stale."""
    import dataclasses

    from nixcell.plan import PROC_MASKED, PROC_READ_ONLY
    from nixcell.plancheck import stale_reason
    from nixcell.runner import prepare
    from nixcell.spec import CellSpec

    plan, _ = prepare(CellSpec(command=["true"], packages=["coreutils"]))
    recorded = {path: kind for role, path, kind in plan.checked if role == "proc"}
    assert set(recorded) == {*PROC_READ_ONLY, *PROC_MASKED}
    assert stale_reason(plan) is None
    present = next(p for p, k in recorded.items() if k != "missing")
    other = "file" if recorded[present] == "dir" else "dir"
    for then in ("missing", other):
        checked = tuple((r, p, then if p == present else k) for r, p, k in plan.checked)
        reason = stale_reason(dataclasses.replace(plan, checked=checked))
        assert reason is not None and present in reason
