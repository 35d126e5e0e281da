"""Project discovery (project/discover.py) on real directories: nearest config wins, nixcell.toml
over nixcage.toml, and every way someone else could have planted a config is refused."""

from __future__ import annotations

import os

import pytest

from nixcell.errors import UsageError
from nixcell.project.discover import Found, find, stamp


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "proj" / "a" / "b").mkdir(parents=True)
    (tmp_path / "proj" / "nixcell.toml").write_text("[sandbox]\n")
    return tmp_path


def test_found_from_a_subdirectory(tree):
    found = find(str(tree / "proj" / "a" / "b"))
    assert found == Found(str(tree / "proj"), str(tree / "proj" / "nixcell.toml"), "nixcell")


def test_nothing_found_outside_a_project(tree):
    (tree / "elsewhere").mkdir()
    assert find(str(tree / "elsewhere")) is None


def test_nixcage_toml_is_found_and_named(tree):
    (tree / "cage").mkdir()
    (tree / "cage" / "nixcage.toml").write_text("")
    found = find(str(tree / "cage"))
    assert found is not None and found.kind == "nixcage" and found.root == str(tree / "cage")


def test_nixcell_toml_wins_over_nixcage_toml_when_named(tree):
    (tree / "proj" / "nixcage.toml").write_text("")
    found = find(str(tree / "proj" / "a"), explicit=str(tree / "proj"))
    assert found is not None and found.kind == "nixcell"


def test_both_configs_without_project_flag_are_refused(tree):
    (tree / "proj" / "nixcage.toml").write_text("")
    with pytest.raises(UsageError, match=r"both nixcell\.toml and nixcage\.toml"):
        find(str(tree / "proj" / "a"))


def test_nested_config_is_refused_and_accepted_when_named(tree):
    (tree / "proj" / "a" / "nixcell.toml").write_text("")
    with pytest.raises(UsageError, match=r"inside the project at .*--project"):
        find(str(tree / "proj" / "a" / "b"))
    inner = find(str(tree / "proj" / "a" / "b"), explicit=str(tree / "proj" / "a"))
    assert inner is not None and inner.root == str(tree / "proj" / "a")
    # the outer project itself is still found from its own directory
    assert find(str(tree / "proj")).root == str(tree / "proj")  # type: ignore[union-attr]


def test_no_project_ignores_configs(tree):
    assert find(str(tree / "proj"), ignore=True) is None


def test_project_flag_needs_a_config_there(tree):
    with pytest.raises(UsageError, match=r"no nixcell\.toml or nixcage\.toml"):
        find("/", explicit=str(tree / "proj" / "a"))
    with pytest.raises(UsageError, match="no such directory"):
        find("/", explicit=str(tree / "missing"))


def _plant(tree, how: str) -> None:
    path = tree / "proj" / "nixcell.toml"
    if how == "symlink":
        (tree / "real.toml").write_text("")
        path.unlink()
        path.symlink_to(tree / "real.toml")
    elif how == "group-writable":
        path.chmod(0o664)
    elif how == "other-writable":
        path.chmod(0o646)
    elif how == "other-owner":
        os.chown(path, 4242, 4242)
    elif how == "directory":
        path.unlink()
        path.mkdir()
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)


UNTRUSTED = [
    ("symlink", "symbolic link"),
    ("group-writable", "writable by group or others"),
    ("other-writable", "writable by group or others"),
    ("other-owner", "owned by uid 4242"),
    ("directory", "not a regular file"),
    ("fifo", "not a regular file"),
]


@pytest.mark.parametrize(("how", "message"), UNTRUSTED, ids=[u[0] for u in UNTRUSTED])
@pytest.mark.parametrize("explicit", [False, True], ids=["walk", "--project"])
def test_untrusted_config_is_refused_from_every_side(tree, how, message, explicit):
    if how == "other-owner" and os.getuid() != 0:
        pytest.skip("needs root to chown")
    _plant(tree, how)
    with pytest.raises(UsageError, match=message):
        find(str(tree / "proj" / "a"), explicit=str(tree / "proj") if explicit else None)


def test_stamp_changes_when_the_config_is_rewritten(tree):
    found = find(str(tree / "proj"))
    before = stamp(found)
    path = tree / "proj" / "nixcell.toml"
    tmp = tree / "proj" / "new"
    tmp.write_text("[sandbox]\nlevel = 'strict'\n")
    tmp.rename(path)
    assert stamp(found) != before and stamp(None) is None


def test_project_flag_through_a_symlink_names_the_real_root(tree):
    (tree / "link").symlink_to(tree / "proj")
    found = find("/", explicit=str(tree / "link"))
    assert found is not None and found.root == str(tree / "proj")
