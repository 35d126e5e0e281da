# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""Project mode with real cells through the real CLI: discovery, each level probed from inside
the cell, the read-only protections, state kept between runs, planted configs and swapped state
dirs, the network modes against loopback test upstreams, and the warm path's cached plans."""

from __future__ import annotations

import json
import os

import pytest
from tests.conftest import cli

from nixcell.project.state import audit_dir

BASE = '[nix]\npackages = ["bash", "coreutils", "curl"]\nnixpkgs = "offline"\n'


def make(root, text: str = "", *, git: bool = False):
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "nixcell.toml").write_text(BASE + text)
    if git:
        (root / ".git" / "hooks").mkdir(parents=True)
        (root / ".git" / "config").write_text("[core]\n\tbare = false\n")
        (root / ".envrc").write_text('eval "$(nixcell hook direnv)"\n')
    return root


def run_in(where, *args: str, env: dict | None = None):
    """`nixcell run ARGS` started in ``where`` (the real console script, cwd set)."""
    old = os.getcwd()
    os.chdir(where)
    try:
        return cli("run", *args, env=env)
    finally:
        os.chdir(old)


def one_line_error(result) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0 and err.count("\n") == 1 and "Traceback" not in err, result
    return err


def test_standard_level_from_a_subdirectory(offline_set, tmp_path):
    root = make(tmp_path / "proj", git=True)
    (root / ".nixcell").mkdir()
    (root / ".nixcell" / "policy.toml").write_text("")
    protected = ["nixcell.toml", ".envrc", ".git/config", ".nixcell/policy.toml"]
    before = {p: (root / p).read_bytes() for p in protected}
    script = f"""
cd {root}/sub && pwd
echo made > {root}/sub/made.txt && echo project-writable
for f in {" ".join(protected)}; do echo evil >> {root}/$f 2>/dev/null && echo "WROTE $f"; done
touch {root}/.git/hooks/pre-commit 2>/dev/null && echo WROTE-HOOK
touch {root}/.nixcell/bin 2>/dev/null && echo WROTE-NIXCELL
mv {root}/.git {root}/.git-aside 2>/dev/null && echo MOVED-GIT
mv {root}/.nixcell/local/cache {root}/.nixcell/local/c2 2>/dev/null && echo MOVED-STATE
ln -s / {root}/.nixcell/local/evil 2>/dev/null && echo LINKED-STATE
touch ~/home-writable && ls -A ~ | tr '\\n' ' '; echo
test -n "$HTTPS_PROXY" && echo proxied
"""
    result = run_in(root / "sub", "--", "bash", "-c", script)
    out = result.stdout.decode()
    assert result.returncode == 0, result
    lines = out.splitlines()
    assert lines[0] == str(root / "sub") and lines[1] == "project-writable"
    assert (root / "sub" / "made.txt").read_text() == "made\n"
    assert "WROTE" not in out and "MOVED" not in out and "LINKED" not in out, out
    assert lines[2].split() == [".cache", ".config", ".local", "home-writable"]  # a tmpfs home
    assert lines[3] == "proxied"
    assert {p: (root / p).read_bytes() for p in protected} == before
    assert not (root / ".git" / "hooks" / "pre-commit").exists()


def test_strict_level_mounts_nothing_and_has_no_network(offline_set, tmp_path):
    root = make(tmp_path / "proj", "[sandbox]\nlevel = 'strict'\n")
    script = f"pwd; ls {root} 2>/dev/null || echo not-mounted; touch ~/x && ls -A ~; echo proxy=${{HTTPS_PROXY:-none}}; curl -s -m 5 http://127.0.0.1:9/ || echo no-network"
    result = run_in(root / "sub", "--", "bash", "-c", script)
    assert result.stdout.decode().splitlines() == [
        "/workspace",
        "not-mounted",
        "x",
        "proxy=none",
        "no-network",
    ], result
    assert not (root / ".nixcell").exists()  # strict: no state dirs in the project either


