"""The Python API: same pipeline as the CLI, no subprocess of nixcell."""

from __future__ import annotations

import asyncio

import pytest

import nixcell
from nixcell import CellSpec
from nixcell.errors import NixcellError


def test_run_returns_result(offline_set):
    spec = CellSpec(command=["python3", "-c", "print(6 * 7)"], packages=["python3"])
    result = nixcell.run(spec, capture_output=True)
    assert (result.exit_code, result.stdout, result.timed_out) == (0, b"42\n", False)
    assert result.duration > 0 and result.cell_id


def test_python_batteries_work_in_a_cell(offline_set):
    script = (
        "import ssl, sqlite3, json, ctypes, venv, subprocess, sys\n"
        "db = sqlite3.connect(':memory:'); db.execute('create table t(x)')\n"
        "print(ssl.OPENSSL_VERSION.split()[0], sys.prefix.startswith('/nix/store/'))\n"
        "subprocess.run([sys.executable, '-m', 'venv', '/tmp/v'], check=True)\n"
        "subprocess.run(['/tmp/v/bin/python', '-m', 'pip', '--version'], check=True,"
        " stdout=subprocess.DEVNULL)\n"
        "print('venv ok')\n"
    )
    result = nixcell.run(
        CellSpec(command=["python3", "-c", script], packages=["python3"]), capture_output=True
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout.decode().split() == ["OpenSSL", "True", "venv", "ok"]


@pytest.mark.parametrize(
    ("packages", "command", "expect"),
    [
        (
            ["nodejs"],
            ["node", "-e", "console.log(process.versions.node.split('.')[0] >= 22)"],
            b"true\n",
        ),
        (["jq"], ["jq", "-n", "-c", "[1,2]|add"], b"3\n"),
        (["curl"], ["curl", "-V"], b"https"),
        (
            ["git", "bash"],
            [
                "bash",
                "-c",
                "git init -q /tmp/r && cd /tmp/r && "
                "git -c user.email=a@b -c user.name=n commit -q --allow-empty "
                "-m m && git log --format=%s",
            ],
            b"m\n",
        ),
        (
            ["gnugrep", "gnused", "gawk", "findutils", "diffutils", "bash"],
            [
                "bash",
                "-c",
                "echo abc | grep b | sed s/b/x/ | awk '{print $1}'; "
                "find /proc/self -maxdepth 0; diff <(echo 1) <(echo 1) && echo same",
            ],
            b"axc\n/proc/self\nsame\n",
        ),
        (["busybox"], ["busybox", "echo", "bb"], b"bb\n"),
    ],
)
def test_offline_packages_work_in_cells(offline_set, packages, command, expect):
    result = nixcell.run(CellSpec(command=command, packages=packages), capture_output=True)
    assert result.exit_code == 0, result.stderr
    assert expect in result.stdout


def test_async_runs_in_parallel_without_cross_talk(offline_set):
    async def main():
        specs = [
            CellSpec(
                command=["bash", "-c", f"echo cell-{i}; echo err-{i} >&2; exit {i % 5}"],
                packages=["bash"],
            )
            for i in range(20)
        ]
        return await asyncio.gather(*(nixcell.run_async(s, capture_output=True) for s in specs))

    results = asyncio.run(main())
    for i, result in enumerate(results):
        assert result.stdout == f"cell-{i}\n".encode()
        assert result.stderr == f"err-{i}\n".encode()
        assert result.exit_code == i % 5
    assert len({r.cell_id for r in results}) == 20


def test_async_timeout_and_cancel(offline_set):
    async def main():
        timed = await nixcell.run_async(
            CellSpec(command=["sleep", "50.5"], packages=["coreutils"], limits={"timeout": "1s"})
        )
        task = asyncio.ensure_future(
            nixcell.run_async(
                CellSpec(command=["sleep", "60.5"], packages=["coreutils"], limits={"pids": 8})
            )
        )
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return timed

    timed = asyncio.run(main())
    assert timed.exit_code == 124 and timed.timed_out
    import subprocess

    assert subprocess.run(["pgrep", "-f", "sleep 6?0.5"], capture_output=True).stdout == b""


def test_async_input(offline_set):
    result = asyncio.run(
        nixcell.run_async(
            CellSpec(command=["wc", "-c"], packages=["coreutils"]),
            capture_output=True,
            input=b"12345",
        )
    )
    assert result.stdout.strip() == b"5"


def test_errors_are_nixcell_errors(offline_set):
    with pytest.raises(NixcellError, match="unknown package"):
        nixcell.run(CellSpec(command=["true"], packages=["no-such-package-xyz"]))


def test_in_process_runs_leave_no_zombie(offline_set):
    """The runner reaps the cell's pid-1 that bwrap orphans to us (sandbox/reap.py)."""
    import os
    import subprocess

    for _ in range(3):
        assert nixcell.run(CellSpec(command=["true"], packages=["bash"])).exit_code == 0
    children = subprocess.run(
        ["ps", "-o", "pid=,stat=,comm=", "--ppid", str(os.getpid())], capture_output=True, text=True
    ).stdout
    assert [line for line in children.splitlines() if "bwrap" in line] == []


def test_concurrent_cold_resolutions_of_one_key(offline_set, tmp_path, monkeypatch):
    """Threads resolving the same packages at once all succeed (cache writes never collide)."""
    from concurrent.futures import ThreadPoolExecutor

    from nixcell.nix.resolve import resolve

    for round_ in range(4):  # a collision is a race: give it several chances to show
        home = tmp_path / f"home{round_}"
        monkeypatch.setenv("NIXCELL_HOME", str(home))
        with ThreadPoolExecutor(16) as pool:
            closures = list(pool.map(lambda _: resolve(["bash", "coreutils"], None), range(16)))
        assert len({c.env for c in closures}) == 1
        assert not list((home / "cache" / "resolve").glob("*.tmp"))
