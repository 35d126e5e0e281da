"""Shared fixtures. Integration tests run real nix, bwrap and cgroups; they skip with a printed
reason where the host cannot (not root, tool missing) — CI runs them as root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NIXCELL = str(Path(sys.executable).with_name("nixcell"))
# What /tmp held before the suite (./test lists it before its first pytest): the last test
# complains only of what this run left.
_BASELINE = os.environ.get("NIXCELL_SUITE_TMP_BASELINE")
TMP_AT_START = frozenset(
    Path(_BASELINE).read_text().split()
    if _BASELINE
    else (p.name for p in Path("/tmp").iterdir() if p.name.startswith("nixcell"))
)
# Files that look at the whole host (every cell cgroup, every gVisor sandbox, the host's
# mounts, the next free uid slot): a cell of a test running beside them would be a false
# finding. A single test of that kind elsewhere is marked ``@pytest.mark.host_wide``.
HOST_WIDE = {
    "test_limits.py",
    "test_warm_stage.py",
    "test_backend_gvisor.py",
    "test_backend_gvisor_runs.py",
    "test_backend_gvisor_mounts.py",
    "test_identity_orphans.py",  # (which uid slot is free next: no other cell may take one)
    "test_zz_cleanup.py",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HOST_WIDE:
            item.add_marker(pytest.mark.host_wide)


def skip_reason() -> str | None:
    if os.getuid() != 0:
        return "needs root: integration tests use the single-user nix store and cgroups"
    for tool in ("bwrap", "nix-build", "nix-store"):
        if shutil.which(tool) is None:
            return f"needs {tool}: run ./setup"
    return None


@pytest.fixture(scope="session", autouse=True)
def nixcell_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache/state dir for the suite; the offline set stays where ./setup built it."""
    from nixcell import paths
    from nixcell.sandbox.reap import become_subreaper

    become_subreaper()  # as the CLI does: in-process cells leave no orphaned zombie
    os.environ.setdefault("NIXCELL_OFFLINE_DIR", str(paths.offline_dir()))
    home = tmp_path_factory.mktemp("nixcell-home")
    os.environ["NIXCELL_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def offline_set():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    from nixcell.nix.offline import build, find_set

    found = find_set()
    return found if found is not None else build()


def cli(
    *args: str, input: bytes | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    """Run the real `nixcell` console script."""
    return subprocess.run(
        [NIXCELL, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(autouse=True)
def _reap_bare_bwrap_orphans():
    """Tests that run bare ``bwrap`` orphan its pid-1 to us (we are a subreaper): reap them."""
    yield
    from nixcell.sandbox.reap import reap_orphans

    reap_orphans()
