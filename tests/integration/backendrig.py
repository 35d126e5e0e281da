"""Backends under test: a ``backend_cell`` fixture parametrised over every backend this host
can run (issue 12), skipping the others with the backend's own reason printed.

Slow backends (``SLOW``: a microVM cell costs 5-9 s under TCG) run only a representative subset:
a case marked ``@pytest.mark.fast_only`` (or a ``pytest.param(..., marks=FAST_ONLY)``) is skipped
on them with that reason printed; unmarked cases run on every backend.

Docker needs a daemon of the test's own: ``dockerd.py``'s session fixture starts one on its own
socket and data root, points nixcell at it (``NIXCELL_DOCKER_HOST``) and stops it after.
"""

from __future__ import annotations

import pytest

from nixcell import CellSpec, RunResult, run

RUNNABLE = ("bwrap", "gvisor", "docker", "microvm")  # systemd: plan-level tests only (no PID 1)
SLOW = ("microvm",)
FAST_ONLY = pytest.mark.fast_only


def available(name: str) -> tuple[bool, str]:
    from nixcell.sandbox import backends

    found = backends.availability(name)
    return found.ok, found.detail


@pytest.fixture(params=RUNNABLE)
def backend(request, offline_set) -> str:
    name = request.param
    if name in SLOW and request.node.get_closest_marker("fast_only") is not None:
        pytest.skip(f"backend {name}: its cells cost seconds; the unmarked cases cover it")
    if name == "docker":
        request.getfixturevalue("dockerd")
    ok, why = available(name)
    if not ok:
        pytest.skip(f"backend {name} cannot run here: {why}")
    return name


def run_captured(
    command, *, packages=("bash", "coreutils", "gnugrep"), input: bytes | None = None, **fields
) -> RunResult:
    """One cell, output captured: a string is a bash script, a list the argv."""
    argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
    spec = CellSpec(command=argv, packages=list(packages), **fields)
    return run(spec, capture_output=True, input=input)


@pytest.fixture
def backend_cell(backend):
    """backend_cell("sh -c …" | [argv], packages=[…], **spec fields) -> RunResult, captured."""

    def _run(command, **fields) -> RunResult:
        return run_captured(command, backend=backend, **fields)

    _run.backend = backend  # type: ignore[attr-defined]
    return _run
