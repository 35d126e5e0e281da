"""Every cell is a small POSIX machine: /bin/sh for the programs that need one, Python packages
of the offline set importable. Real cells through the real CLI, the real programs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.conftest import cli

pytestmark = pytest.mark.integration


def out(*args: str) -> str:
    result = cli("run", *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


PY_SHELL = (
    "import os, subprocess\n"
    "print(os.system('echo system; exit 3') >> 8)\n"
    "print(subprocess.run('echo $((6 * 7)) | cat', shell=True, capture_output=True, text=True,"
    " check=True).stdout.strip())\n"
    "print(os.environ['SHELL'], os.path.realpath('/bin/sh').rsplit('/', 1)[1])\n"
)


def test_python_system_and_shell_true(offline_set):
    lines = out("-p", "python3", "-p", "coreutils", "--", "python3", "-c", PY_SHELL).splitlines()
    assert lines == ["system", "3", "42", "/bin/sh dash"]


def test_node_exec_sync(offline_set):
    code = "console.log(require('child_process').execSync('echo from-$0').toString().trim())"
    assert out("-p", "nodejs", "--", "node", "-e", code) == "from-/bin/sh\n"


def test_git_clones_a_local_repo_inside_the_cell(offline_set):
    script = (
        "set -e; git init -q -b main /tmp/a; cd /tmp/a; echo x > f; git add f;"
        "git -c user.name=a -c user.email=a@b.test commit -qm first;"
        "git clone -q /tmp/a /tmp/b; git -C /tmp/b log --format=%s"
    )
    assert out("-p", "git", "--", "sh", "-c", script) == "first\n"


def test_git_clones_a_host_repo_bound_read_only(offline_set, tmp_path):
    repo = tmp_path / "r"
    env = {"GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b.test"}
    env |= {"GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b.test"}
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "m"],
                   check=True, env=env)  # fmt: skip
    clone = out("--ro-bind", f"{repo}:/src", "-p", "git", "--", "git", "clone", "-q", "/src", "b")
    assert clone == ""


def test_no_sh_means_no_bin_sh(offline_set):
    code = (
        "import os; print(os.path.lexists('/bin/sh'), 'SHELL' in os.environ,"
        " os.system('echo hi') >> 8)"
    )
    assert out("--no-sh", "-p", "python3", "--", "python3", "-c", code) == "False False 127\n"
    git = cli("run", "--no-sh", "-p", "git", "--", "git", "clone", "-q", "/nowhere", "/tmp/x")
    assert git.returncode != 0


def test_a_plan_with_and_without_sh_differ_and_are_cached_apart(offline_set, tmp_path):
    """The fast path's plan cache and the resolution cache keep the two apart."""
    probe = ["python3", "-c", "import os; print(os.path.lexists('/bin/sh'))"]
    for _ in range(2):  # the second round runs from the cached plans
        assert out("-p", "python3", "--", *probe) == "True\n"
        assert out("--no-sh", "-p", "python3", "--", *probe) == "False\n"
    plans = [
        json.loads(cli("run", *flags, "-p", "python3", "--dry-run", "--json", "--", "true").stdout)
        for flags in ((), ("--no-sh",))
    ]
    assert any("-dash-" in p for p in plans[0]["closure"])
    assert not any("-dash-" in p for p in plans[1]["closure"])


def test_pyyaml_imports_and_the_cell_has_nothing_of_the_host(offline_set):
    code = (
        "import os, yaml; print(yaml.safe_load('a: [1, 2]'), yaml.__with_libyaml__,"
        " os.listdir('/usr') == ['bin'] and os.listdir('/usr/bin') == ['env'],"
        " os.path.exists('/lib'))"
    )
    got = out("-p", "python3", "-p", "python3Packages.pyyaml", "--", "python3", "-c", code)
    assert got == "{'a': [1, 2]} True True False\n"  # /usr holds only bin/env


def test_numpy_linalg_with_its_own_blas(offline_set):
    code = (
        "import os, numpy as np\n"
        "a = np.array([[4.0, 7.0], [2.0, 6.0]])\n"
        "print(np.round(np.linalg.inv(a) @ a, 6).tolist(), round(float(np.linalg.det(a)), 6))\n"
        "print(os.listdir('/usr') == ['bin'] and os.listdir('/usr/bin') == ['env'],"
        " os.path.exists('/lib'))\n"
    )
    got = out("-p", "python3", "-p", "python3Packages.numpy", "--", "python3", "-c", code)
    assert got == "[[1.0, 0.0], [0.0, 1.0]] 10.0\nTrue False\n"
    plan = json.loads(
        cli("run", "-p", "python3", "-p", "python3Packages.numpy", "--dry-run", "--json", "--",
            "true").stdout
    )  # fmt: skip
    numpy_path = next(p for p in plan["closure"] if "-numpy-" in p)
    libs = {p.name for p in Path(numpy_path, "lib").iterdir()}
    assert {"libblas.so.3", "liblapack.so.3"} <= libs  # BLAS/LAPACK came with numpy
    # the cell sees exactly these store paths: nothing else of the host
    names = sorted(p.split("-", 1)[1].rsplit("-", 1)[0] for p in plan["closure"])
    assert names == ["busybox", "dash", "glibc", "nixcell", "python3", "python3.11-numpy"], names


def test_a_set_without_dash_says_how_to_get_one(offline_set, tmp_path):
    """An offline set built before dash joined it: a one-line error naming both ways out."""
    small = tmp_path / "set"
    env = {"NIXCELL_OFFLINE_DIR": str(small)}
    built = cli("offline", "build", "--only", "coreutils", env=env)
    assert built.returncode == 0, built.stderr.decode()
    result = cli("run", "-p", "coreutils", "--", "true", env=env)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines()[-1] == (
        "nixcell: the package set has no dash, which nixcell adds for /bin/sh: rebuild the "
        "offline set with `nixcell offline build`, or pass --no-sh"
    )
    assert cli("run", "--no-sh", "-p", "coreutils", "--", "true", env=env).returncode == 0
    doctor = cli("doctor", env={**env, "COLUMNS": "200"})
    assert doctor.returncode != 0 and b"the offline set has no dash" in doctor.stdout
