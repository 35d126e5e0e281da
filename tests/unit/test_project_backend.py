"""A project's ``[sandbox] backend``: every backend name accepted, carried into the CellSpec,
``--backend`` winning over it, shown by ``status`` (with the backend's host program)."""

from __future__ import annotations

import pytest

from nixcell.project.compile import compile_spec
from nixcell.project.discover import find
from nixcell.project.load import load
from nixcell.project.state import ensure_state
from nixcell.project.status import summary
from nixcell.sandbox import backends


def _project(root, backend: str):
    root.mkdir(exist_ok=True)
    (root / "nixcell.toml").write_text(
        f'[sandbox]\nbackend = "{backend}"\n[nix]\npackages = ["bash"]\n'
    )
    project = load(find(str(root)))  # type: ignore[arg-type]
    ensure_state(project)
    return project


@pytest.mark.parametrize("name", [*backends.NAMES, "auto"])
def test_every_backend_reaches_the_spec_and_the_status(tmp_path, name):
    project = _project(tmp_path / "p", name)
    assert project.config.backend == name
    assert compile_spec(project, ["true"], {}, str(tmp_path / "p")).backend == name
    flagged = compile_spec(project, ["true"], {"backend": "bwrap"}, str(tmp_path / "p"))
    assert flagged.backend == "bwrap"  # the flag wins
    info = summary(project)
    assert info["backend"] == name
    deps = {d["name"]: d for d in info["dependencies"]}
    if name in ("bwrap", "auto"):
        assert deps["bubblewrap"]["required"] and not any(n.startswith("backend ") for n in deps)
    else:
        row = deps[f"backend {name}"]
        assert row["required"] and not deps["bubblewrap"]["required"]
        assert "nixcell doctor" in row["detail"]