def test_relaxed_level_home_read_only_sensitive_hidden(offline_set, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY")
    (home / ".gitconfig").write_text("[user]\n\tname = me\n")
    (home / ".netrc").write_text("machine x password secret")
    root = make(tmp_path / "proj", "[sandbox]\nlevel = 'relaxed'\n")
    script = f"""
cat ~/.gitconfig | head -1
echo x >> ~/.gitconfig 2>/dev/null && echo WROTE-HOME
ls -A ~/.ssh | wc -l; cat ~/.ssh/id_ed25519 2>/dev/null; cat ~/.netrc 2>/dev/null; echo .
echo ok > {root}/w && cat {root}/w
echo ${{HTTPS_PROXY:+proxied}}
"""
    result = run_in(root, "--", "bash", "-c", script, env={"HOME": str(home)})
    assert result.returncode == 0, result
    assert result.stdout.decode().splitlines() == ["[user]", "0", ".", "ok", "proxied"], result
    assert (home / ".gitconfig").read_text() == "[user]\n\tname = me\n"


def test_state_is_kept_between_two_runs(offline_set, tmp_path):
    root = make(tmp_path / "proj")
    first = run_in(
        root, "--", "bash", "-c", 'echo kept > "$XDG_CACHE_HOME/c"; echo 2 > ~/.local/state/s'
    )
    assert first.returncode == 0, first
    second = run_in(root / "sub", "--", "bash", "-c", 'cat "$XDG_CACHE_HOME/c" ~/.local/state/s')
    assert second.stdout == b"kept\n2\n", second
    assert (root / ".nixcell" / "local" / "cache" / "c").read_text() == "kept\n"


def test_a_config_planted_by_a_cell_is_refused_on_the_next_run(offline_set, tmp_path):
    root = make(tmp_path / "proj")
    plant = f'printf \'[sandbox]\\nlevel = "relaxed"\\n[sandbox.network]\\nmode = "host"\\n\' > {root}/sub/nixcell.toml'
    assert run_in(root, "--", "bash", "-c", plant).returncode == 0
    assert (root / "sub" / "nixcell.toml").exists()  # the cell could write it...
    err = one_line_error(run_in(root / "sub", "--", "true"))
    assert "inside the project at" in err and "--project" in err  # ...and it is not used
    assert run_in(root, "--", "true").returncode == 0  # the project itself still runs
    # a nixcell.toml planted beside a nixcage.toml (it would win) is refused the same way
    cage = tmp_path / "cage"
    cage.mkdir()
    (cage / "nixcage.toml").write_text('[nix]\npackages = ["bash"]\n')
    (cage / "nixcell.toml").write_text(BASE)
    assert "both nixcell.toml and nixcage.toml" in one_line_error(run_in(cage, "--", "true"))


def test_a_state_dir_swapped_for_a_symlink_gets_nothing(offline_set, tmp_path):
    root = make(tmp_path / "proj")
    assert run_in(root, "--", "true").returncode == 0
    cache = root / ".nixcell" / "local" / "cache"
    cache.rmdir()  # as a cell with the project writable and .nixcell not protected would
    cache.symlink_to(tmp_path)
    err = one_line_error(run_in(root, "--", "bash", "-c", "echo x > $XDG_CACHE_HOME/planted"))
    assert "symbolic link" in err and not (tmp_path / "planted").exists()


def test_project_flags_dir_form_and_no_project(offline_set, tmp_path):
    root = make(tmp_path / "proj", "[cage]\ncommand = ['bash', '-c', 'echo default-command']\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_in(elsewhere, "--project", str(root)).stdout == b"default-command\n"
    assert run_in(elsewhere, str(root), "--").stdout == b"default-command\n"
    assert run_in(elsewhere, str(root), "--", "bash", "-c", "pwd").stdout == f"{root}\n".encode()
    # after `--` a directory is the command (as outside project mode), never a project
    as_command = run_in(elsewhere, "-p", "bash", "--", str(root), "--", "x")
    assert as_command.returncode == 127 and b"does not exist in the cell" in as_command.stderr
    assert "--network MODE is for projects" in one_line_error(
        run_in(elsewhere, "--network", "open", "-p", "bash", "--", "true")
    )
    plain = run_in(root, "--no-project", "-p", "bash", "--", "bash", "-c", "pwd")
    assert plain.stdout == b"/workspace\n", plain
    assert "no packages" in one_line_error(run_in(root, "--no-project", "--", "true"))
    (elsewhere / "nixcell.toml").write_text("")
    empty = one_line_error(run_in(elsewhere, "--", "true"))
    assert "nixcell.toml: [nix] packages is empty: a cell holds only the packages named" in empty


def test_flags_win_and_lists_add_on_the_command_line(offline_set, tmp_path):
    root = make(
        tmp_path / "proj",
        "[sandbox.resources]\nmemory = '1G'\npids = 99\n[cage]\nenv = { A = 'config', B = 'config' }\n",
    )
    args = (
        "--memory",
        "256M",
        "-e",
        "B=flag",
        "-p",
        "jq",
        "--network",
        "none",
        "--dry-run",
        "--json",
        "--",
        "true",
    )
    plan = json.loads(run_in(root, *args).stdout)
    assert plan["limits"]["memory"] == 256 << 20 and plan["limits"]["pids"] == 99
    assert plan["env"]["A"] == "config" and plan["env"]["B"] == "flag"
    assert any("-jq-" in path for path in plan["closure"]) and any(
        "-curl-" in p for p in plan["closure"]
    )
    assert plan["network"] is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[sandbox.resources]\nmemory = '4X'\n",
            "nixcell.toml:5: [sandbox.resources] memory: invalid memory",
        ),
        ("[sandbox]\nlevel = 'paranoid'\n", "nixcell.toml:5: [sandbox] level:"),
        (
            "[sandbox]\nlevel = 'strict'\nbogus = 1\n",
            "nixcell.toml:6: [sandbox] bogus: unknown key",
        ),
        ("[sandbox\n", "nixcell.toml:4: not valid TOML"),
    ],
)
def test_malformed_config_is_a_one_line_cli_error(offline_set, tmp_path, text, expected):
    root = make(tmp_path / "proj", text)
    err = one_line_error(run_in(root / "sub", "--", "true"))
    assert expected in err, err


