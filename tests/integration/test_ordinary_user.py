"""nixcell run by an ordinary (non-root) user: same isolation, limits refused where not delegated.

The single-user nix store belongs to root, so the user gets a resolution cache that root filled
(as a shared cache or a nix daemon would); from there no nix call is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import NIXCELL

NOBODY = 65534


def as_nobody(home: Path, *args: str, spawn: bool = False):  # -> CompletedProcess | (argv, env)
    """Run nixcell as uid/gid 65534 with a cache root prepared (resolved) under ``home``.

    ``spawn``: return (argv, env) for the caller to start instead of running to completion."""
    state = home / "nixcell-home"
    if not state.exists():
        # Root resolves (nix needs the root-owned store); the user then runs from the cache.
        resolved = (["bash", "coreutils", "gnugrep"], ["bash", "coreutils"], ["bash"], ["python3"])
        for packages in resolved:
            subprocess.run(
                [NIXCELL, "run", *(f"-p{p}" for p in packages), "--", packages[0], "-c", ""],
                check=True,
                env={**os.environ, "NIXCELL_HOME": str(state)},
            )
        # The root-built offline set lives under /root (0700): give the user its own view of it.
        offline = state / "offline"
        offline.mkdir()
        for name in ("set.nix", "set.json"):
            shutil.copy2(Path(os.environ["NIXCELL_OFFLINE_DIR"], name), offline / name)
        for root, dirs, files in os.walk(state):
            for name in [*dirs, *files]:
                os.lchown(os.path.join(root, name), NOBODY, NOBODY)
        os.chown(state, NOBODY, NOBODY)
    home.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "NIXCELL_HOME": str(state),
        "NIXCELL_OFFLINE_DIR": str(state / "offline"),
        "LANG": "C.UTF-8",
    }
    argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", NIXCELL, *args]
    if spawn:
        return argv, env
    return subprocess.run(
        argv,
        capture_output=True,
        env=env,
        cwd=str(home),
        timeout=120,
    )


def test_ordinary_user_runs_isolated_cell(user_home):
    result = as_nobody(
        user_home,
        "run",
        "-p",
        "bash",
        "-p",
        "coreutils",
        "-p",
        "gnugrep",
        "--",
        "bash",
        "-c",
        "id -u; ls -A /; cat /etc/shadow 2>/dev/null || echo no-shadow; "
        "grep CapEff /proc/self/status; tail -n +3 /proc/net/dev | cut -d: -f1",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == "1000"
    assert "no-shadow" in lines
    assert "0000000000000000" in lines, " ".join(lines)
    assert lines[-1] == "lo"
    assert "root" not in lines[1:10]


def test_ordinary_user_timeout_and_exit_codes(user_home):
    result = as_nobody(
        user_home,
        "run",
        "-p",
        "bash",
        "-p",
        "coreutils",
        "--timeout",
        "1s",
        "--",
        "bash",
        "-c",
        "sleep 77.5 & sleep 77.5",
    )
    assert result.returncode == 124
    assert subprocess.run(["pgrep", "-f", "sleep 77.5"], capture_output=True).stdout == b""
    exited = as_nobody(user_home, "run", "-p", "bash", "--", "bash", "-c", "exit 5")
    assert exited.returncode == 5


def test_ordinary_user_gets_the_no_network_hint(user_home):
    """The probe opens the counters of a cell bwrap made in the user's own namespaces."""
    code = "import urllib.request; urllib.request.urlopen('https://pypi.test/', timeout=20)"
    result = as_nobody(user_home, "run", "-p", "python3", "--", "python3", "-c", code)
    assert result.returncode == 1
    assert result.stderr.decode().rstrip("\n").rsplit("\n", 1)[-1] == (
        "nixcell: the cell has no network; allow a host with --allow-host HOST, or --policy FILE"
    )
    ok = as_nobody(user_home, "run", "-p", "python3", "--", "python3", "-c", "raise SystemExit(2)")
    assert ok.returncode == 2 and b"no network" not in ok.stderr
