"""Probe: a Nix root whose path holds characters other parsers split on: a space, ',' (docker's
--mount, systemd's lists), ':' (bind SRC:DST, systemd's BindReadOnlyPaths), '=' and '&' (query
strings). Every backend must bind the root's own file (a marker planted in the root's copy of
bash) or refuse the run in one line; never run with something else at /nix/store/X."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from tests.integration.backendrig import run_captured
from tests.integration.nixcache import new_root, nix_copy, remove_root
from tests.integration.review13b.rootrig import base_closure, by_name

pytestmark = [pytest.mark.integration, pytest.mark.root]

ODD = "a b,c:d=e&f"
MARKER = "review13b-marker"


@pytest.fixture(scope="module")
def odd_root(offline_set):
    top = new_root()
    root = os.path.join(top, ODD)
    os.mkdir(root, 0o755)
    nix_copy(base_closure(), root, "--no-check-sigs")
    bash = root + by_name("bash")
    token = secrets.token_hex(8)
    os.chmod(bash, 0o755)
    Path(bash, MARKER).write_text(token)
    os.chmod(bash, 0o555)
    yield root, token
    remove_root(top)


def test_a_root_with_odd_characters_binds_its_own_files(backend, odd_root, monkeypatch):
    from nixcell.errors import NixcellError

    root, token = odd_root
    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    script = f'echo "$(< {by_name("bash")}/{MARKER})"'  # (bash alone: no cat)
    try:
        result = run_captured(script, packages=["bash"], backend=backend)
    except NixcellError as exc:  # refused before the cell: fine, if in one line
        assert "\n" not in str(exc)
        return
    assert result.exit_code == 0, (backend, result.exit_code, result.message, result.stderr)
    assert result.stdout.decode().strip() == token, (backend, result.stdout, result.stderr)
