# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""Presets that load and run (a real cell each), and `status`.

The claude-code preset's key: the cell holds a dummy ANTHROPIC_API_KEY and the proxy puts the
real one into the x-api-key header of a request to a loopback upstream standing in for
api.anthropic.com (pinned to 127.0.0.1; nothing here talks to any other address).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli

from nixcell.project import discover, presets
from nixcell.project.compile import compile_spec
from nixcell.project.load import load
from nixcell.project.state import ensure_state


def _init(root: Path, preset: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    proc = cli("init", "--preset", preset, str(root))
    assert proc.returncode == 0, proc.stderr
    return root


def _in(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        [NIXCELL, *args],
        cwd=root,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _spec(root: Path, flags: dict | None = None):
    project = load(discover.find(str(root)))
    ensure_state(project)
    return project, compile_spec(project, [], flags or {}, str(root))


def _without_claude(root: Path, offline_set) -> None:
    """Until the offline set has claude-code: the preset's packages minus it."""
    if "claude-code" in offline_set.packages:
        return
    config = root / "nixcell.toml"
    config.write_text(config.read_text().replace('"claude-code", ', ""))


@pytest.mark.parametrize(
    "preset, command, expected",
    [
        (
            "shell",
            [
                "bash",
                "-c",
                "jq -n 6*7; git --version | cut -d' ' -f1; echo ${HTTPS_PROXY:-no-proxy}; ls /home",
            ],
            ["42", "git", "no-proxy", "cell"],
        ),
        (
            "python-dev",
            [
                "python3",
                "-c",
                "import os, ssl, sqlite3; print(bool(os.environ['HTTPS_PROXY']), os.getcwd())",
            ],
            ["True {root}"],
        ),
        (
            "node-dev",
            ["node", "-e", "console.log(typeof fetch, !!process.env.HTTPS_PROXY, process.cwd())"],
            ["function true {root}"],
        ),
    ],
)
def test_a_preset_runs_a_real_cell(tmp_path: Path, offline_set, preset, command, expected) -> None:
    root = _init(tmp_path / "proj", preset)
    proc = _in(root, "run", "--", *command)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [e.format(root=root) for e in expected]
    # and its default command is the preset's [cage] command
    _, spec = _spec(root)
    assert spec.command == list(load(discover.find(str(root))).config.command)


@pytest.mark.parametrize("preset", list(presets.PRESETS))
def test_every_preset_loads_without_warnings_and_compiles(tmp_path: Path, preset: str) -> None:
    root = _init(tmp_path / "proj", preset)
    project, spec = _spec(root)
    assert project.warnings == ()
    assert project.level == "standard"
    assert spec.packages == list(project.config.packages)
    assert not any(m.source.endswith("/.ssh") for m in spec.mounts)


def test_network_of_the_presets(tmp_path: Path) -> None:
    nets = {}
    for preset in ("python-dev", "node-dev", "shell"):
        _, spec = _spec(_init(tmp_path / preset, preset))
        nets[preset] = spec.network and sorted(spec.network.allow_hosts)
    assert nets == {
        "python-dev": ["files.pythonhosted.org", "pypi.org"],
        "node-dev": ["registry.npmjs.org"],
        "shell": None,
    }


def test_claude_code_preset_compiles_to_its_promises(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude.json").write_text("{}")
    (home / ".ssh").mkdir()
    monkeypatch.setenv("HOME", str(home))
    root = _init(tmp_path / "proj", "claude-code")
    _, spec = _spec(root)
    assert spec.command[0] == "claude"
    assert spec.command[1:] == [
        "--settings",
        '{"apiKeyHelper": "printenv NIXCELL_ANTHROPIC_API_KEY"}',
    ]
    assert spec.network.allow_hosts == ["api.anthropic.com"]
    assert spec.network.credentials == ["anthropic"]
    assert spec.network.policy_files == [str(root / ".nixcell/policy.toml")]
    binds = {m.source: (m.target, m.writable) for m in spec.mounts}
    assert not [s for s in binds if s.startswith(str(home / ".claude"))]  # the host's: never
    assert spec.env["CLAUDE_CONFIG_DIR"] == "/home/cell/.config/claude"  # the project's state
    assert binds[str(root / ".nixcell/local/config")] == ("/home/cell/.config", True)
    assert not [s for s in binds if s.startswith(str(home / ".ssh"))]
    for name in ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_TELEMETRY",
                 "DISABLE_ERROR_REPORTING", "DISABLE_AUTOUPDATER"):  # fmt: skip
        assert spec.env[name] == "1"
    assert "ANTHROPIC_API_KEY" not in spec.env and "ANTHROPIC_API_KEY" not in spec.pass_env


def _anthropic_key() -> str:
    alnum = string.ascii_letters + string.digits
    return "sk-ant-api03-" + "".join(secrets.choice(alnum) for _ in range(40))


@pytest.fixture(scope="module")
def anthropic(tmp_path_factory):
    """A loopback HTTPS upstream whose certificate names api.anthropic.com (pinned to
    127.0.0.1 by --resolve: the real host is never contacted)."""
    import trustme
    from tests.integration import upstream as up

    directory = tmp_path_factory.mktemp("anthropic")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    chain = directory / "server.pem"
    ca.issue_cert("api.anthropic.com").private_key_and_cert_chain_pem.write_to_path(str(chain))
    server = up.start(chain)
    server.ca_file = directory / "ca.pem"  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_claude_code_preset_injects_the_key_the_cell_never_holds(
    tmp_path: Path, offline_set, anthropic
) -> None:
    tls = anthropic
    root = _init(tmp_path / "proj", "claude-code")
    _without_claude(root, offline_set)
    real = _anthropic_key()
    url = tls.url("/v1/messages", host="api.anthropic.com")
    script = f'printf "%s\\n" "${{ANTHROPIC_API_KEY-unset}}" "$NIXCELL_ANTHROPIC_API_KEY"; curl -sS -o /dev/null -w "%{{http_code}}\\n" -H "x-api-key: $(printenv NIXCELL_ANTHROPIC_API_KEY)" {url}'
    proc = _in(
        root, "run", "-p", "curl",
        f"--allow-host=api.anthropic.com:{tls.port}", "--allow-cidr=127.0.0.1/32",
        "--resolve=api.anthropic.com:127.0.0.1", f"--upstream-ca={tls.ca_file}",
        "--", "bash", "-c", script,
        env={"ANTHROPIC_API_KEY": real},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    unset, dummy = proc.stdout.decode().splitlines()[:2]
    assert unset == "unset"  # the real variable's name is not in the cell at all
    assert dummy != real and len(dummy) == len(real) and dummy.startswith("sk-ant-")
    assert [s.headers.get("x-api-key") for s in tls.seen] == [real], (proc.stdout, proc.stderr)
    assert real.encode() not in proc.stdout + proc.stderr


def test_claude_code_preset_without_the_key_is_one_line(tmp_path: Path, offline_set) -> None:
    root = _init(tmp_path / "proj", "claude-code")
    _without_claude(root, offline_set)
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.run(
        [NIXCELL, "run", "--", "true"], cwd=root, capture_output=True, env=env, timeout=300
    )
    assert proc.returncode != 0
    err = proc.stderr.decode()
    assert "ANTHROPIC_API_KEY" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("nixcell: ")


def test_claude_version_in_the_claude_code_cell(tmp_path: Path, offline_set) -> None:
    if "claude-code" not in offline_set.packages:
        pytest.skip("the offline set has no claude-code yet (./setup with the npm registry)")
    root = _init(tmp_path / "proj", "claude-code")
    proc = _in(
        root, "run", "--", "claude", "--version", env={"ANTHROPIC_API_KEY": _anthropic_key()}
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(rb"\d+\.\d+\.\d+", proc.stdout)


def test_status_json(tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    root = _init(tmp_path / "proj", "claude-code")
    proc = _in(root, "status", "--json", env={"HOME": str(home), "ANTHROPIC_API_KEY": "sk-ant-x"})
    assert proc.returncode == 0, proc.stderr
    assert b"sk-ant-x" not in proc.stdout
    info = json.loads(proc.stdout)
    assert info["network"]["credential_sources"] == [
        {"name": "anthropic", "source": "env:ANTHROPIC_API_KEY", "set": True}
    ]
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    text = subprocess.run([NIXCELL, "status"], cwd=root, capture_output=True, env=env, timeout=60)
    assert b"credential anthropic: ANTHROPIC_API_KEY is not set here" in text.stderr
    assert info["root"] == str(root)
    assert info["format"] == "nixcell.toml"
    assert info["level"] == "standard"
    assert "claude-code" in info["packages"]
    assert info["store_mode"] == "closure"
    assert info["network"]["mode"] == "proxy"
    assert info["network"]["allow_hosts"] == ["api.anthropic.com"]
    assert info["network"]["credentials"] == ["anthropic"]
    assert info["cell"] == {"project_mounted": True, "home": "tmpfs", "hidden": []}
    assert [s.split(":")[0] for s in info["filesystem"]["skipped"]] == ["ro_bind ~/.gitconfig"]
    assert info["alerts"] == [] and info["problems"] == []
    deps = {d["name"]: d for d in info["dependencies"]}
    assert deps["bubblewrap"]["ok"] and deps["bubblewrap"]["required"]
    assert {"nix", "strace", "direnv", "offline package set"} <= set(deps)


def test_status_of_a_nixcage_project_says_so_and_warns(tmp_path: Path) -> None:
    (tmp_path / "nixcage.toml").write_text(
        '[sandbox]\nlevel = "strict"\n[nix]\npackages = ["bash"]\nfancy = 1\n'
    )
    proc = _in(tmp_path, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "nixcage.toml"
    assert info["network"]["mode"] == "none"
    assert info["cell"]["project_mounted"] is False
    assert any("fancy" in w for w in info["warnings"])
    text = _in(tmp_path, "status")
    assert b"nixcage.toml" in text.stdout and b"fancy" in text.stderr


@pytest.mark.parametrize(
    "table, word",
    [
        ('[sandbox.network]\nmode = "host"\n', "network mode host"),
        ('[nix]\nstore_mode = "shared"\n', "store mode shared"),
    ],
)
def test_status_warns_loudly_for_host_network_and_shared_store(tmp_path, table, word) -> None:
    text = '[sandbox]\nlevel = "standard"\n' + table
    if "[nix]" not in table:
        text += '[nix]\npackages = ["bash"]\n'
    else:
        text = text.replace("[nix]\n", '[nix]\npackages = ["bash"]\n')
    (tmp_path / "nixcell.toml").write_text(text)
    info = json.loads(_in(tmp_path, "status", "--json").stdout)
    assert any(a.startswith(word) for a in info["alerts"])
    proc = _in(tmp_path, "status")
    assert f"WARNING: {word}".encode() in proc.stderr


def test_status_outside_a_project_is_one_line(tmp_path: Path) -> None:
    proc = _in(tmp_path, "status")
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("nixcell: no nixcell.toml")
    assert proc.stderr.count(b"\n") == 1


def test_status_reports_a_swapped_state_dir(tmp_path: Path) -> None:
    root = _init(tmp_path / "proj", "shell")
    (root / ".nixcell/local").mkdir()
    (root / ".nixcell/local/cache").symlink_to(tmp_path)
    proc = _in(root, "status", "--json")
    assert proc.returncode == 0
    problems = json.loads(proc.stdout)["problems"]
    assert problems and "cache" in problems[0]
    assert _in(root, "status").returncode == 1


def test_claude_p_with_the_presets_own_command(tmp_path: Path, offline_set, fake_anthropic):
    """The preset's [cage] command as written (the apiKeyHelper reading the dummy), `-p hi`
    added: the stand-in API gets only the real key, the cell never holds it."""
    import tomllib

    from tests.integration import fakeanthropic

    if "claude-code" not in offline_set.packages:
        pytest.skip("the offline set has no claude-code yet (./setup with the npm registry)")
    root = _init(tmp_path / "proj", "claude-code")
    command = tomllib.loads((root / "nixcell.toml").read_text())["cage"]["command"]
    proc = _in(
        root, "run", *fake_anthropic.flags(fakeanthropic.HOSTS), "--", *command, "-p", "hi",
        env={"ANTHROPIC_API_KEY": fakeanthropic.REAL_KEY, "HOME": str(tmp_path / "home")},
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert fakeanthropic.REAL_KEY.encode() not in out
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout.decode().rstrip().endswith(fakeanthropic.ANSWER)
    requests = fake_anthropic.requests
    assert any(r["path"].startswith("/v1/messages") for r in requests)
    keys = {r["headers"].get("x-api-key") for r in requests}
    assert keys == {fakeanthropic.REAL_KEY}