def test_open_network_goes_through_the_proxy_with_the_guard_on(offline_set, tmp_path, tls):
    tls.seen.clear()
    root = make(tmp_path / "proj", "[sandbox.network]\ndeny_hosts = ['other.test']\n")
    pins = [
        "--resolve=up.test:127.0.0.1",
        "--resolve=other.test:127.0.0.1",
        f"--upstream-ca={tls.ca_file}",
    ]
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} "]
    # open mode: every host on 80/443, but loopback only with a cidr rule (the address guard)
    guarded = run_in(root, *pins, "--", *curl, tls.url("/guarded"))
    assert guarded.stdout == b"000 " and tls.paths() == [], guarded
    allowed = [f"--allow-host=up.test:{tls.port}", "--allow-cidr=127.0.0.1/32"]
    result = run_in(
        root, *pins, *allowed, "--", *curl, tls.url("/a"), tls.url("/b", host="other.test")
    )
    assert result.stdout == b"200 000 ", result  # the config's deny still holds
    assert tls.paths() == ["/a"]
    audit = os.path.join(audit_dir(str(root)), "audit.jsonl")
    with open(audit) as f:
        hosts = [json.loads(line)["host"] for line in f]
    assert "up.test" in hosts and "other.test" in hosts
    none = run_in(root, "--network", "none", "--", *curl, tls.url("/c"))
    assert none.stdout == b"000 " and tls.paths() == ["/a"], none


def test_host_network_mode_shares_the_host_namespace(offline_set, tmp_path, plain):
    plain.seen.clear()
    root = make(tmp_path / "proj", "[sandbox.network]\nmode = 'host'\n")
    result = run_in(
        root,
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"http://127.0.0.1:{plain.port}/h",
    )
    assert result.stdout == b"200" and plain.paths() == ["/h"], result


