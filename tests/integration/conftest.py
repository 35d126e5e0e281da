from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from tests.integration.backendrig import backend, backend_cell, run_captured  # noqa: F401 - fixtures
from tests.integration.dockerd import dockerd  # noqa: F401 - the fixture
from tests.integration.nixcache import nix_cache, nix_roots  # noqa: F401 - the fixtures
from tests.integration.pgserver import pg_dsn, pg_server  # noqa: F401 - the fixtures


@pytest.fixture
def cell(offline_set):
    """cell("sh -c …" | [argv], packages=[…], **spec fields) -> RunResult with captured output."""
    return run_captured


@pytest.fixture
def user_home(offline_set):
    """A home the ordinary user can reach (pytest's tmp_path sits under a 0700 dir)."""
    if os.getuid() != 0:
        pytest.skip("needs root to switch to an ordinary user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux)")
    home = Path(tempfile.mkdtemp(prefix="cell-user-", dir="/tmp"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A loopback HTTPS upstream (tests/integration/upstream.py) with its trustme CA file."""
    from tests.integration import upstream as up

    directory = tmp_path_factory.mktemp("upstream")
    _, ca_file, chain = up.make_ca(directory)
    server = up.start(chain)
    server.ca_file = ca_file  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain():
    """A loopback plain-HTTP upstream."""
    from tests.integration import upstream as up

    server = up.start(None)
    yield server
    server.stop()


@pytest.fixture
def fake_anthropic(tmp_path):
    """tests/integration/fakeanthropic.py's stand-in API on a loopback address, port 443."""
    from tests.integration import fakeanthropic, fakeapi

    if os.getuid() != 0:
        pytest.skip("the stand-in API listens on port 443 (needs root)")
    server = fakeapi.start(fakeanthropic.HOSTS, tmp_path, fakeanthropic.Handler)
    yield server
    server.stop()
