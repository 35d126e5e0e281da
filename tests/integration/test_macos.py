"""On macOS nixcell runs no cell (no backend yet) and says so in one line; `run --dry-run --sbpl`
prints the profile a backend would use, on any system.

NIXCELL_PLATFORM=darwin makes the real CLI refuse here as it does on macOS (platforms.py: the
variable can only add the refusal). Each refusal is checked against a cell that leaves a mark
when it runs — the same command without the variable does leave it.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from tests.conftest import cli
from tests.unit import sbplread

import nixcell
from nixcell import CellSpec
from nixcell.errors import PlatformError
from nixcell.platforms import MACOS_REFUSAL
from nixcell.sandbox.macos import host_path

DARWIN = {"NIXCELL_PLATFORM": "darwin"}
REFUSAL = f"nixcell: {MACOS_REFUSAL}\n".encode()


def _marking(tmp_path) -> tuple[list[str], object]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    flags = ["run", "-p", "bash", "-p", "coreutils", "--bind", f"{work}:/w", "--"]
    return [*flags, "touch", "/w/ran"], work / "ran"


def test_run_is_refused_in_one_line_and_no_cell_starts(offline_set, tmp_path):
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    args, mark = _marking(tmp_path)
    refused = cli(*args, env={**env, **DARWIN}, input=b"")
    assert (refused.returncode, refused.stdout, refused.stderr) == (1, b"", REFUSAL)
    assert not mark.exists()
    ran = cli(*args, env=env, input=b"")  # the same command runs where there is a backend
    assert ran.returncode == 0, ran.stderr
    assert mark.exists()


def test_the_warm_path_refuses_too(offline_set, tmp_path):
    """A plan cached by earlier runs is never run on macOS (cli/fast.py checks first)."""
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    args, mark = _marking(tmp_path)
    for _ in range(2):  # planned and cached, then run from the cache
        assert cli(*args, env=env, input=b"").returncode == 0
    assert any((tmp_path / "home" / "cache" / "plans").iterdir())
    mark.unlink()
    refused = cli(*args, env={**env, **DARWIN}, input=b"")
    assert (refused.returncode, refused.stderr) == (1, REFUSAL)
    assert not mark.exists()


@pytest.mark.parametrize("value", ["linux", "Darwin", "", "darwin "])
def test_only_the_exact_value_forces_the_refusal(offline_set, tmp_path, value):
    env = {"NIXCELL_HOME": str(tmp_path / "home"), "NIXCELL_PLATFORM": value}
    args, mark = _marking(tmp_path)
    assert cli(*args, env=env, input=b"").returncode == 0
    assert mark.exists()


def test_mcp_and_doctor_say_so(offline_set, tmp_path):
    env = {"NIXCELL_HOME": str(tmp_path / "home"), **DARWIN}
    served = cli("mcp", env=env, input=b"", timeout=60)
    assert (served.returncode, served.stdout, served.stderr) == (1, b"", REFUSAL)
    doctor = cli("doctor", env={**env, "COLUMNS": "300"})
    assert doctor.returncode == 1
    line = next(x for x in doctor.stdout.decode().splitlines() if "platform" in x)
    assert "MISSING" in line and "cannot run cells on macOS" in line


def test_the_api_refuses(offline_set, monkeypatch):
    """nixcell.run and the async runner refuse too (preflight.check; CellLaunch is the backstop)."""
    from nixcell.runner import prepare, run_async
    from nixcell.sandbox.launch import CellLaunch

    spec = CellSpec(command=["true"], packages=["bash"])
    plan, _closure = prepare(spec)
    monkeypatch.setenv("NIXCELL_PLATFORM", "darwin")
    with pytest.raises(PlatformError, match="cannot run cells on macOS"):
        nixcell.run(spec)
    with pytest.raises(PlatformError):
        asyncio.run(run_async(spec))
    with pytest.raises(PlatformError):
        CellLaunch(plan)


def test_dry_run_sbpl_prints_the_profile_of_the_real_plan(offline_set, tmp_path):
    """Here and on macOS: the profile of the same plan `--dry-run --json` shows."""
    env = {"NIXCELL_HOME": str(tmp_path / "home")}
    project = tmp_path / 'proj "x")(allow default)'
    project.mkdir()
    flags = ["run", "-p", "bash", "--bind", str(project), "--allow-host", "example.test"]
    plan = json.loads(cli(*flags, "--dry-run", "--json", "--", "true", env=env).stdout)
    for extra in ({}, DARWIN):
        shown = cli(*flags, "--dry-run", "--sbpl", "--", "true", env={**env, **extra})
        assert shown.returncode == 0, shown.stderr
        rules = sbplread.read(shown.stdout.decode())
        execs = [r for r in rules if r[0] == "allow" and "process-exec*" in r]
        assert sorted(sbplread.texts(execs[0])) == sorted(plan["closure"])
        where = host_path(str(project))  # (/tmp is /private/tmp on macOS)
        assert sbplread.allowed(rules, "file-write-data", f"{where}/file")
        assert sbplread.allowed(rules, "network-outbound", "ip:localhost:3128")
        assert not sbplread.allowed(rules, "file-read-data", host_path(str(tmp_path / "other")))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--sbpl"], "--sbpl needs --dry-run"),
        (["--dry-run", "--json", "--sbpl"], "--sbpl needs --dry-run and no --json"),
    ],
)
def test_sbpl_flag_errors(offline_set, tmp_path, flags, message):
    result = cli("run", "-p", "bash", *flags, "--", "true", env={"NIXCELL_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.count(b"\n") == 1 and message.encode() in result.stderr


def test_a_path_no_profile_can_hold_is_one_line(offline_set, tmp_path):
    odd = tmp_path / "a\nb"
    odd.mkdir()
    result = cli(
        "run", "-p", "bash", "--ro-bind", str(odd), "--dry-run", "--sbpl", "--", "true",
        env={"NIXCELL_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert result.returncode == 2 and result.stdout == b""
    last = result.stderr.decode().splitlines()[-1]  # (after a fresh home's first-run notice)
    assert last.startswith("nixcell: path ") and last.endswith("lone surrogates are refused)")
    assert "cannot be written into a macOS sandbox profile" in last and "\\n" in last
