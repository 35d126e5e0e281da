"""Probe: a Nix root below a directory a cell may write (``--workdir``, ``--bind``).

A root-run cell writes a bound directory through an idmapped mount: the root's 0555 store paths,
owned by nixcell's uid, are its own there, so it may chmod and change them, and every later cell
runs what it left. Store copies refuse exactly this ("a store dir the cell could write is
refused before anything is copied", nix/storecopy.py); the Nix root must too: the run is refused
in one line, or the cell cannot change the root's files.
"""

from __future__ import annotations

import os

import pytest
from tests.integration.backendrig import run_captured
from tests.integration.nixcache import new_root, nix_copy, remove_root
from tests.integration.review13b.rootrig import base_closure, by_name

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def project(offline_set):
    """(project dir, the Nix root inside it)."""
    top = new_root()
    root = os.path.join(top, "nix-root")
    os.mkdir(root, 0o755)
    nix_copy(base_closure(), root, "--no-check-sigs")
    yield top, root
    remove_root(top)


def test_a_cell_that_could_write_the_root_is_refused(project, monkeypatch) -> None:
    from nixcell.errors import NixcellError

    top, root = project
    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    bash = by_name("bash")
    inside = f"/workspace/nix-root{bash}"
    tamper = f"chmod u+w {inside} && echo tampered > {inside}/planted"
    try:
        run_captured(tamper, packages=["bash", "coreutils"], workdir=top)
    except NixcellError as exc:  # refused: the safe outcome
        assert "\n" not in str(exc)
    later = run_captured(f"cat {bash}/planted 2>/dev/null; true", packages=["bash", "coreutils"])
    assert b"tampered" not in later.stdout, (
        "a cell whose --workdir holds the Nix root changed a store path of the root, and a "
        "later cell (no workdir) ran with it"
    )
