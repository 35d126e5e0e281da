"""compile_spec: a project plus `nixcell run`'s flags -> the CellSpec (flags win, lists add),
each level's shape, the network modes, the store modes, and the host-side state dirs."""

from __future__ import annotations

import os

import pytest

from nixcell.errors import StateError, UsageError
from nixcell.plan import CELL_HOME
from nixcell.project.compile import compile_spec, draft, network_mode
from nixcell.project.discover import find
from nixcell.project.load import load
from nixcell.project.state import audit_dir, ensure_state


def _project(root, text: str):
    root.mkdir(exist_ok=True)
    (root / "nixcell.toml").write_text(text)
    project = load(find(str(root)))  # type: ignore[arg-type]
    ensure_state(project)
    return project


def _spec(root, text: str, flags: dict | None = None, command=("true",), cwd=None):
    project = _project(root, text)
    return compile_spec(project, list(command), flags or {}, str(cwd or root))


def _mounts(spec) -> dict[str, tuple[str, bool]]:
    return {m.target: (m.source, m.writable) for m in spec.mounts}


BASE = '[nix]\npackages = ["bash"]\n'


def test_flags_win_and_lists_add(tmp_path):
    root = tmp_path / "p"
    text = (
        BASE
        + """
nixpkgs = "offline"
[sandbox.network]
allow_hosts = ["a.test"]
[sandbox.resources]
memory = "1G"
pids = 64
[cage]
env = { A = "config", B = "config" }
passthrough_env = ["LANG"]
"""
    )
    flags = {
        "packages": ("coreutils",),
        "memory": "256M",
        "env": ("B=flag",),
        "pass_env": ("TZ",),
        "net": {"allow_hosts": ["b.test"], "deny_hosts": ["c.test"]},
        "nixpkgs": "nixos-24.11",
        "ro_bind": ("/etc/hostname",),
        "hide": (str(root / "secret"),),
    }
    spec = _spec(root, text, flags)
    assert spec.packages == ["bash", "coreutils"]
    assert spec.limits.memory == 256 << 20 and spec.limits.pids == 64
    assert spec.env["A"] == "config" and spec.env["B"] == "flag"
    assert spec.pass_env == ["LANG", "TZ"] and spec.nixpkgs == "nixos-24.11"
    assert spec.network is not None
    assert spec.network.allow_hosts == ["a.test", "b.test"]
    assert spec.network.deny_hosts == ["c.test"]
    assert _mounts(spec)["/etc/hostname"] == ("/etc/hostname", False)
    assert str(root / "secret") in spec.hide


@pytest.mark.parametrize(
    ("text", "flag", "expected"),
    [
        ("", None, "open"),
        ("[sandbox]\nlevel = 'strict'\n", None, "none"),
        ("[sandbox.network]\nallow = false\n", None, "none"),
        ("[sandbox]\nlevel = 'strict'\n[sandbox.network]\nallow = true\n", None, "open"),
        ("[sandbox.network]\nallow = false\nmode = 'open'\n", None, "open"),
        ("[sandbox.network]\nallow_hosts = ['a.test']\n", None, "proxy"),
        ("[sandbox.network]\nmode = 'host'\n", None, "host"),
        ("", "none", "none"),
        ("[sandbox.network]\nmode = 'host'\n", "open", "open"),
    ],
)
def test_network_mode(tmp_path, text, flag, expected):
    project = _project(tmp_path / "p", BASE + text)
    assert network_mode(project, {"network": flag}) == expected


def test_open_mode_is_every_host_through_the_proxy_audited_outside_the_project(tmp_path):
    root = tmp_path / "p"
    spec = _spec(
        root,
        BASE + "[sandbox.network]\ndeny_hosts = ['x.test']\n",
        {"net": {"allow_hosts": ["y.test"]}},
    )
    assert spec.network is not None and spec.network.allow_hosts[0] == "*"
    assert "y.test" in spec.network.allow_hosts and spec.network.deny_hosts == ["x.test"]
    assert spec.network.audit == os.path.join(audit_dir(str(root)), "audit.jsonl")
    assert not spec.network.audit.startswith(str(root))
    assert not spec.host_network


def test_host_mode_is_the_host_network_and_takes_no_network_flags(tmp_path):
    root = tmp_path / "p"
    spec = _spec(root, BASE + "[sandbox.network]\nmode = 'host'\n")
    assert spec.host_network and spec.network is None
    with pytest.raises(UsageError, match="takes no network flags"):
        _spec(root, BASE + "[sandbox.network]\nmode = 'host'\n", {"net": {"allow_hosts": ["a"]}})


def test_none_with_added_hosts_becomes_a_proxy(tmp_path):
    spec = _spec(
        tmp_path / "p", BASE + "[sandbox]\nlevel = 'strict'\n", {"net": {"allow_hosts": ["a.test"]}}
    )
    assert spec.network is not None and spec.network.allow_hosts == ["a.test"]


