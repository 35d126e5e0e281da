"""`nixcell init / reinit / destroy / presets` on real directories, through the real CLI.

What a cell (or anyone who could write the project) planted beforehand — symlinks to host
files and directories, FIFOs, a file where a directory goes — must never be written through,
followed or lost; a refused or failed init leaves no config behind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pexpect
import pytest
from tests.conftest import NIXCELL, cli

from nixcell.project import files, presets


def _tree(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry under root: kind and contents (link target for symlinks)."""
    out: dict[str, tuple[str, bytes | str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", "")
            elif stat.S_ISFIFO(path.lstat().st_mode):
                out[rel] = ("fifo", "")
            else:
                out[rel] = ("file", path.read_bytes())
    return out


def _line(proc) -> str:
    text = proc.stderr.decode()
    assert text.count("\n") == 1 and text.startswith("nixcell: "), text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_init_writes_the_project_files(tmp_path: Path, name: str) -> None:
    proc = cli("init", "--preset", name, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    preset = presets.PRESETS[name]
    assert (tmp_path / "nixcell.toml").read_text() == preset.config
    assert (tmp_path / ".envrc").read_text() == files.ENVRC
    assert (tmp_path / ".nixcell/.gitignore").read_text() == files.GITIGNORE
    assert (tmp_path / ".nixcell/policy.toml").exists() == (preset.policy is not None)
    for script, text in files.SCRIPTS.items():
        path = tmp_path / ".nixcell/bin" / script
        assert path.read_text() == text
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    for config in ("nixcell.toml", ".envrc", ".nixcell/.gitignore"):
        assert stat.S_IMODE((tmp_path / config).stat().st_mode) == 0o644
    assert not [p for p in _tree(tmp_path) if p.endswith(".tmp")]
    assert "direnv allow" in proc.stdout.decode()


def test_gitignore_keeps_state_out_of_git(tmp_path: Path) -> None:
    import subprocess

    assert cli("init", str(tmp_path)).returncode == 0
    (tmp_path / ".nixcell/local/cache").mkdir(parents=True)
    (tmp_path / ".nixcell/local/cache/x").write_text("x")
    (tmp_path / ".nixcell/store").mkdir()
    (tmp_path / ".nixcell/store/y").write_text("y")
    git = ["git", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    out = subprocess.run([*git, "status", "--porcelain", "-uall"], capture_output=True, text=True)
    listed = set(out.stdout.split())
    assert ".nixcell/bin/cell" in listed and "nixcell.toml" in listed
    assert not [p for p in listed if "local/" in p or "store/" in p]


@pytest.mark.parametrize(
    "existing",
    ["nixcell.toml", "nixcage.toml", "nixcell.toml:link", "nixcage.toml:dir"],
)
def test_init_refuses_an_existing_config_and_writes_nothing(tmp_path: Path, existing: str) -> None:
    name, _, kind = existing.partition(":")
    if kind == "link":
        (tmp_path / name).symlink_to("/etc/hostname")
    elif kind == "dir":
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_text("[sandbox]\nlevel = 'strict'\n")
    before = _tree(tmp_path)
    proc = cli("init", "--preset", "claude-code", str(tmp_path))
    assert proc.returncode == 2
    assert f"{name} exists: nothing written" in _line(proc)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    "planted",
    [".envrc", ".nixcell/.gitignore", ".nixcell/policy.toml", ".nixcell/bin/cell"],
)
def test_a_planted_file_symlink_is_replaced_never_written_through(
    tmp_path: Path, planted: str
) -> None:
    project = tmp_path / "p"
    victim = tmp_path / "bashrc"
    victim.write_text("the user's own file\n")
    (project / planted).parent.mkdir(parents=True, exist_ok=True)
    (project / planted).symlink_to(victim)
    proc = cli("init", "--preset", "claude-code", str(project))
    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == "the user's own file\n"
    assert not (project / planted).is_symlink()
    # the planted link itself is kept aside, not followed (nothing is lost)
    assert os.readlink(project / f"{planted}.bak") == str(victim)


def test_a_planted_fifo_does_not_block_init(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / ".envrc")
    proc = cli("init", str(tmp_path), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".envrc").read_text() == files.ENVRC
    assert stat.S_ISFIFO((tmp_path / ".envrc.bak").lstat().st_mode)


@pytest.mark.parametrize("planted", [".nixcell", ".nixcell/bin"])
def test_a_planted_directory_symlink_is_refused_and_no_config_written(
    tmp_path: Path, planted: str
) -> None:
    project, elsewhere = tmp_path / "p", tmp_path / "host-dir"
    elsewhere.mkdir()
    (project / planted).parent.mkdir(parents=True, exist_ok=True)
    (project / planted).symlink_to(elsewhere)
    proc = cli("init", str(project))
    assert proc.returncode != 0
    assert "is not a directory (a symlink?)" in _line(proc)
    assert list(elsewhere.iterdir()) == []
    assert not (project / "nixcell.toml").exists()  # the config comes last: init can be rerun


def test_init_failing_half_way_leaves_no_config(tmp_path: Path) -> None:
    (tmp_path / ".nixcell").write_text("a file where the state directory goes\n")
    proc = cli("init", str(tmp_path))
    assert proc.returncode != 0
    _line(proc)
    assert not (tmp_path / "nixcell.toml").exists()
    assert (tmp_path / ".nixcell").read_text() == "a file where the state directory goes\n"
    (tmp_path / ".nixcell").unlink()
    assert cli("init", str(tmp_path)).returncode == 0  # fixed: init just runs again


def test_init_keeps_the_users_own_envrc(tmp_path: Path) -> None:
    (tmp_path / ".envrc").write_text("use flake\n")
    proc = cli("init", str(tmp_path))
    assert proc.returncode == 0
    assert (tmp_path / ".envrc").read_text() == "use flake\n"
    out = proc.stdout.decode()
    assert "kept .envrc (yours" in out and "direnv allow" not in out


def test_init_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    proc = cli("init", str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "no such directory" in _line(proc)


def test_unknown_preset_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli("init", "--preset", "nope", str(tmp_path))
    assert proc.returncode == 2
    assert "claude-code" in _line(proc)
    assert list(tmp_path.iterdir()) == []


def test_reinit_keeps_each_old_config(tmp_path: Path) -> None:
    assert cli("init", "--preset", "shell", str(tmp_path)).returncode == 0
    (tmp_path / "nixcell.toml").write_text("# my edits\n")
    assert cli("reinit", "--preset", "python-dev", str(tmp_path)).returncode == 0
    assert (tmp_path / "nixcell.toml.bak").read_text() == "# my edits\n"
    assert (tmp_path / "nixcell.toml").read_text() == presets.PYTHON_DEV.config
    (tmp_path / "nixcell.toml").write_text("# second edits\n")
    assert cli("reinit", "--preset", "shell", str(tmp_path)).returncode == 0
    assert (tmp_path / "nixcell.toml.bak").read_text() == "# my edits\n"
    assert (tmp_path / "nixcell.toml.bak.1").read_text() == "# second edits\n"
    # unchanged files are not backed up again
    assert not (tmp_path / ".envrc.bak").exists()
    assert not (tmp_path / ".nixcell/bin/cell.bak").exists()


def test_reinit_of_a_nixcage_project_leaves_its_file(tmp_path: Path) -> None:
    (tmp_path / "nixcage.toml").write_text("[sandbox]\nlevel = 'strict'\n")
    proc = cli("reinit", str(tmp_path))
    assert proc.returncode == 0
    assert (tmp_path / "nixcage.toml").read_text() == "[sandbox]\nlevel = 'strict'\n"
    assert (tmp_path / "nixcell.toml").exists()
    assert "nixcage.toml (nixcage's file" in proc.stdout.decode()


def test_destroy_without_yes_and_no_terminal_refuses(tmp_path: Path) -> None:
    assert cli("init", str(tmp_path)).returncode == 0
    before = _tree(tmp_path)
    proc = cli("destroy", str(tmp_path), input=b"y\n")
    assert proc.returncode == 2
    assert "--yes" in _line(proc)
    assert _tree(tmp_path) == before


def test_destroy_yes_removes_what_init_wrote(tmp_path: Path) -> None:
    assert cli("init", "--preset", "claude-code", str(tmp_path)).returncode == 0
    (tmp_path / "nixcell.toml.bak").write_text("old\n")
    (tmp_path / "src.py").write_text("print(1)\n")
    (tmp_path / ".nixcell/local/data").mkdir(parents=True)
    proc = cli("destroy", "--yes", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nixcell.toml.bak", "src.py"]
    assert "kept nixcell.toml.bak" in proc.stdout.decode()


def test_destroy_keeps_an_envrc_that_changed(tmp_path: Path) -> None:
    assert cli("init", str(tmp_path)).returncode == 0
    (tmp_path / ".envrc").write_text(files.ENVRC + "export MINE=1\n")
    proc = cli("destroy", "-y", str(tmp_path))
    assert proc.returncode == 0
    assert (tmp_path / ".envrc").read_text().endswith("export MINE=1\n")
    assert "kept .envrc" in proc.stdout.decode()


def test_destroy_from_a_subdirectory_finds_the_project(tmp_path: Path) -> None:
    import subprocess

    assert cli("init", str(tmp_path)).returncode == 0
    (tmp_path / "sub").mkdir()
    proc = subprocess.run(
        [NIXCELL, "destroy", "--yes"], cwd=tmp_path / "sub", capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "nixcell.toml").exists()
    assert not (tmp_path / ".nixcell").exists()


def test_destroy_never_follows_links_planted_in_the_state(tmp_path: Path) -> None:
    project, host = tmp_path / "p", tmp_path / "host"
    project.mkdir()
    host.mkdir()
    (host / "precious").write_text("keep me\n")
    assert cli("init", str(project)).returncode == 0
    local = project / ".nixcell/local"
    (local / "cache").mkdir(parents=True)
    (local / "cache/dir-link").symlink_to(host)
    (local / "file-link").symlink_to(host / "precious")
    os.link(host / "precious", local / "hard-link")
    (local / "state").symlink_to(host)
    assert cli("destroy", "--yes", str(project)).returncode == 0
    assert (host / "precious").read_text() == "keep me\n"
    assert sorted(p.name for p in host.iterdir()) == ["precious"]
    assert not (project / ".nixcell").exists()


def test_destroy_of_nothing_is_one_line(tmp_path: Path) -> None:
    proc = cli("destroy", "--yes", str(tmp_path))
    assert proc.returncode == 2
    assert "no nixcell project files" in _line(proc)


@pytest.mark.parametrize("answer, removed", [("n", False), ("y", True)])
def test_destroy_asks_on_a_terminal(tmp_path: Path, answer: str, removed: bool) -> None:
    assert cli("init", str(tmp_path)).returncode == 0
    child = pexpect.spawn(
        NIXCELL, ["destroy", str(tmp_path)], encoding="utf-8", timeout=60, env=dict(os.environ)
    )
    child.expect(r"this removes: nixcell\.toml, \.nixcell/, \.envrc")
    child.expect(r"remove them\? \[y/N\]")
    child.sendline(answer)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == (0 if removed else 1)
    assert (tmp_path / "nixcell.toml").exists() != removed


def test_list_presets_and_its_alias() -> None:
    for name in ("list-presets", "presets"):
        proc = cli(name)
        assert proc.returncode == 0
        lines = proc.stdout.decode().splitlines()
        assert [line.split()[0] for line in lines] == list(presets.PRESETS)


def test_init_inside_another_project_says_how_to_use_it(tmp_path: Path) -> None:
    assert cli("init", str(tmp_path)).returncode == 0
    inner = tmp_path / "inner"
    inner.mkdir()
    proc = cli("init", str(inner))
    assert proc.returncode == 0
    assert f"is inside the project {tmp_path}" in proc.stderr.decode()
    assert f"--project {inner}" in proc.stderr.decode()
