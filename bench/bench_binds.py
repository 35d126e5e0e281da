#!/usr/bin/env python3
"""Binds benchmark: what a bind adds to a warm run, as root and as an ordinary user.

  .venv/bin/python bench/bench_binds.py [--runs 15] [--nixcell PATH] [--network]

Rows, timed in alternating rounds (bench/timing.py) so their differences hold on a busy
machine, each the warm CLI (`subprocess.run` of the console script, stdio on /dev/null):
`run -p bash -- true`; the same with `--bind DIR`, `--ro-bind DIR`, `--workdir DIR`; `run -- true`
in a project at level standard with the network off (seven binds: the project, four state dirs,
two read-only protections). As root each bind goes through the idmapped stage
(sandbox/stage.py); as an ordinary user (uid 65534, through `setpriv`) bwrap binds directly:
those rows run when root can switch to it. `--network`: also `--allow-host '*'` with and
without a bind (the normal executor: the stage is made by the network's namespace helper).
`--nixcell PATH`: time another build of nixcell (a checkout's launcher) for a before/after.
No network is used (the proxy is started, nothing is sent through it).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, pct  # (bench/ is not a package)

NOBODY = 65534


def runner(argv: list[str], cwd: Path, env: dict[str, str] | None = None):
    def run() -> None:
        subprocess.run(argv, cwd=cwd, env=env, check=True, stdin=subprocess.DEVNULL)

    return run


def project(root: Path) -> Path:
    root.mkdir(parents=True)
    text = '[sandbox]\nlevel = "standard"\n[sandbox.network]\nmode = "none"\n'
    (root / "nixcell.toml").write_text(text + '[nix]\npackages = ["bash"]\n')
    return root


def as_nobody(nixcell: str, home: Path, *args: str) -> tuple[list[str], dict[str, str]] | None:
    """(argv, env) running ``nixcell args`` as uid 65534 from a cache root resolved under
    ``home`` (the integration tests' own preparation); None when root cannot switch to it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import NIXCELL
    from tests.integration.test_ordinary_user import as_nobody as prepared

    argv, env = prepared(home, *args, spawn=True)
    return [nixcell if a == NIXCELL else a for a in argv], env


def report(samples: dict[str, list[float]], base: str) -> None:
    base_ms = statistics.median(samples[base])
    for name, values in samples.items():
        extra = (statistics.median(values) - base_ms) * 1000
        p50, p90 = statistics.median(values) * 1000, pct(values, 0.9) * 1000
        print(f"{name:46} {p50:8.1f} {p90:8.1f} {extra:7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--nixcell", default=str(Path(sys.executable).with_name("nixcell")))
    parser.add_argument("--network", action="store_true")
    args = parser.parse_args()
    if "NIXCELL_OFFLINE_DIR" not in os.environ:
        from nixcell import paths

        os.environ["NIXCELL_OFFLINE_DIR"] = str(paths.offline_dir())
    nc = args.nixcell
    with tempfile.TemporaryDirectory(prefix="nixcell-bench-") as tmp:
        base = Path(tmp)
        base.chmod(0o755)  # (the ordinary user's rows live under it)
        (base / "dir").mkdir()
        plain = [nc, "run", "-p", "bash"]
        rows = {
            "run -p bash -- true": runner([*plain, "--", "true"], base),
            "run -p bash --bind DIR -- true": runner([*plain, "--bind", "dir", "--", "true"], base),
            "run -p bash --ro-bind DIR -- true": runner(
                [*plain, "--ro-bind", "dir", "--", "true"], base
            ),
            "run -p bash --workdir DIR -- true": runner(
                [*plain, "--workdir", "dir", "--", "true"], base
            ),
            "project standard, network none: run -- true": runner(
                [nc, "run", "--", "true"], project(base / "project")
            ),
        }
        print(f"{'row (as ' + ('root' if os.geteuid() == 0 else 'this user') + ')':46} "
              f"{'p50 ms':>8} {'p90 ms':>8} {'+ms':>7}")  # fmt: skip
        report(interleaved(rows, args.runs), "run -p bash -- true")
        user = base / "user"
        user.mkdir()
        plain_user = as_nobody(nc, user, "run", "-p", "bash", "--", "true")
        bind_user = as_nobody(nc, user, "run", "-p", "bash", "--bind", "dir", "--", "true")
        if plain_user is not None and bind_user is not None:
            (user / "dir").mkdir()
            os.chown(user / "dir", NOBODY, NOBODY)
            rows = {
                "nobody: run -p bash -- true": runner(plain_user[0], user, plain_user[1]),
                "nobody: run -p bash --bind DIR -- true": runner(bind_user[0], user, bind_user[1]),
            }
            report(interleaved(rows, args.runs), "nobody: run -p bash -- true")
        if args.network:
            net = [*plain, "--allow-host", "*"]
            name = "run -p bash --allow-host '*' -- true"
            rows = {
                name: runner([*net, "--", "true"], base),
                "... --allow-host '*' --bind DIR -- true": runner(
                    [*net, "--bind", "dir", "--", "true"], base
                ),
            }
            report(interleaved(rows, max(5, args.runs // 2)), name)


if __name__ == "__main__":
    main()