def test_cached_plans_follow_the_config_and_passed_variables(offline_set, tmp_path):
    root = make(
        tmp_path / "proj",
        "[sandbox.network]\nmode = 'none'\n[cage]\nenv = { FOO = 'one' }\npassthrough_env = ['PASSED']\n",
    )
    show = ["--", "bash", "-c", 'echo "$FOO ${PASSED:-unset}"']
    assert run_in(root, *show, env={"PASSED": "a"}).stdout == b"one a\n"
    assert run_in(root, *show, env={"PASSED": "a"}).stdout == b"one a\n"  # (from the cache)
    assert run_in(root, *show, env={"PASSED": "b"}).stdout == b"one b\n"
    env = {k: v for k, v in os.environ.items() if k != "PASSED"}
    old = os.getcwd()
    os.chdir(root)
    try:
        import subprocess

        from tests.conftest import NIXCELL

        unset = subprocess.run([NIXCELL, "run", *show], env=env, capture_output=True)
    finally:
        os.chdir(old)
    assert unset.stdout == b"one unset\n", unset
    text = (root / "nixcell.toml").read_text().replace("'one'", "'two'")
    (root / "nixcell.toml").write_text(text)
    assert run_in(root, *show, env={"PASSED": "b"}).stdout == b"two b\n"
    (root / ".envrc").write_text("")  # a new protected file: the next plan binds it read-only
    probe = run_in(
        root,
        "--",
        "bash",
        "-c",
        f"echo x >> {root}/.envrc 2>/dev/null && echo WROTE; true",
        env={"PASSED": "b"},
    )
    assert probe.stdout == b"" and (root / ".envrc").read_text() == "", probe


# nixcage's documented example: the "Configuration — nixcage.toml" block of nixcage's README
# (github.com/hamidr/nixcage, README.md), verbatim except for the names of things on this
# machine: the package (the offline set has nodejs 22 as "nodejs") and the bind and blacklist
# paths (the README's /data/models, /tmp/shared and /home/user/.ssh, here under tmp_path).
NIXCAGE_README = """
[sandbox]
# "strict"   — no network, tmpfs home, minimal access
# "standard" — project dir writable, network allowed
# "relaxed"  — home readable, project writable, network allowed
level = "standard"

[sandbox.filesystem]
ro_bind = ["{models}"]       # extra read-only paths
rw_bind = ["{shared}"]        # extra read-write paths
blacklist = ["{ssh}"]   # paths to hide (~ is expanded)

[sandbox.network]
allow = true

[sandbox.resources]
cpus = 4       # max CPU cores (Linux only, via systemd-run)
memory = "4G"  # max RAM (Linux only)

[nix]
packages = ["nodejs"]
pure = true
store_mode = "readonly"   # shared | readonly | copy | isolated

[cage]
command = ""                     # default command (empty = shell)
passthrough_env = ["TERM", "LANG", "ANTHROPIC_API_KEY"]
"""


def test_nixcage_readme_example_every_key_obeyed(offline_set, tmp_path):
    models, shared = tmp_path / "models", tmp_path / "shared"
    (models).mkdir()
    (models / "m.bin").write_text("weights\n")
    (shared / ".ssh").mkdir(parents=True)
    (shared / ".ssh" / "id").write_text("KEY")
    root = tmp_path / "cage"
    root.mkdir()
    text = NIXCAGE_README.format(models=models, shared=shared, ssh=shared / ".ssh")
    (root / "nixcage.toml").write_text(text)
    env = {"LANG": "C.UTF-8", "ANTHROPIC_API_KEY": "sk-ant-test", "NOT_PASSED": "x"}
    script = f"""
node --version
echo w > {root}/w && echo project-rw
cat {models}/m.bin; echo x >> {models}/m.bin 2>/dev/null && echo WROTE-RO
echo s > {shared}/s && echo shared-rw
ls -A {shared}/.ssh 2>/dev/null | wc -l; cat {shared}/.ssh/id 2>/dev/null
echo "$LANG $ANTHROPIC_API_KEY ${{NOT_PASSED:-clean}}"
test -n "$HTTPS_PROXY" && echo open
test "$(ls /nix/store | wc -l)" -gt 100 && echo whole-store
touch /nix/store/x 2>/dev/null || echo store-ro
"""
    tools = ["-p", "bash", "-p", "coreutils"]  # the README's cell has node only: -p adds
    result = run_in(root, *tools, "--", "bash", "-c", script, env=env)
    assert result.returncode == 0, result
    assert result.stdout.decode().splitlines() == [
        "v22" + result.stdout.decode().split("v22", 1)[1].split("\n", 1)[0],
        "project-rw",
        "weights",
        "shared-rw",
        "0",
        "C.UTF-8 sk-ant-test clean",
        "open",
        "whole-store",
        "store-ro",
    ], result
    assert (shared / "s").read_text() == "s\n" and (models / "m.bin").read_text() == "weights\n"
    # a secret passed through is obeyed, and warned about (credentials keep it outside)
    assert "ANTHROPIC_API_KEY: its real value enters the cell" in result.stderr.decode()
    plan = json.loads(run_in(root, "--dry-run", "--json", "--", "true").stdout)
    assert plan["limits"]["cpus"] == 4 and plan["limits"]["memory"] == 4 << 30
    assert plan["network"]["allow_hosts"] == ["*"] and plan["store"] == "readonly"
    # allow = false (nixcage's other documented network value): no network at all; and
    # [cage] env (a nixcage key the README's example leaves out)
    text = text.replace("allow = true", "allow = false") + 'env = { FOO = "bar" }\n'
    (root / "nixcage.toml").write_text(text)
    off = run_in(root, *tools, "--", "bash", "-c", "echo ${HTTPS_PROXY:-none} $FOO")
    assert off.stdout == b"none bar\n", off
    # no command and an empty [cage] command: a one-line error naming the key (shell is
    # `nixcell shell`)
    bare = run_in(root)
    assert bare.returncode == 2 and "no command" in bare.stderr.decode().splitlines()[-1], bare


