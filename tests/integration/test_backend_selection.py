"""Choosing a backend through the real CLI: ``auto`` on this host, one-line refusals, the
``--dry-run --json`` spec of every backend, the plan cache keeping backends apart, and the
doctor's list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import cli

from nixcell.sandbox import backends

RUN = ("run", "-p", "bash")


def _entries(home: Path) -> list[Path]:
    plans = home / "cache" / "plans"
    return sorted(plans.iterdir()) if plans.exists() else []


def test_auto_is_bwrap_here_and_runs(offline_set, tmp_path):
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    shown = cli(*RUN, "--backend", "auto", "--dry-run", "--json", "--", "true", env=env)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["backend"] == "bwrap" and data["backend_spec"]["name"] == "bwrap"
    for _ in range(2):  # never from a cached plan: auto is probed on every run
        ran = cli(*RUN, "--backend", "auto", "--", "echo", "hi", env=env, input=b"")
        assert (ran.returncode, ran.stdout) == (0, b"hi\n"), ran.stderr
    assert _entries(tmp_path / "home") == []


@pytest.mark.parametrize("name", backends.NAMES)
def test_dry_run_json_carries_every_backends_own_spec(offline_set, tmp_path, name):
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    shown = cli(*RUN, "--backend", name, "--dry-run", "--json", "--", "true", env=env)
    assert shown.returncode == 0, shown.stderr  # render needs the plan only, not the host
    data = json.loads(shown.stdout)
    assert data["backend"] == name
    spec = data["backend_spec"]
    assert spec["name"] == name and isinstance(spec["refusals"], list)
    if name == "systemd":
        assert spec["argv"][0] == "systemd-run" and "--pipe" in spec["argv"]
        assert "ProtectSystem=strict" in spec["properties"] and spec["refusals"] == []


def test_an_unavailable_backend_is_one_line_and_non_zero(offline_set, tmp_path):
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    ran = cli(*RUN, "--backend", "systemd", "--", "true", env=env, input=b"")
    assert ran.returncode != 0 and b"Traceback" not in ran.stderr
    lines = ran.stderr.decode().strip().splitlines()
    lines = [x for x in lines if "no nixpkgs found" not in x]  # news once per state dir
    assert lines == ["nixcell: the systemd backend cannot run here: " + _why("systemd")]
    assert _entries(tmp_path / "home") == []  # a refused plan is not cached


def _why(name: str) -> str:
    return backends.availability(name).detail


def test_a_cached_plan_serves_only_its_own_backend(offline_set, tmp_path):
    """A warm bwrap plan is never run for another --backend, nor another's for bwrap."""
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    args = (*RUN, "--backend", "bwrap", "--", "echo", "warm")
    assert cli(*args, env=env, input=b"").stdout == b"warm\n"
    (entry,) = _entries(tmp_path / "home")
    assert cli(*args, env=env, input=b"").stdout == b"warm\n"
    assert _entries(tmp_path / "home") == [entry]  # the second run was the warm one
    others = [n for n in backends.NAMES if n != "bwrap" and not backends.availability(n).ok]
    assert "systemd" in others  # no systemd as PID 1 here
    for name in others:
        ran = cli(*RUN, "--backend", name, "--", "echo", "warm", env=env, input=b"")
        assert ran.returncode != 0 and ran.stdout == b"", name
        assert f"the {name} backend cannot run here".encode() in ran.stderr
    assert _entries(tmp_path / "home") == [entry]
    assert cli(*args, env=env, input=b"").stdout == b"warm\n"


def test_doctor_lists_every_backend_with_why_not(offline_set):
    done = cli("doctor")
    out = done.stdout.decode()
    for name in backends.NAMES:
        line = next(x for x in out.splitlines() if f"backend {name}" in x)
        found = backends.availability(name)
        assert line.split()[0] == ("ok" if found.ok else "no"), line
        assert found.detail[:40] in " ".join(out.split()), name
    assert "backend bwrap (default)" in out


def test_a_projects_backend_runs_is_refused_or_overridden(offline_set, tmp_path):
    """``[sandbox] backend``: status shows it; a backend not here refuses in one line; the
    ``--backend`` flag wins; bwrap runs."""
    import os
    import subprocess

    from tests.conftest import NIXCELL

    root = tmp_path / "proj"
    root.mkdir()
    (root / "nixcell.toml").write_text(
        '[sandbox]\nbackend = "systemd"\nlevel = "strict"\n[nix]\npackages = ["bash"]\n'
    )
    env = {**os.environ, "NIXCELL_HOME": str(tmp_path / "home")}

    def nixcell(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [NIXCELL, *args], cwd=root, env=env, capture_output=True, input=b"", timeout=300
        )

    status = nixcell("status")
    assert b"backend   systemd" in status.stdout
    assert b"backend systemd: " in status.stdout  # its host program, as a dependency
    refused = nixcell("run", "--", "echo", "hi")
    assert refused.returncode != 0 and refused.stdout == b""
    assert b"the systemd backend cannot run here" in refused.stderr
    assert b"Traceback" not in refused.stderr
    ran = nixcell("run", "--backend", "bwrap", "--", "echo", "hi")
    assert (ran.returncode, ran.stdout) == (0, b"hi\n"), ran.stderr


def test_a_backend_that_refuses_part_of_the_plan_is_one_line_through_the_cli(
    offline_set, monkeypatch, capsys
):
    """In-process (this process believes systemd runs here: its ``_cache`` entry says so):
    the CLI refuses --disk on systemd before anything starts, in one line, non-zero."""
    import signal

    from nixcell.cli import entry

    monkeypatch.setitem(backends._cache, "systemd", backends.Availability(True, "said so"))
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with pytest.raises(SystemExit) as ended:
            entry.main(["run", "--backend", "systemd", "--disk", "64M", "-p", "bash", "--", "true"])
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    assert ended.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [x for x in err.strip().splitlines() if "no nixpkgs found" not in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("nixcell: the systemd backend cannot enforce --disk")
