"""Probe: a Nix root whose path nix reads as a store URI with parameters.

nixcell passes ``--store ROOT`` as it is; nix splits a non-URL store at ``?`` into a path and
query parameters (``/a?real=/b``: root /a, real store /b). nixcell checks, and binds the cells'
paths from, the whole string. The two must agree: a root nix would read differently is refused in
one line, or nix's store is made exactly at the root nixcell checked, never beside it.
"""

from __future__ import annotations

import os

import pytest
from tests.conftest import cli

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.mark.parametrize("name", ["r?b", "s?real=PARENT/real"])
def test_a_root_nix_would_parse_as_a_uri_is_refused(nix_roots, name) -> None:
    """``s?real=PARENT/real``: a plain directory path (made here), which nix reads as the store
    whose database is PARENT/s and whose files are PARENT/real."""
    parent = nix_roots()
    name = name.replace("PARENT", parent.lstrip("/"))
    root = os.path.join(parent, name.replace("=", "=/"))
    os.makedirs(os.path.dirname(root), exist_ok=True)
    name = root[len(parent) + 1 :].split("/", 1)[0]  # (the directory made here)
    proc = cli("run", "-p", "bash", "--", "true", env={"NIXCELL_NIX_ROOT": root}, input=b"")
    err = proc.stderr.decode()
    assert "Traceback" not in err and proc.returncode != 0, err
    made = sorted(set(os.listdir(parent)) - {name})
    assert not made, (
        f"nix made its store at {[os.path.join(parent, m) for m in made]}, not at the root "
        f"{root!r} nixcell checked and binds from (nixcell said: {err.strip()!r})"
    )