def test_ordinary_user_project(user_home):
    """As an ordinary user (the cell's uid is the invoker's): the same protections, and a config
    that is not the user's own is refused."""
    from tests.integration.test_ordinary_user import NOBODY, as_nobody

    root = user_home / "proj"
    root.mkdir()
    (root / "nixcell.toml").write_text(
        '[nix]\npackages = ["bash", "coreutils"]\n[sandbox.network]\nmode = "none"\n'
    )
    script = f"echo ok > {root}/w && cat {root}/w; echo x >> {root}/nixcell.toml 2>/dev/null && echo WROTE; echo k > $XDG_CACHE_HOME/k; true"
    root.chmod(0o755)
    os.chown(root, NOBODY, NOBODY)
    os.chown(root / "nixcell.toml", NOBODY, NOBODY)
    result = as_nobody(user_home, "run", "--project", str(root), "--", "bash", "-c", script)
    assert result.stdout == b"ok\n", result
    assert (root / ".nixcell" / "local" / "cache" / "k").stat().st_uid == NOBODY
    os.chown(root / "nixcell.toml", 4242, 4242)  # another user's config (root's would do)
    refused = as_nobody(user_home, "run", "--project", str(root), "--", "true")
    assert refused.returncode == 2 and b"owned by uid 4242" in refused.stderr, refused


@pytest.mark.parametrize("level", ["strict", "standard", "relaxed"])
def test_warm_and_normal_paths_make_the_same_project_cell(offline_set, tmp_path, level):
    """A project's second run comes from the cached plan (the entry is not rewritten) and its
    cell is the first run's, mounts and environment included."""
    from tests.integration.test_fast_path import PROBE, _entry, _normalised

    home = tmp_path / "home"
    root = make(
        tmp_path / "proj",
        f"[sandbox]\nlevel = '{level}'\n[sandbox.network]\nmode = 'none'\n",
        git=True,
    )
    env = {"NIXCELL_HOME": str(home)}
    normal = run_in(root / "sub", "--", "bash", "-c", PROBE, env=env)
    before = _entry(home)
    fast = run_in(root / "sub", "--", "bash", "-c", PROBE, env=env)
    after = _entry(home)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), "planned again"
    assert normal.returncode == 0 and fast.returncode == 0, normal
    assert _normalised(fast.stdout) == _normalised(normal.stdout)
    # an edited config is another key: planned again
    (root / "nixcell.toml").write_text((root / "nixcell.toml").read_text() + "# edited\n")
    assert run_in(root / "sub", "--", "true", env=env).returncode == 0
    assert len(list((home / "cache" / "plans").iterdir())) == 2


def test_a_hidden_path_made_since_the_plan_is_hidden_on_the_warm_path(offline_set, tmp_path):
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    root = make(
        tmp_path / "proj", "[sandbox]\nlevel = 'relaxed'\n[sandbox.network]\nmode = 'none'\n"
    )
    env = {"HOME": str(home), "NIXCELL_HOME": str(tmp_path / "state")}
    probe = ("--", "bash", "-c", "cat ~/.ssh/id 2>/dev/null || echo hidden")
    assert run_in(root, *probe, env=env).stdout == b"hidden\n"  # no ~/.ssh yet
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id").write_text("PRIVATE")
    assert run_in(root, *probe, env=env).stdout == b"hidden\n"  # made since: hidden all the same