@pytest.mark.parametrize("mode", ["closure", "readonly", "shared", "copy", "isolated"])
def test_store_modes_compile_to_the_engine_fields(tmp_path, mode):
    root = tmp_path / "p"
    spec = _spec(root, BASE + f"store_mode = '{mode}'\n")
    assert spec.store == mode
    copies = mode in ("copy", "isolated")
    assert spec.store_dir == (str(root / ".nixcell" / "store") if copies else None)


def test_strict_mounts_nothing_of_the_project(tmp_path):
    root = tmp_path / "p"
    spec = _spec(root, BASE + "[sandbox]\nlevel = 'strict'\n", cwd=root)
    assert spec.mounts == [] and spec.workdir is None and spec.cwd == "/workspace"
    assert spec.network is None


def test_standard_shape(tmp_path):
    root = tmp_path / "p"
    (root / "sub").mkdir(parents=True)
    (root / ".git" / "hooks").mkdir(parents=True)
    (root / ".git" / "config").write_text("")
    (root / ".envrc").write_text("")
    spec = _spec(root, BASE, cwd=root / "sub")
    mounts = _mounts(spec)
    assert mounts[str(root)] == (str(root), True) and spec.cwd == str(root / "sub")
    for name in ("nixcell.toml", ".envrc", ".nixcell", ".git"):  # .git: all of it (commondir)
        assert mounts[str(root / name)] == (str(root / name), False), name
    assert str(root / ".git" / "hooks") not in mounts  # covered by .git
    local = root / ".nixcell" / "local"
    assert mounts[f"{CELL_HOME}/.cache"] == (str(local / "cache"), True)
    assert mounts[f"{CELL_HOME}/.local/state"] == (str(local / "state"), True)
    assert spec.env["XDG_CONFIG_HOME"] == f"{CELL_HOME}/.config"
    assert CELL_HOME not in mounts  # home: a tmpfs


def test_relaxed_shape(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".cache").mkdir()
    (home / ".netrc").write_text("machine x")
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "p"
    spec = _spec(root, BASE + "[sandbox]\nlevel = 'relaxed'\n")
    mounts = _mounts(spec)
    assert mounts[CELL_HOME] == (str(home), False)
    assert str(home / ".ssh") in spec.hide and str(home / ".netrc") in spec.hide
    assert str(home / ".aws") not in spec.hide  # missing: nothing to hide, no mount point made
    # ~/.cache exists under the read-only home: bound there; ~/.config does not: beside it
    assert mounts[f"{CELL_HOME}/.cache"][0].endswith("local/cache")
    assert spec.env["XDG_CONFIG_HOME"] == "/var/lib/cell/config"
    assert mounts["/var/lib/cell/config"][0].endswith("local/config")


def test_config_binds_map_home_and_skip_missing(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "p"
    text = (
        BASE
        + """
[sandbox.filesystem]
rw_bind = ["~/.claude", "~/.claude.json"]
ro_bind = ["/etc/hostname:~/hn"]
"""
    )
    project = _project(root, text)
    mounts = _mounts(compile_spec(project, ["true"], {}, str(root)))
    assert mounts[f"{CELL_HOME}/.claude"] == (str(home / ".claude"), True)
    assert mounts[f"{CELL_HOME}/hn"] == ("/etc/hostname", False)
    assert f"{CELL_HOME}/.claude.json" not in mounts
    assert any("rw_bind ~/.claude.json" in s for s in draft(project, str(root)).skipped)


def test_a_symlinked_protected_file_is_refused(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / ".envrc").symlink_to("/etc/passwd")
    with pytest.raises(UsageError, match=r"\.envrc is a symbolic link"):
        _spec(root, BASE)


def test_no_command_runs_the_cage_command(tmp_path):
    spec = _spec(tmp_path / "p", BASE + "[cage]\ncommand = 'bash -c \"echo hi\"'\n", command=())
    assert spec.command == ["bash", "-c", "echo hi"]
    with pytest.raises(UsageError, match="no command"):
        _spec(tmp_path / "q", BASE, command=())


def test_spec_errors_name_the_config_key(tmp_path):
    text = BASE + "[sandbox.filesystem]\nro_bind = ['/etc/hostname:/proc/x']\n"
    expected = r"nixcell\.toml:4: \[sandbox\.filesystem\] ro_bind.*/proc/x"
    with pytest.raises(UsageError, match=expected):
        _spec(tmp_path / "p", text)


@pytest.mark.parametrize("swapped", ["local", "local/cache", ".nixcell"])
def test_ensure_state_refuses_a_state_dir_swapped_for_a_symlink(tmp_path, swapped):
    root = tmp_path / "p"
    project = _project(root, BASE)
    target = root / ".nixcell" / swapped if swapped != ".nixcell" else root / ".nixcell"
    os.rename(target, str(target) + ".old")
    target.symlink_to(tmp_path)
    with pytest.raises(StateError, match="symbolic link"):
        ensure_state(project)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "local").exists()


