"""Probes: the warm fast path (cli/fast.py, a sealed cached plan) with a Nix root.

The cached plan of a run with NIXCELL_NIX_ROOT binds from ROOT/nix/store. A warm run must run
it (or fall back to the normal path) and must not skip the checks the normal path makes of the
root (check_root: whoever could write the root could change what every cell runs).

The machine's store holding the same env path as the root (the same packages resolved once
without a root: same inputs, same store path) is the ordinary case on a host that used nixcell
before it was given a root.
"""

from __future__ import annotations

import os

import pytest
from tests.conftest import cli
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13b.rootrig import base_closure

pytestmark = [pytest.mark.integration, pytest.mark.root]

RUN = ("run", "-p", "bash", "-p", "coreutils", "--", "bash", "-c", "echo warm-ok")


@pytest.fixture
def root(offline_set):
    made = seeded_root(base_closure())
    machine = cli(RUN[0], "--dry-run", *RUN[1:], input=b"")  # the env in the machine's store
    assert machine.returncode == 0, machine.stderr
    yield made
    os.chmod(made, 0o755)
    remove_root(made)


def test_a_warm_run_without_a_root_runs(offline_set) -> None:
    """Not about roots at all: the commit's plancheck change calls ``plan.store_source`` on the
    warm path's PlanView, which has no such method (every repeated `nixcell run` exits 70)."""
    run = ("run", "-p", "bash", "--", "bash", "-c", "echo warm-ok")
    for attempt in range(3):
        proc = cli(*run, input=b"")
        assert proc.returncode == 0 and proc.stdout == b"warm-ok\n", (
            f"run {attempt + 1} without a root: exit {proc.returncode}: {proc.stderr.decode()}"
        )


def test_a_warm_run_with_a_nix_root_runs(root) -> None:
    env = {"NIXCELL_NIX_ROOT": root}
    for attempt in range(3):  # the first plans and caches; the next ones take the warm path
        proc = cli(*RUN, input=b"", env=env)
        err = proc.stderr.decode()
        assert proc.returncode == 0 and proc.stdout == b"warm-ok\n", (
            f"run {attempt + 1} with the root: exit {proc.returncode}: {err.strip()}"
        )


def test_a_warm_run_checks_the_root_again(root) -> None:
    """The root made writable by its group after the plan was cached: refused, as on a cold run
    (the warm path must not bind from a root the normal path refuses)."""
    env = {"NIXCELL_NIX_ROOT": root}
    first = cli(*RUN, input=b"", env=env)
    assert first.returncode == 0, first.stderr
    os.chmod(root, 0o775)
    proc = cli(*RUN, input=b"", env=env)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"warm-ok" not in proc.stdout, "ran from a group-writable root"
    assert "writable by group or others" in err and len(err.strip().splitlines()) == 1, err
