"""Probe: store paths the root's Nix no longer registers valid, reused from the sealed resolve
cache. The cache entry was verified (``verify_in_store``) when written; a later run checks only
that the env directory exists in the root. The root's database gone (restored from a backup of
its files, a half-finished copy, nix's db reset) leaves files nix does not vouch for: a cell
must not run them (nix would re-check or refuse them; nixcell says so in one line)."""

from __future__ import annotations

import shutil

import pytest
from tests.integration.backendrig import run_captured
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13b.rootrig import base_closure

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def root(offline_set):
    made = seeded_root(base_closure())
    yield made
    remove_root(made)


def test_paths_the_root_no_longer_registers_are_not_run(root, monkeypatch) -> None:
    from nixcell.errors import NixcellError

    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    first = run_captured("echo first", packages=["bash", "coreutils"])  # resolved, cached
    assert first.exit_code == 0, first.stderr
    shutil.rmtree(f"{root}/nix/var/nix/db")  # nothing is registered valid in the root now
    try:
        result = run_captured("echo unregistered-ran", packages=["bash", "coreutils"])
    except NixcellError as exc:  # the safe outcome: refused in nixcell's words
        assert "\n" not in str(exc)
        return
    assert b"unregistered-ran" not in result.stdout, (
        "a cell ran store paths the root's nix does not register valid (the sealed resolve "
        "cache was trusted with only the env's directory checked)"
    )
