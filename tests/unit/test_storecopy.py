"""The store copy (nix/storecopy.py) against hostile directories: host-side copying never follows
a link it did not create, whichever part of the store dir a cell (or another user) planted it in.
Real files and the real host store; no cell."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nixcell.errors import StateError
from nixcell.nix import storecopy
from nixcell.nix.closure import Closure
from nixcell.nix.storestamp import MANIFEST, PATHS, manifest_stamp, missing_entry
from nixcell.plan import MountOp, Plan, PlanLimits
from nixcell.plancheck import stale_reason


def _store_paths(n: int) -> list[str]:
    """Small real paths of the host store (directories with a bin/), never a .drv."""
    found = []
    for name in sorted(os.listdir("/nix/store")):
        path = f"/nix/store/{name}"
        if name.endswith(".drv") or not os.path.isdir(f"{path}/bin"):
            continue
        if sum(len(f) for _, _, f in os.walk(path)) < 40:
            found.append(path)
        if len(found) == n:
            return found
    pytest.skip("needs a few small store paths")


@pytest.fixture
def paths() -> list[str]:
    if not os.path.isdir("/nix/store"):
        pytest.skip("needs /nix/store")
    return _store_paths(3)


def closure_of(paths: list[str]) -> Closure:
    return Closure(paths[0], tuple(paths), programs=tuple(os.listdir(f"{paths[0]}/bin")))


KEY = storecopy.key_of(["x"], {}, None)


def test_sync_copies_exactly_and_refreshes(tmp_path, paths):
    store = tmp_path / "store"
    copy = storecopy.sync(str(store), closure_of(paths[:2]), "copy", KEY)
    assert copy.root == str(store / PATHS) and copy.stamp == manifest_stamp(str(store))
    assert sorted(os.listdir(copy.root)) == sorted(os.path.basename(p) for p in paths[:2])
    for path in paths[:2]:  # the same tree, modes and links, read-only for everyone
        for dirpath, dirs, files in os.walk(path):
            rel = os.path.relpath(dirpath, "/nix/store")
            assert sorted(os.listdir(store / PATHS / rel)) == sorted(dirs + files)
        st = os.lstat(store / PATHS / os.path.basename(path))
        assert st.st_mode & 0o777 == 0o555
    again = storecopy.sync(str(store), closure_of(paths[1:]), "copy", KEY)
    assert sorted(os.listdir(again.root)) == sorted(os.path.basename(p) for p in paths[1:])
    assert again.stamp != copy.stamp
    assert missing_entry(str(store), paths[1:]) is None
    assert missing_entry(str(store), paths[:1]) == paths[0]
    manifest = json.loads((store / MANIFEST).read_text())
    assert manifest["closure"]["paths"] == paths[1:] and manifest["mode"] == "copy"


def _symlinked_store_dir(tmp: Path) -> str:
    (tmp / "real").mkdir()
    (tmp / "store").symlink_to(tmp / "real")
    return str(tmp / "store")


def _symlinked_parent(tmp: Path) -> str:
    (tmp / "real").mkdir()
    (tmp / "link").symlink_to(tmp / "real")
    return str(tmp / "link" / "store")


def _others_may_write(tmp: Path) -> str:
    (tmp / "store").mkdir()
    (tmp / "store").chmod(0o777)
    return str(tmp / "store")


def _another_owner(tmp: Path) -> str:
    (tmp / "store").mkdir()
    os.chown(tmp / "store", 4242, 4242)
    return str(tmp / "store")


def _paths_is_a_link(tmp: Path) -> str:
    (tmp / "store").mkdir()
    (tmp / "elsewhere").mkdir()
    (tmp / "store" / PATHS).symlink_to(tmp / "elsewhere")
    return str(tmp / "store")


def _tmp_is_a_link(tmp: Path) -> str:
    (tmp / "store").mkdir()
    (tmp / "elsewhere").mkdir()
    (tmp / "store" / ".tmp").symlink_to(tmp / "elsewhere")
    return str(tmp / "store")


HOSTILE = {
    "store dir is a symlink": _symlinked_store_dir,
    "a parent is a symlink": _symlinked_parent,
    "others may write it": _others_may_write,
    "another user owns it": _another_owner,
    "paths/ is a symlink": _paths_is_a_link,
    ".tmp/ is a symlink": _tmp_is_a_link,
}


@pytest.mark.parametrize("case", list(HOSTILE))
@pytest.mark.parametrize("mode", ["copy", "isolated"])
def test_hostile_store_dirs_are_refused_and_nothing_is_written_through(tmp_path, paths, case, mode):
    if case == "another user owns it" and os.getuid() != 0:
        pytest.skip("needs root to chown")
    store = HOSTILE[case](tmp_path)
    before = {p: sorted(os.listdir(p)) for p in (tmp_path, *tmp_path.glob("*")) if p.is_dir()}
    with pytest.raises(StateError, match="store dir"):
        storecopy.sync(store, closure_of(paths), mode, KEY)
    after = {p: sorted(os.listdir(p)) for p in (tmp_path, *tmp_path.glob("*")) if p.is_dir()}
    assert {k: v for k, v in after.items() if k.name != "store"} == {
        k: v for k, v in before.items() if k.name != "store"}  # fmt: skip
    if (tmp_path / "elsewhere").exists():
        assert os.listdir(tmp_path / "elsewhere") == []
    if (tmp_path / "real").exists():
        assert os.listdir(tmp_path / "real") == []


def test_planted_entries_are_replaced_never_followed(tmp_path, paths):
    store = tmp_path / "store"
    storecopy.sync(str(store), closure_of(paths[:1]), "copy", KEY)
    target = tmp_path / "host-dir"
    target.mkdir()
    (target / "keep").write_text("k")
    name = os.path.basename(paths[1])
    (store / PATHS / name).symlink_to(target)  # a link where a store path will go
    (store / PATHS / "extra").symlink_to(target)  # and one that is no path at all
    (store / ".tmp" / "half").mkdir()  # an interrupted copy
    storecopy.sync(str(store), closure_of(paths[:2]), "copy", KEY)
    assert not os.path.islink(store / PATHS / name) and os.path.isdir(store / PATHS / name)
    assert sorted(os.listdir(store / PATHS)) == sorted(os.path.basename(p) for p in paths[:2])
    assert os.listdir(store / ".tmp") == []
    assert os.listdir(target) == ["keep"]  # removing the links left their target alone


def test_isolated_is_frozen(tmp_path, paths):
    store = str(tmp_path / "store")
    assert storecopy.frozen_closure(store, KEY) is None  # nothing yet
    closure = closure_of(paths[:2])
    storecopy.sync(store, closure, "isolated", KEY)
    assert storecopy.frozen_closure(store, KEY) == closure
    other = storecopy.key_of(["x", "y"], {}, None)
    with pytest.raises(StateError, match=f"frozen for packages x, not x, y: delete {store}"):
        storecopy.frozen_closure(store, other)
    storecopy.sync(store, closure, "copy", KEY)  # a copy-mode manifest is not frozen
    assert storecopy.frozen_closure(store, KEY) is None


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: (s / MANIFEST).write_text("{not json"), "unreadable"),
        (lambda s: (s / MANIFEST).write_text(json.dumps({"format": 99})), "unreadable"),
        (lambda s: _edit(s, lambda m: m["closure"].update(paths=["/etc"])), "no valid closure"),
        (lambda s: _edit(s, lambda m: m["closure"].update(env="/nix/store/x")), "no valid"),
        (lambda s: _edit(s, lambda m: m.pop("closure")), "no valid closure"),
        (lambda s: _rm_entry(s), "lacks"),
        (lambda s: _link_manifest(s), "symbolic link"),
    ],
)
def test_a_damaged_frozen_copy_is_one_error(tmp_path, paths, damage, message):
    store = tmp_path / "store"
    storecopy.sync(str(store), closure_of(paths[:2]), "isolated", KEY)
    damage(store)
    with pytest.raises(StateError, match=message):
        storecopy.frozen_closure(str(store), KEY)


def _edit(store: Path, change) -> None:
    manifest = json.loads((store / MANIFEST).read_text())
    change(manifest)
    (store / MANIFEST).write_text(json.dumps(manifest))


def _rm_entry(store: Path) -> None:
    from nixcell.treeremove import remove_tree

    remove_tree(store / PATHS / sorted(os.listdir(store / PATHS))[0])


def _link_manifest(store: Path) -> None:
    (store.parent / "fake.json").write_text((store / MANIFEST).read_text())
    (store / MANIFEST).unlink()
    (store / MANIFEST).symlink_to(store.parent / "fake.json")


def test_a_cached_plan_of_a_changed_copy_is_stale(tmp_path, paths):
    store = tmp_path / "store"
    copy = storecopy.sync(str(store), closure_of(paths[:2]), "copy", KEY)
    cached = Plan(
        command=("true",),
        mounts=(MountOp("ro-bind", "/nix/store", copy.root),),
        env={},
        cwd="/",
        limits=PlanLimits(),
        seccomp_profiles=(),
        closure=tuple(paths[:2]),
        path_dirs=(f"{paths[0]}/bin",),
        checked=(("bind", copy.root, "dir"),),
        store="copy",
        store_dir=str(store),
        store_stamp=copy.stamp,
    )
    assert stale_reason(cached) is None
    storecopy.sync(str(store), closure_of(paths[:2]), "copy", KEY)  # a refresh: a new manifest
    assert "changed" in stale_reason(cached)
    import dataclasses

    fresh = dataclasses.replace(cached, store_stamp=manifest_stamp(str(store)))
    assert stale_reason(fresh) is None
    _rm_entry(store)
    assert "lacks" in stale_reason(fresh)
