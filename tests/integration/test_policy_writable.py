"""A policy or audit file the cell can change is refused (outside review of issue 10).

The host reads a policy before each run; a cell that can write it (a writable mount shows it,
or a directory on its path, or a link there, can be replaced) would choose the next run's
rules and where its credentials go. An audit file's path likewise: a link planted on it would
make the host create and append to a file elsewhere. Each case is a real run; no cell talks
to any address.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL

POLICY = '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "a.example.com"\n'


def _layout(tmp: Path) -> dict[str, Path]:
    proj, data = tmp / "proj", tmp / "data"
    for d in (proj / "conf", proj / ".nixcell", data / "pol", data / "sub", tmp / "out"):
        d.mkdir(parents=True, exist_ok=True)
    for f in (
        proj / "p.toml",
        proj / "conf" / "p.toml",
        proj / ".nixcell" / "p.toml",
        data / "pol" / "p.toml",
        data / "sub" / "p.toml",
        tmp / "outside.toml",
    ):
        f.write_text(POLICY)
    os.symlink(proj, tmp / "proj-link")
    os.symlink(proj / "conf", tmp / "conf-link")
    os.symlink(data / "sub", proj / "lnk")  # a link in the project, to a dir no cell sees
    return {"proj": proj, "data": data}


def _config(proj: Path, level: str = "standard", policy: str | None = None) -> None:
    text = f'[sandbox]\nlevel = "{level}"\n[nix]\npackages = ["coreutils"]\n'
    if policy and policy.startswith("audit:"):
        text += f'[sandbox.network]\nmode = "open"\naudit = "{policy[6:]}"\n'
    elif policy == "open":
        text += '[sandbox.network]\nmode = "open"\n'
    elif policy:
        text += f'[sandbox.network]\nmode = "proxy"\npolicy = "{policy}"\n'
    (proj / "nixcell.toml").write_text(text)


# (name, config's level and policy or None for no project, run's flags; {t} is tmp_path)
REFUSED = [
    ("flag policy at the project root", ("standard", None), ["--policy", "p.toml"]),
    ("flag policy in a project subdir", ("standard", None), ["--policy", "conf/p.toml"]),
    ("flag policy through a link", ("standard", None), ["--policy", "{t}/conf-link/p.toml"]),
    ("config policy via a linked root", ("standard", "{t}/proj-link/p.toml"), []),
    ("config policy via a linked subdir", ("standard", "{t}/conf-link/p.toml"), []),
    ("relaxed, flag policy at the root", ("relaxed", None), ["--policy", "p.toml"]),
    ("flag policy through a link in the project", ("standard", None), ["--policy", "lnk/p.toml"]),
    ("config policy through a link in the project", ("standard", "lnk/p.toml"), []),
    ("config audit in a project subdir", ("standard", "audit:conf/audit.jsonl"), []),
    ("config audit through a link in the project", ("standard", "audit:lnk/audit.jsonl"), []),
    ("flag audit at the project root", ("standard", "open"), ["--audit", "audit.jsonl"]),
    (
        "audit in the workdir",
        None,
        ["--workdir", "{t}/data", "--allow-host", "a.test", "--audit", "{t}/data/audit.jsonl"],
    ),
    ("workdir", None, ["--workdir", "{t}/data", "--policy", "{t}/data/sub/p.toml"]),
    ("rw bind", None, ["--bind", "{t}/data:/d", "--policy", "{t}/data/pol/p.toml"]),
    (
        "ro bind of the file, its dir renamable",
        None,
        [
            "--bind",
            "{t}/data:/d",
            "--ro-bind",
            "{t}/data/sub/p.toml:/d/sub/p.toml",
            "--policy",
            "{t}/data/sub/p.toml",
        ],
    ),
]
ALLOWED = [
    ("config policy in .nixcell", ("standard", ".nixcell/p.toml"), []),
    ("config policy at the root", ("standard", "p.toml"), []),
    ("flag policy in .nixcell", ("standard", None), ["--policy", ".nixcell/p.toml"]),
    ("strict: the project is not mounted", ("strict", None), ["--policy", "p.toml"]),
    ("outside every mount", ("standard", None), ["--policy", "{t}/outside.toml"]),
    ("ro bind of the dir", None, ["--ro-bind", "{t}/data:/d", "--policy", "{t}/data/pol/p.toml"]),
    ("open mode's own audit file", ("standard", "open"), []),
    ("audit outside every mount", ("standard", "open"), ["--audit", "{t}/audit.jsonl"]),
    (
        "audit beside a ro bind",
        None,
        ["--ro-bind", "{t}/data:/d", "--allow-host", "a.test", "--audit", "{t}/data/audit.jsonl"],
    ),
]


def _run(tmp_path: Path, project, flags: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    paths = _layout(tmp_path)
    t = str(tmp_path)
    flags = [f.format(t=t) for f in flags]
    out = ["--bind", f"{t}/out:/out"]
    if project is None:
        args = ["run", "--no-project", "-p", "coreutils", *out, *flags, "--", "touch", "/out/ran"]
        cwd = tmp_path
    else:
        level, policy = project
        _config(paths["proj"], level, policy.format(t=t) if policy else None)
        args = ["run", *out, *flags, "--", "touch", "/out/ran"]
        cwd = paths["proj"]
    proc = subprocess.run([NIXCELL, *args], cwd=cwd, capture_output=True, timeout=300)
    return proc, tmp_path / "out" / "ran"


@pytest.mark.parametrize("name,project,flags", REFUSED, ids=[c[0] for c in REFUSED])
def test_a_file_the_cell_could_change_is_refused(offline_set, tmp_path, name, project, flags):
    proc, ran = _run(tmp_path, project, flags)
    err = proc.stderr.decode()
    last = err.strip().splitlines()[-1]
    assert proc.returncode != 0, err
    if "could replace the directory above it" not in last:  # the loader's own check
        assert "refusing to run" in last, err
        assert ("policy file" in last) != ("audit file" in last), err
    assert "Traceback" not in err
    assert not ran.exists()


@pytest.mark.parametrize("name,project,flags", ALLOWED, ids=[c[0] for c in ALLOWED])
def test_a_file_the_cell_cannot_change_is_used(offline_set, tmp_path, name, project, flags):
    proc, ran = _run(tmp_path, project, flags)
    assert proc.returncode == 0, proc.stderr.decode()
    assert ran.exists()
