"""A cached plan is stale when a host path it looked at changed: each kind of change, each role."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nixcell.plan import MountOp, Plan, PlanLimits
from nixcell.plancheck import first_link, path_kind, stale_reason


def make_plan(tmp_path: Path, checked, mounts=()) -> Plan:
    env_bin = tmp_path / "env" / "bin"
    env_bin.mkdir(parents=True, exist_ok=True)
    return Plan(
        command=("true",),
        mounts=tuple(mounts),
        env={},
        cwd="/",
        limits=PlanLimits(),
        seccomp_profiles=(),
        closure=(),
        path_dirs=(str(env_bin),),
        checked=tuple(checked),
    )


def as_dir(p: Path) -> None:
    p.mkdir()


def as_file(p: Path) -> None:
    p.write_text("x")


def as_link(p: Path) -> None:
    target = p.parent / "elsewhere"
    target.mkdir(exist_ok=True)
    p.symlink_to(target)


@pytest.mark.parametrize(
    ("role", "before", "after", "stale"),
    [
        ("hide", as_dir, as_file, "was dir and is file"),
        ("hide", as_file, as_dir, "was file and is dir"),
        ("hide", None, as_dir, "was missing and is dir"),
        ("hide", None, as_file, "was missing and is file"),
        ("hide", as_dir, None, "was dir and is missing"),
        ("hide", as_dir, as_dir, None),
        ("hide", None, None, None),
        ("hide", as_dir, as_link, None),  # a hidden path may sit behind a link (host.gather)
        ("bind", as_dir, as_link, "symbolic link"),
        ("bind", as_dir, None, "was dir and is missing"),
        ("bind", as_file, as_dir, "was file and is dir"),
        ("bind", as_file, as_file, None),
    ],
)
def test_changes_make_a_plan_stale(tmp_path, role, before, after, stale):
    path = tmp_path / "p"
    if before is not None:
        before(path)
    plan = make_plan(tmp_path, [(role, str(path), path_kind(str(path)))])
    assert stale_reason(plan) is None
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    elif path.exists() or path.is_symlink():
        path.unlink()
    if after is not None:
        after(path)
    reason = stale_reason(plan)
    assert (reason is None) == (stale is None), reason
    if stale is not None:
        assert stale in reason and str(path) in reason


def test_a_link_above_a_bind_source_is_seen(tmp_path):
    real = tmp_path / "real"
    (real / "data").mkdir(parents=True)
    plan = make_plan(tmp_path, [("bind", str(tmp_path / "via" / "data"), "dir")])
    (tmp_path / "via").symlink_to(real)
    assert "symbolic link" in stale_reason(plan)
    assert first_link(str(tmp_path / "via" / "data")) == str(tmp_path / "via")
    assert first_link(str(real / "data")) is None


def test_gone_closure_and_gone_mount_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    plan = make_plan(tmp_path, [], [MountOp("ro-bind", "/x", src=str(src))])
    assert stale_reason(plan) is None
    src.rmdir()
    assert "is gone" in stale_reason(plan)
    os.rmdir(plan.path_dirs[0])
    assert "closure" in stale_reason(plan)


def test_checked_paths_survive_the_plan_cache_format(tmp_path):
    plan = make_plan(tmp_path, [("hide", "/a", "dir"), ("bind", "/b", "file")])
    again = Plan.from_json(plan.to_json())
    assert again.checked == plan.checked and again == plan


@pytest.mark.parametrize(
    ("planned", "now", "stale"),
    [
        ({"A": "1"}, {"A": "1"}, False),
        ({"A": "1"}, {"A": "2"}, True),
        ({"A": "1"}, {}, True),
        ({}, {"A": "1"}, True),  # unset when planned, set now
        ({}, {}, False),
    ],
)
def test_passed_variables_are_part_of_the_plan(tmp_path, monkeypatch, planned, now, stale):
    import dataclasses

    plan = dataclasses.replace(
        make_plan(tmp_path, ()), env=dict(planned), passed_env=(("A", "A" in planned),)
    )
    monkeypatch.delenv("A", raising=False)
    for key, value in now.items():
        monkeypatch.setenv(key, value)
    reason = stale_reason(plan)
    assert (reason is not None) == stale, reason
    if stale:
        assert "1" not in (reason or "") and "2" not in (reason or "")  # names, never values


def test_a_changed_policy_file_makes_the_plan_stale(tmp_path):
    import dataclasses

    from nixcell.host import stamp_of

    policy = tmp_path / "p.toml"
    policy.write_text("[[rules]]\n")
    plan = dataclasses.replace(make_plan(tmp_path, ()), stamps=(stamp_of(str(policy)),))
    assert stale_reason(plan) is None
    replaced = tmp_path / "new"
    replaced.write_text("[[rules]]\naction = 'allow'\n")
    replaced.rename(policy)
    assert stale_reason(plan) == f"{policy} changed"
    policy.unlink()
    assert stale_reason(plan) == f"{policy} is gone"
