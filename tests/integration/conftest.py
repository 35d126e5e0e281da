from __future__ import annotations

import pytest

from nixcell import CellSpec, RunResult, run


@pytest.fixture
def cell(offline_set):
    """cell("sh -c …" | [argv], packages=[…], **spec fields) -> RunResult with captured output."""

    def _run(
        command, *, packages=("bash", "coreutils", "gnugrep"), input: bytes | None = None, **fields
    ) -> RunResult:
        argv = ["bash", "-c", command] if isinstance(command, str) else list(command)
        spec = CellSpec(command=argv, packages=list(packages), **fields)
        return run(spec, capture_output=True, input=input)

    return _run
