"""Probes: store paths of the root that are links leading out of the store, or through too many
links. The host side resolves them inside the root (``storeroot.logical_real``); each must be
refused before any cell starts, in one line (no traceback, no "internal error")."""

from __future__ import annotations

import os

import pytest
from tests.conftest import cli
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13b.rootrig import add_link, base_closure, by_name

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(scope="module")
def root(offline_set):
    made = seeded_root(base_closure())
    yield made
    remove_root(made)


def _errors(err: str) -> list[str]:
    """stderr without the progress lines (building ..., the offline-set notice)."""
    news = ("nixcell: building ", "nixcell: no nixpkgs found")
    return [ln for ln in err.strip().splitlines() if not ln.startswith(news)]


def _run(root: str, link: str):
    env = {"NIXCELL_NIX_ROOT": root}
    return cli("run", "-p", "bash", "-p", link, "--", "bash", "-c", "echo ran", env=env, input=b"")


@pytest.mark.parametrize("target", ["/etc", "../../../../../../../../etc", "/nix/var/nix/db"])
def test_a_link_out_of_the_store_is_refused(root, target) -> None:
    link = add_link(root, "review13b-out", target)
    proc = _run(root, link)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"ran" not in proc.stdout, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(_errors(err)) == 1, err  # (since the review: a link store path is refused)
    assert "outside the store" in err or "is a symbolic link" in err, err


def test_a_chain_of_too_many_links_is_one_line(root) -> None:
    """41 store paths, each a link to the one before, the first to a path of the root (bash)."""
    link = by_name("bash")
    for i in range(41):
        link = add_link(root, f"review13b-chain{i}", link)
    proc = _run(root, link)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"ran" not in proc.stdout, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert len(_errors(err)) == 1, err


@pytest.mark.parametrize("store", ["closure", "readonly"])
def test_a_root_whose_nix_dir_is_a_link_to_the_machines_is_refused(nix_roots, store) -> None:
    """check_root looks at the root's own path only; ROOT/nix -> /nix would make the root the
    machine's store under another name (nix refuses a store reached through a link)."""
    root = nix_roots()
    os.symlink("/nix", f"{root}/nix")
    env = {"NIXCELL_NIX_ROOT": root}
    proc = cli("run", "--store", store, "-p", "bash", "--", "bash", "-c", "echo ran", env=env,
               input=b"")  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"ran" not in proc.stdout, err
    assert "Traceback" not in err and len(_errors(err)) == 1, err
