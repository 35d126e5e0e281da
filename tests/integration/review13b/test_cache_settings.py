"""Probes: what nixcell tells nix about binary caches, and what it says back.

- nix's ``require-sigs`` is what refuses an unsigned path. nixcell passes ``substituters`` and
  ``trusted-public-keys`` and leaves ``require-sigs`` to the ambient configuration: a
  ``NIX_CONFIG`` (or nix.conf) that turns it off must not let a wrongly signed path in.
- A cache URL with credentials: refused in ``[server] substituters``; ``NIXCELL_SUBSTITUTERS``
  (nixcell run) takes it as it is. Whatever nix fails with, nixcell's one line must not hold
  the password.
"""

from __future__ import annotations

import os
import socket

import pytest
from tests.conftest import cli
from tests.integration.nixcache import make_key
from tests.integration.review13b.rootrig import by_name

pytestmark = [pytest.mark.integration, pytest.mark.root]

SECRET = "s3cr3t-review13b-pw"


def test_a_wrong_key_is_refused_even_if_nix_config_drops_require_sigs(
    nix_cache,
    nix_roots,
    tmp_path,
) -> None:
    root = nix_roots()
    _, other = make_key(tmp_path, "not-the-cache-1")
    env = {
        "NIXCELL_NIX_ROOT": root,
        "NIXCELL_SUBSTITUTERS": nix_cache.url,
        "NIXCELL_TRUSTED_PUBLIC_KEYS": other,
        "NIX_CONFIG": "require-sigs = false",
    }
    proc = cli("run", "-p", "bash", "--", "bash", "-c", "echo ran", env=env, input=b"")
    assert b"ran" not in proc.stdout and not os.path.exists(root + by_name("bash")), (
        "a path signed by no trusted key entered the root and ran: nixcell relies on the "
        "ambient require-sigs (pass --option require-sigs true with substituters)"
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["wrong-key", "closed-port"])
def test_a_cache_password_is_never_in_the_error(
    nix_cache,
    nix_roots,
    tmp_path,
    where,
) -> None:
    _, other = make_key(tmp_path, "not-the-cache-1")
    port = nix_cache.url.rsplit(":", 1)[1] if where == "wrong-key" else str(_closed_port())
    root = nix_roots()  # empty: nix must ask the cache
    env = {
        "NIXCELL_NIX_ROOT": root,
        "NIXCELL_SUBSTITUTERS": f"http://user:{SECRET}@127.0.0.1:{port}",
        "NIXCELL_TRUSTED_PUBLIC_KEYS": other,
    }
    proc = cli("run", "-p", "bash", "--", "true", env=env, input=b"")
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert SECRET not in err, f"the cache password in nixcell's error: {err}"
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("ambient", ["keys", "both"])
def test_ambient_nix_config_adds_no_cache_or_key(nix_cache, nix_roots, tmp_path, ambient):
    """``extra-`` settings (nix.conf, NIX_CONFIG) append to what nixcell sets: "without
    [substituters] nix fetches nothing", and only ``trusted_public_keys`` are trusted."""
    root = nix_roots()
    _, other = make_key(tmp_path, "not-the-cache-1")
    env = {"NIXCELL_NIX_ROOT": root}
    if ambient == "keys":  # nixcell names the cache with another key; nix.conf trusts the cache's
        env |= {"NIXCELL_SUBSTITUTERS": nix_cache.url, "NIXCELL_TRUSTED_PUBLIC_KEYS": other}
        env["NIX_CONFIG"] = f"extra-trusted-public-keys = {nix_cache.public_key}"
    else:  # nixcell names no cache; nix.conf names one and its key
        env["NIX_CONFIG"] = (
            f"extra-substituters = {nix_cache.url}\n"
            f"extra-trusted-public-keys = {nix_cache.public_key}"
        )
    proc = cli("run", "-p", "bash", "--", "bash", "-c", "echo ran", env=env, input=b"")
    assert b"ran" not in proc.stdout and not os.path.exists(root + by_name("bash")), (
        f"the ambient nix config ({env['NIX_CONFIG']!r}) let nix fetch into the root"
    )
