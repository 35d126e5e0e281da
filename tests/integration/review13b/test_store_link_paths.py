"""Probe: a closure path of the Nix root that is itself a symbolic link (a store path may be one:
``ln -s ... $out``, or ``nix-store --add`` of a link; a cache serves it signed like any other).

Its target is absolute (``/nix/store/...``), as every store link is. The cell must see what the
root holds, never the machine's store: the host side must not let the kernel follow that link
on the host when it binds ``ROOT/nix/store/LINK`` (bwrap, runsc and dockerd all resolve a bind's
source path). Here the target is a path the machine's store has and the root does not: in the
cell it must stay a dangling link (or the run be refused), never show the machine's copy.
"""

from __future__ import annotations

import os

import pytest
from tests.integration.backendrig import run_captured
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13b.rootrig import add_link, base_closure, by_name

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture(scope="module")
def linked_root(offline_set):
    """(root, link store path, machine-only target) where the link points at a path the machine's
    store has but the root lacks."""
    root = seeded_root(base_closure())
    target = by_name("gawk")
    assert os.path.isdir(target) and not os.path.lexists(root + target)
    link = add_link(root, "review13b-link", target)
    yield root, link, target
    remove_root(root)


def test_a_link_store_path_never_shows_the_machines_store(backend, linked_root, monkeypatch):
    root, link, target = linked_root
    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    from nixcell.errors import NixcellError

    script = f'for f in {link}/bin/*; do [ -e "$f" ] && echo "seen:${{f##*/}}"; done; echo done'
    try:
        result = run_captured(script, packages=["bash", "coreutils", link], backend=backend)
    except NixcellError as exc:  # refused (the fix chosen): in one line
        assert "\n" not in str(exc) and "symbolic link" in str(exc)
        return
    out = result.stdout.decode()
    # Safe: refused, or the link dangles in the cell (its target is not in the closure).
    # Weak: the machine's gawk (never in the root, never in the closure) is listed.
    assert "seen:gawk" not in out, (
        f"backend {backend}: the cell sees the machine's {target} through {link} "
        f"(bound from {root}{link}, a link the host followed): {out!r}"
    )


def test_a_link_store_path_under_readonly_stays_the_roots(linked_root, monkeypatch):
    """readonly binds ROOT/nix/store as one directory: the link is resolved in the cell, among
    the root's paths (the machine's gawk is not there); or the closure is refused (a link
    store path with a root is refused in every mode since the review)."""
    from nixcell.errors import NixcellError

    root, link, _ = linked_root
    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    script = f'for f in {link}/bin/*; do [ -e "$f" ] && echo "seen:${{f##*/}}"; done; echo done'
    try:
        result = run_captured(script, packages=["bash", "coreutils", link], store="readonly")
    except NixcellError as exc:
        assert "\n" not in str(exc) and "symbolic link" in str(exc)
        return
    assert result.exit_code == 0 and result.stdout.decode() == "done\n", result.stdout
