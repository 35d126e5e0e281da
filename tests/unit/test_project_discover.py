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


NOBODY = 65534


@pytest.mark.parametrize(
    "owner, dir_mode, links, protected, explicit, expect",
    [
        (NOBODY, 0o1777, 1, True, False, "ignored"),  # a stranger's file in a /tmp-like dir
        (NOBODY, 0o1777, 1, True, True, "refused"),  # --project naming it still refuses
        (NOBODY, 0o0777, 1, True, False, "refused"),  # world-writable, not sticky: as before
        (NOBODY, 0o1755, 1, True, False, "refused"),  # sticky, only its owner writes: as before
        (NOBODY, 0o0755, 1, True, False, "refused"),
        (0, 0o1777, 1, True, False, "used"),  # ours (root's) there: used as before
        (0, 0o1777, 2, True, False, "used"),  # links protected: a link is no stranger's
        (0, 0o1777, 2, False, False, "ignored"),  # anyone could have linked it there
        (0, 0o1777, 2, False, True, "refused"),
        (0, 0o0755, 2, False, False, "refused"),  # not shared: refused, not skipped
        (0, 0o0755, 2, True, False, "used"),
        (0, 0o0755, 1, False, False, "used"),
    ],
)
def test_configs_in_shared_sticky_directories(
    tmp_path, monkeypatch, capfd, owner, dir_mode, links, protected, explicit, expect
):
    if os.getuid() != 0:
        pytest.skip("chown to another uid needs root")
    knob = tmp_path / "protected_hardlinks"
    knob.write_text("1\n" if protected else "0\n")
    monkeypatch.setattr("nixcell.project.discover.PROTECTED_HARDLINKS", str(knob))
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    config = shared / "nixcell.toml"
    config.write_text("[sandbox]\n")
    config.chmod(0o644)
    os.chown(config, owner, owner)
    for i in range(links - 1):
        os.link(config, tmp_path / f"link{i}")
    shared.chmod(dir_mode)
    start = str(shared / "sub")
    if expect == "refused":
        with pytest.raises(UsageError, match=r"nixcell\.toml (is owned by uid|has 2 hard links)"):
            find(start, explicit=str(shared) if explicit else None)
        return
    found = find(start, explicit=str(shared) if explicit else None)
    err = capfd.readouterr().err
    if expect == "used":
        assert found is not None and found.path == str(config) and err == ""
    else:
        assert found is None
        assert err.count("\n") == 1 and err.startswith(f"nixcell: warning: {config} ignored: ")
        assert f"in the shared directory {shared}" in err


def test_an_ignored_config_neither_hides_nor_nests_the_projects_around_it(tmp_path):
    if os.getuid() != 0:
        pytest.skip("chown to another uid needs root")
    (tmp_path / "nixcell.toml").write_text("")  # our project, above the shared directory
    shared = tmp_path / "shared"
    (shared / "mine").mkdir(parents=True)
    (shared / "nixcell.toml").write_text("")
    os.chown(shared / "nixcell.toml", NOBODY, NOBODY)
    shared.chmod(0o1777)
    (shared / "mine" / "nixcell.toml").write_text("")
    # the walk goes on past the stranger's file to our outer project
    (shared / "elsewhere").mkdir()
    assert find(str(shared / "elsewhere")).root == str(tmp_path)  # type: ignore[union-attr]
    # a project of ours inside the shared dir is nested only in our outer one, still refused:
    with pytest.raises(UsageError, match=f"inside the project at {tmp_path} "):
        find(str(shared / "mine"))
    (tmp_path / "nixcell.toml").unlink()
    # without it, the stranger's config does not make ours nested
    assert find(str(shared / "mine")).root == str(shared / "mine")  # type: ignore[union-attr]
