"""A read-only mount stays read-only whatever writable parent is also bound (outside review of
issue 10): `--bind D --ro-bind D/sub` mounted every ro bind first, so D covered D/sub and the
cell wrote there; in a project, `--bind ..` came after the protections and the cell rewrote
nixcell.toml and .nixcell/. Real cells; each case also shows the parent stayed writable."""

from __future__ import annotations

import subprocess

import pytest
from tests.conftest import NIXCELL

# (name, config lines or None for no project, flags, read-only paths, writable path);
# {t} is tmp_path, the project is {t}/proj, D is {t}/d
CASES = [
    (
        "flags: ro dir under rw dir",
        None,
        ["--bind", "{t}/d", "--ro-bind", "{t}/d/sub"],
        ["{t}/d/sub/f"],
        "{t}/d/ok",
    ),
    (
        "flags: ro file under rw dir",
        None,
        ["--bind", "{t}/d", "--ro-bind", "{t}/d/sub/f"],
        ["{t}/d/sub/f"],
        "{t}/d/ok",
    ),
    (
        "flags: ro under rw, other targets",
        None,
        ["--bind", "{t}/d:/m", "--ro-bind", "{t}/d/sub:/m/sub"],
        ["/m/sub/f"],
        "/m/ok",
    ),
    (
        "config: ro_bind under rw_bind",
        ['rw_bind = ["{t}/d"]', 'ro_bind = ["{t}/d/sub"]'],
        [],
        ["{t}/d/sub/f"],
        "{t}/d/ok",
    ),
    (
        "project: flag --bind of the project's parent",
        [],
        ["--bind", "{t}"],
        ["{t}/proj/nixcell.toml", "{t}/proj/.nixcell/x"],
        "{t}/ok",
    ),
    (
        "project: rw_bind of the project's parent",
        ['rw_bind = ["{t}"]'],
        [],
        ["{t}/proj/nixcell.toml", "{t}/proj/.nixcell/x"],
        "{t}/ok",
    ),
    (
        "project: flag --bind over a config ro_bind",
        ['ro_bind = ["{t}/d/sub"]'],
        ["--bind", "{t}/d"],
        ["{t}/d/sub/f"],
        "{t}/d/ok",
    ),
]


@pytest.mark.parametrize("name,config,flags,readonly,writable", CASES, ids=[c[0] for c in CASES])
def test_a_read_only_mount_stays_read_only(
    offline_set, tmp_path, name, config, flags, readonly, writable
):
    t = str(tmp_path)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "f").write_text("host\n")
    proj = tmp_path / "proj"
    proj.mkdir()
    flags = [f.format(t=t) for f in flags]
    readonly = [p.format(t=t) for p in readonly]
    script = "".join(f'echo cell >> "{p}" 2>/dev/null && echo "WROTE {p}"; ' for p in readonly)
    script += f'touch "{writable.format(t=t)}" && echo WRITABLE'
    if config is None:
        args, cwd = ["run", "--no-project", "-p", "bash", "-p", "coreutils"], tmp_path
    else:
        lines = "\n".join(line.format(t=t) for line in config)
        text = f'[nix]\npackages = ["bash", "coreutils"]\n[sandbox.filesystem]\n{lines}\n'
        (proj / "nixcell.toml").write_text(text)
        args, cwd = ["run"], proj
    proc = subprocess.run(
        [NIXCELL, *args, *flags, "--", "bash", "-c", script],
        cwd=cwd,
        capture_output=True,
        timeout=300,
    )
    out = proc.stdout.decode()
    assert "WROTE" not in out, (out, proc.stderr.decode())
    assert "WRITABLE" in out, (out, proc.stderr.decode())
    assert (tmp_path / "d" / "sub" / "f").read_text() == "host\n"
    if config is not None:
        assert "cell" not in (proj / "nixcell.toml").read_text()
        assert not (proj / ".nixcell" / "x").exists()