def test_the_warm_path_in_a_project_imports_almost_nothing(offline_set, tmp_path):
    import subprocess
    import sys

    from tests.integration.test_fast_path import WARM_PATH_NEVER

    from nixcell.cli import launcher

    path = tmp_path / "nixcell"
    launcher.install(str(path))
    root = make(tmp_path / "proj", "[sandbox]\nlevel = 'strict'\n")
    env = {**os.environ, "NIXCELL_HOME": str(tmp_path / "home")}
    argv = ["run", "--", "true"]
    for _ in range(2):
        assert (
            subprocess.run(
                [str(path), *argv], env=env, cwd=root / "sub", capture_output=True
            ).returncode
            == 0
        )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-X", "importtime", str(path), *argv],
        env=env, cwd=root / "sub", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    loaded = {ln.rsplit("|", 1)[-1].strip() for ln in out.stderr.splitlines() if "|" in ln}
    assert "nixcell.sandbox.direct" in loaded and "nixcell.project.discover" in loaded
    assert sorted(loaded.intersection(WARM_PATH_NEVER)) == []
    assert not any(
        m.startswith("nixcell.project.") and m != "nixcell.project.discover" for m in loaded
    )


def test_project_policy_and_credentials_keep_the_real_token_outside(offline_set, tmp_path, tls):
    """[sandbox.network] policy (relative to the root, in .nixcell/) and credentials: the cell
    holds a dummy, the loopback upstream standing in for the API receives the real token."""
    from tests.integration.test_net_credentials import write_policy

    tls.seen.clear()
    real = "ghp_" + "R" * 36
    root = make(
        tmp_path / "proj",
        "[sandbox.network]\npolicy = '.nixcell/policy.toml'\ncredentials = ['github']\nallow_cidrs = ['127.0.0.1/32']\n",
    )
    (root / ".nixcell").mkdir()
    write_policy(root / ".nixcell" / "policy.toml", tls.port, source="env:PROJECT_TEST_GH")
    pins = ["--resolve=up.test:127.0.0.1", f"--upstream-ca={tls.ca_file}"]
    script = f'printf "%s\\n" "$GITHUB_TOKEN"; curl -s -H "Authorization: Bearer $GITHUB_TOKEN" {tls.url("/echo-auth")}'
    result = run_in(root, *pins, "--", "bash", "-c", script, env={"PROJECT_TEST_GH": real})
    assert result.returncode == 0, result
    dummy = result.stdout.decode().splitlines()[0]
    assert (
        dummy.startswith("ghp_")
        and dummy != real
        and real.encode() not in result.stdout + result.stderr
    )
    assert [
        (s.path, s.headers.get("Authorization") or s.headers.get("authorization")) for s in tls.seen
    ] == [("/echo-auth", f"Bearer {real}")]
    # the policy is read-only inside: the cell cannot add hosts for the credential
    grow = run_in(
        root,
        "--",
        "bash",
        "-c",
        f"echo evil >> {root}/.nixcell/policy.toml 2>/dev/null && echo WROTE; true",
        env={"PROJECT_TEST_GH": real},
    )
    assert grow.stdout == b"", grow


def test_copy_store_mode_keeps_the_copy_in_dot_nixcell_read_only(offline_set, tmp_path):
    root = make(tmp_path / "proj", "store_mode = 'copy'\n[sandbox.network]\nmode = 'none'\n")
    result = run_in(
        root,
        "--",
        "bash",
        "-c",
        f"ls /nix/store; touch {root}/.nixcell/store/x 2>/dev/null && echo WROTE; true",
    )
    assert result.returncode == 0 and b"WROTE" not in result.stdout, result
    seen = set(result.stdout.decode().split())
    copied = set(os.listdir(root / ".nixcell" / "store" / "paths"))
    assert seen and seen <= copied, (seen, copied)
    assert "store/" in (root / ".nixcell" / ".gitignore").read_text()