def test_ensure_state_makes_the_dirs(tmp_path):
    root = tmp_path / "p"
    (root / ".git").mkdir(parents=True)
    _project(root, BASE)
    for name in ("cache", "config", "data", "state"):
        assert (root / ".nixcell" / "local" / name).is_dir()
    assert (root / ".nixcell" / ".gitignore").read_text() == "local/\nstore/\n"
    assert (root / ".git" / "hooks").is_dir()


def test_relaxed_hides_nothing_under_a_state_bind(tmp_path, monkeypatch):
    """nixcell's own state dir under a read-only home is covered by the project's state bind:
    hiding it there would make a mount point inside the project's state dir on the host."""
    home = tmp_path / "home"
    (home / ".local" / "state" / "nixcell").mkdir(parents=True)
    (home / ".ssh").mkdir()
    monkeypatch.delenv("NIXCELL_HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    spec = _spec(tmp_path / "p", BASE + "[sandbox]\nlevel = 'relaxed'\n")
    assert str(home / ".local" / "state" / "nixcell") not in spec.hide
    assert str(home / ".ssh") in spec.hide
    assert _mounts(spec)[f"{CELL_HOME}/.local/state"][0].endswith("local/state")


def test_a_worktree_git_file_is_read_only(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / ".git").write_text("gitdir: /elsewhere/.git/worktrees/p\n")
    mounts = _mounts(_spec(root, BASE))
    assert mounts[str(root / ".git")] == (str(root / ".git"), False)


def test_store_and_host_network_flags_win(tmp_path):
    root = tmp_path / "p"
    spec = _spec(root, BASE + "store_mode = 'readonly'\n", {"store": "copy"})
    assert spec.store == "copy" and spec.store_dir == str(root / ".nixcell" / "store")
    spec = _spec(root, BASE, {"store": "isolated", "store_dir": str(tmp_path / "s")})
    assert spec.store_dir == str(tmp_path / "s")
    assert _spec(root, BASE, {"host_network": True}).host_network
    with pytest.raises(UsageError, match="contradict"):
        _spec(root, BASE, {"host_network": True, "network": "open"})


def test_relaxed_with_home_at_the_root_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/")
    with pytest.raises(UsageError, match=r"\$HOME is /"):
        _spec(tmp_path / "p", BASE + "[sandbox]\nlevel = 'relaxed'\n")


def test_blacklist_expands_tilde_and_hides_only_what_the_cell_sees(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "p"
    (root / "secrets").mkdir(parents=True)
    text = BASE + "[sandbox.filesystem]\nblacklist = ['~/notes', 'secrets', '~/absent']\n"
    standard = _spec(root, text)
    assert standard.hide == [str(root / "secrets")]  # ~/notes: the home is a tmpfs anyway
    relaxed = _spec(
        root,
        text.replace("[sandbox.filesystem]", "[sandbox]\nlevel = 'relaxed'\n[sandbox.filesystem]"),
    )
    assert str(home / "notes") in relaxed.hide and str(root / "secrets") in relaxed.hide
    assert str(home / "absent") not in relaxed.hide


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"bind": (":/x",)}, "--bind needs SRC"),
        ({"ro_bind": (":/x",)}, "--ro-bind needs SRC"),
        ({"env": ("NOEQUALS",)}, "-e needs K=V"),
        ({"interactive": True, "no_tty": True}, "exclude each other"),
        ({"network": "none", "net": {"allow_hosts": ["a.test"]}}, "--network none takes no"),
    ],
)
def test_bad_flags_in_a_project_are_one_line_errors(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        _spec(tmp_path / "p", BASE, flags)


@pytest.mark.parametrize(
    ("level", "target"),
    [("standard", "{root}/mnt"), ("relaxed", "~/mnt"), ("relaxed", "{root}/mnt")],
)
def test_a_bind_target_bwrap_would_make_on_the_host_is_refused(
    tmp_path, monkeypatch, level, target
):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "p"
    dst = target.format(root=root)
    text = BASE + f"[sandbox]\nlevel = '{level}'\n[sandbox.filesystem]\nro_bind = ['/etc:{dst}']\n"
    with pytest.raises(UsageError, match=r"ro_bind: /etc:.* does not exist in the cell"):
        _spec(root, text)
    (root / "mnt").mkdir()
    (home / "mnt").mkdir()
    assert any(m.source == "/etc" for m in _spec(root, text).mounts)
