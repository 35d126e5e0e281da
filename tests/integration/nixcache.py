"""A REAL signed Nix binary cache on loopback, and Nix roots of a test's own (issue 13).

``nix_cache`` (session): the offline package set's paths (all but the three biggest), copied
from this machine's store with ``nix copy --to file://DIR?secret-key=…`` (nix signs each path
as it writes it) and served over HTTP on 127.0.0.1 by a thread of this process. A host that
names it in ``substituters`` with its public key fetches from it the way it would from any
cache; with another key nix refuses every path.

``nix_roots``: a factory of empty Nix roots (nix makes its store there on first use).
``seeded_root(paths)``: a root with ``paths``' closures copied in (``nix copy --to ROOT``).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

NIX = ("--extra-experimental-features", "nix-command", "--option", "substituters", "")
BIG = ("claude-code", "nodejs", "nix-2")  # not needed by any cache test, and 600 MiB of copying


@dataclass(frozen=True)
class Cache:
    url: str
    public_key: str
    paths: tuple[str, ...]
    directory: Path


def offline_paths() -> list[str]:
    from nixcell.nix.offline import find_set

    found = find_set()
    if found is None:
        pytest.skip("the offline package set is not built (./setup builds it)")
    text = found.nix_file.read_text()
    return sorted(set(re.findall(r'"(/nix/store/[0-9a-z]{32}-[^"]+)"', text)))


def make_key(directory: Path, name: str) -> tuple[Path, str]:
    """(secret key file, public key) of a new signing key called ``name``."""
    secret, public = directory / f"{name}.sk", directory / f"{name}.pk"
    subprocess.run(
        ["nix-store", "--generate-binary-cache-key", name, str(secret), str(public)], check=True
    )
    return secret, public.read_text().strip()


def nix_copy(paths: list[str], to: str, *extra: str) -> None:
    subprocess.run(["nix", *NIX, "copy", *extra, "--to", to, *paths], check=True,
                   capture_output=True)  # fmt: skip


def seeded_root(paths: list[str]) -> str:
    """A new root (``new_root``) with ``paths``' closures copied in from this machine's store."""
    root = new_root()
    nix_copy(paths, root, "--no-check-sigs")
    return root


def new_root() -> str:
    """An empty directory for a Nix root (nix makes its store there on first use), under /tmp
    (cells run as their own uid: every directory above a root must be searchable). Remove it
    with ``remove_root``."""
    root = tempfile.mkdtemp(prefix="suite-nixroot-", dir="/tmp")
    os.chmod(root, 0o755)
    return root


def remove_root(root: str) -> None:
    assert root.startswith("/tmp/suite-nixroot-")
    shutil.rmtree(root, ignore_errors=True)  # (root: the store's 0555 dirs are no bar)


@pytest.fixture
def nix_roots():
    """``nix_roots() -> path``: empty roots, removed after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(new_root())
        return made[-1]

    yield make
    for root in made:
        remove_root(root)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # (the test output is the tests')
        pass


@pytest.fixture(scope="session")
def nix_cache():
    if shutil.which("nix") is None:
        pytest.skip("nix is not installed")
    directory = Path(tempfile.mkdtemp(prefix="suite-cache-", dir="/tmp"))
    try:
        secret, public = make_key(directory, "nixcell-test-cache-1")
        paths = [p for p in offline_paths() if not any(f"-{b}" in p for b in BIG)]
        store = directory / "cache"
        nix_copy(paths, f"file://{store}?compression=none&secret-key={secret}")
        os.unlink(secret)  # (nothing signs anything more)

        def handler(*args: object, **kw: object) -> _Quiet:
            return _Quiet(*args, directory=str(store), **kw)  # type: ignore[arg-type]

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # type: ignore[arg-type]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            yield Cache(url, public, tuple(paths), store)
        finally:
            server.shutdown()
            server.server_close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
