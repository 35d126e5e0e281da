"""Any nixcell.toml or nixcage.toml through the real CLI (outside review of issue 10): `status`,
`status --json`, `run --dry-run` and `hook direnv` end with exit 0, 1 or 2 and never a
traceback; a config the loader refuses is one line naming the file and its line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import NIXCELL
from tests.unit.test_project_properties import _document, _values

from nixcell.errors import UsageError
from nixcell.project import schema
from nixcell.project.discover import find
from nixcell.project.load import load

_tricky = st.sampled_from(
    [
        "",
        "~",
        "/",
        ".",
        "..",
        "a:b",
        ":x",
        "x:",
        "/etc/passwd:/x",
        "~/.ssh",
        "-1",
        "0s",
        "99999999999T",
        "*",
        "re:(",
        "[::1]",
        "0.0.0.0/0",
        "env:X",
        ".nixcell/policy.toml",
        "nixcell.toml",
        ".git",
        "../x",
        "/proc",
        "/dev/null",
        "path:.",
        "a#b",
        "--help",
    ]
)
_any = st.one_of(_values, _tricky, st.lists(_tricky, max_size=3))
_COMMANDS = [
    ["status"],
    ["status", "--json"],
    ["run", "--dry-run", "--", "true"],
    ["hook", "direnv"],
]


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    entries=st.lists(st.tuples(st.sampled_from(sorted(schema.KEYS)), _any), max_size=6),
    name=st.sampled_from(["nixcell.toml", "nixcage.toml"]),
    command=st.sampled_from(_COMMANDS),
)
def test_any_config_through_the_cli_is_a_result_or_one_line(entries, name, command):
    root = tempfile.mkdtemp()
    try:
        path = os.path.join(root, name)
        with open(path, "w") as f:
            f.write(_document(entries))
        try:
            load(find(root))  # type: ignore[arg-type]
            refused = False
        except UsageError:
            refused = True
        proc = subprocess.run([NIXCELL, *command], cwd=root, capture_output=True, timeout=120)
        err = proc.stderr.decode(errors="replace")
        # (hypothesis also draws this file's own literals: a value quoted back is no traceback)
        traced = "Traceback" in err and "Traceback" not in _document(entries)
        assert not traced and proc.returncode in (0, 1, 2), err
        if refused and command[0] != "hook":
            last = err.strip().splitlines()[-1]
            assert proc.returncode != 0, err
            assert re.match(rf"nixcell: (?:\S*/)?{re.escape(name)}:\d+: ", last), last
    finally:
        shutil.rmtree(root)
