"""schemathesis (a real OpenAPI fuzzer) against the real daemon over loopback TCP with a
token: every generated request — valid and invalid by the served schema — gets an answer that
the schema documents (status, content type, body), never a 500, and no traceback is logged.

Excluded, and why: ``positive_data_acceptance`` (the schema fixes shapes; a request can be
well-shaped and still refused, e.g. no packages) and ``/api/v1/uploads`` (a tar body, which
schemathesis cannot generate; tests/unit/test_jobs_tarsend.py and the workspace tests cover it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration


def test_schemathesis_finds_nothing(jobsd):  # noqa: F811
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    d = jobsd(tcp=True)
    out = subprocess.run(
        [st, "run", f"{d.url}/api/v1/openapi.json", "-H", f"Authorization: Bearer {d.token}",
         "--max-examples", "10", "--exclude-checks", "positive_data_acceptance",
         "--exclude-path", "/api/v1/uploads", "--phases", "examples,coverage,fuzzing",
         "--no-color", "--seed", "1", "--workers", "1"],
        capture_output=True,
        timeout=900,
        cwd=d.root,
    )  # fmt: skip
    report = out.stdout.decode(errors="replace")
    assert out.returncode == 0, report[-6000:]
    assert " passed" in report and "Traceback" not in d.log()
    assert d.token not in d.log()
