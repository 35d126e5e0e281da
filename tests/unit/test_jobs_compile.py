"""compile_request: a hostile client's request is a one-line JobError, or a spec that is
exactly what was asked — never a host path, a bind, the host network or a weaker sandbox.

Table-driven attacks on every field (env, packages, command, script, cwd, hosts, cidrs,
policies, credentials, limits, backend, hardening, pins), plus hypothesis properties that throw
arbitrary values at them. Pure: no cell runs (tests/integration/test_jobs_compile_run.py
runs compiled specs)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from nixcell.jobs.compile import JOB_DIR_IN_CELL, compile_request
from nixcell.jobs.config import ServerConfig
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.requestcheck import reserved_env

JOB_DIR = "/srv/nixcell/jobs/7"
CRED_POLICY = "/srv/nixcell/private/credentials.toml"
GITHUB = {"name": "github", "source": "env:GH", "hosts": ["api.github.com"]}
NPM = {"name": "npm", "source": "env:NPM", "hosts": ["registry.npmjs.org"], "env": "NPM_TOKEN"}
CONFIG = ServerConfig(
    state_dir="/srv/nixcell",
    policies={"local": "/srv/policies/local.toml", "pypi": "/srv/policies/pypi.toml"},
    credentials=(GITHUB, NPM),
    defaults={"memory": 512 << 20, "timeout": 600.0},
    maxima={"memory": 2 << 30, "timeout": 3600.0, "pids": 1000},
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def request(**fields) -> JobRequest:
    fields.setdefault("packages", ["bash", "coreutils"])
    if "script" not in fields:
        fields.setdefault("command", ["true"])
    return JobRequest(**fields)


def compiled(
    config: ServerConfig = CONFIG, host_workspace: str | None = None, base_cwd=None, **fields
):
    result = compile_request(
        request(**fields),
        config,
        job_dir=JOB_DIR,
        workspace=host_workspace,
        cwd=base_cwd,
        credential_policy=CRED_POLICY if config.credentials else None,
        audit=None,
    )
    assert_contained(result.spec, config, host_workspace)
    return result


def refused(config: ServerConfig = CONFIG, **fields) -> str:
    try:
        req = request(**fields)
    except ValidationError:
        return "the request model refused it"  # the HTTP layer answers 400 for these
    with pytest.raises(JobError) as info:
        compiled(config, **fields)
    message = str(info.value)
    assert info.value.status == 400, message
    assert message and "\n" not in message and "\r" not in message and len(message) < 400
    assert "Traceback" not in message or "Traceback" in repr(fields)  # a value quoted back
    del req
    return message


def outcome(**fields):
    """The spec, or None when refused (then with one line, checked here)."""
    try:
        return compiled(**fields).spec
    except JobError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return None


def assert_contained(spec, config: ServerConfig, workspace: str | None) -> None:
    """What no request can change: the server decides binds, store, host network, pass-env."""
    assert spec.pass_env == []
    assert spec.host_network is False
    assert spec.store == "closure" and spec.store_dir is None
    assert spec.hide == []
    assert spec.workdir == workspace
    for mount in spec.mounts:
        assert not mount.writable
        assert mount.source.startswith(JOB_DIR + "/")
        assert mount.target.startswith(JOB_DIR_IN_CELL + "/")
    reserved = reserved_env()
    for name in spec.env:
        assert name.upper() not in reserved and not name.upper().startswith("NIXCELL_")
    if spec.network is not None:
        allowed = {*config.policies.values(), CRED_POLICY}
        assert set(spec.network.policy_files) <= allowed
        assert spec.network.audit is not None and spec.network.audit.startswith(JOB_DIR + "/")
        assert spec.network.upstream_ca == [] and spec.network.resolve == {}
        assert spec.network.learn is False
    for key, top in config.maxima.items():
        value = getattr(spec.limits, key)
        assert value is not None and value <= top


# -- what to run --------------------------------------------------------------------------------


def test_command_is_the_argv_exactly():
    spec = compiled(command=["python3", "-c", "print(1)", "a b", "$HOME", "'\"", "-"]).spec
    assert spec.command == ["python3", "-c", "print(1)", "a b", "$HOME", "'\"", "-"]
    assert spec.mounts == []


def test_script_is_a_read_only_job_file_run_by_bash_or_sh():
    result = compiled(script="echo hi\n", command=[])
    assert result.files == {"script": b"echo hi\n"}
    assert result.spec.command == ["bash", f"{JOB_DIR_IN_CELL}/script"]
    [mount] = result.spec.mounts
    assert (mount.source, mount.writable) == (f"{JOB_DIR}/script", False)
    sh = compiled(script="echo hi\n", packages=["coreutils"])
    assert sh.spec.command[0] == "sh"


@pytest.mark.parametrize(
    "fields",
    [
        {"command": []},
        {"command": [""]},
        {"command": ["a\0b"]},
        {"command": ["ls", "x\0"]},
        {"command": ["x"] * 5000},
        {"script": "echo", "command": ["true"]},
        {"script": ""},
        {"script": "   \n"},
        {"script": "echo \0"},
        {"script": "x" * ((1 << 20) + 1)},
        {"packages": []},
    ],
)
def test_nothing_sensible_to_run_is_refused(fields):
    refused(**fields)


# -- packages and pins --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        '"; builtins.readFile /etc/shadow; "',
        "bash\\",
        'a"b',
        "${builtins.currentSystem}",
        "/nix/store/00000000000000000000000000000000-x",
        "/etc",
        "./flake#x",
        "path:/root#x",
        "github:evil/repo#x",
        "git+file:///root/repo#x",
        "nixpkgs#hello",
        "python3 ",
        " python3",
        "a..b",
        ".a",
        "a.",
        "a b",
        "a\nb",
        "a\0b",
        "",
        "x" * 300,
        "(import <nixpkgs> {})",
        "a;b",
    ],
)
def test_package_names_that_are_not_attribute_paths_are_refused(name):
    message = refused(packages=["bash", name])
    if len(name) < 40 and name.isprintable():
        assert "packages" in message


@pytest.mark.parametrize("name", ["python3", "python3Packages.requests", "gcc-unwrapped", "g++"])
def test_attribute_paths_are_kept(name):
    assert compiled(packages=[name, "bash"]).spec.packages == [name, "bash"]


def test_extra_packages_from_the_server_are_added():
    result = compile_request(
        request(),
        CONFIG,
        job_dir=JOB_DIR,
        workspace=None,
        credential_policy=None,
        audit=None,
        extra_packages=("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-devshell",),
    )
    assert result.spec.packages[-1].startswith("/nix/store/")


@pytest.mark.parametrize(
    "pin",
    ["/", "/etc/nixpkgs", "./x", "../x", "~root/x", "~/x", "a/b", "nixos-24.11/../x", "x\n", ""],
)
def test_a_client_cannot_name_a_pin_on_the_server_disk(pin):
    refused(nixpkgs=pin)


@pytest.mark.parametrize("pin", ["nixos-24.11", "nixos-unstable", "a" * 0 + "0" * 40])
def test_remote_pins_are_kept(pin):
    assert compiled(nixpkgs=pin).spec.nixpkgs == pin


def test_the_server_pin_is_the_default():
    config = ServerConfig(state_dir="/srv/nixcell", nixpkgs="nixos-24.11")
    assert compiled(config).spec.nixpkgs == "nixos-24.11"
    assert compiled(config, nixpkgs="nixos-unstable").spec.nixpkgs == "nixos-unstable"


# -- env ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"A=B": "x"},
        {"": "x"},
        {"1A": "x"},
        {"A B": "x"},
        {"A\nB": "x"},
        {"A\0": "x"},
        {"A": "x\0y"},
        {"HTTPS_PROXY": "http://evil"},
        {"https_proxy": "http://evil"},
        {"Https_Proxy": "http://evil"},
        {"SOCKS_PROXY": "x"},
        {"NO_PROXY": "*"},
        {"no_proxy": "*"},
        {"SSL_CERT_FILE": "/tmp/ca"},
        {"NODE_EXTRA_CA_CERTS": "/tmp/ca"},
        {"CURL_CA_BUNDLE": "/tmp/ca"},
        {"NODE_USE_ENV_PROXY": "0"},
        {"npm_config_proxy": "x"},
        {"NIXCELL_HOME": "/"},
        {"nixcell_anything": "x"},
        {"V": "x" * (128 << 10)},
        {f"V{i}": "x" for i in range(1001)},
    ],
)
def test_hostile_env_is_refused(env):
    message = refused(env=env)
    assert "\n" not in message


def test_env_values_keep_newlines_equals_and_unicode():
    env = {"A": "line1\nline2", "B": "k=v=w", "C": "ünï\u2028", "PATH": "/x", "_": ""}
    assert compiled(env=env).spec.env == env


def test_a_credential_env_is_not_the_clients_to_set():
    refused(env={"GITHUB_TOKEN": "mine"}, credentials=["github"], allow_hosts=["api.github.com"])
    refused(env={"npm_token": "mine"}, credentials=["npm"], allow_hosts=["registry.npmjs.org"])
    assert compiled(env={"GITHUB_TOKEN": "x"}).spec.env == {"GITHUB_TOKEN": "x"}  # not asked for


def test_secret_env_names_must_be_in_env():
    refused(env={"A": "1"}, secret_env=["B"])
    assert compiled(env={"A": "1"}, secret_env=["A"]).spec.env == {"A": "1"}


@SETTINGS
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=6))
def test_any_env_is_refused_or_kept_exactly(env):
    spec = outcome(env=env)
    assert spec is None or spec.env == env


# -- cwd ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cwd", "base", "expected"),
    [
        (None, None, "/workspace"),
        ("src", None, "/workspace/src"),
        ("src/./lib/", None, "/workspace/src/lib"),
        ("/tmp", None, "/tmp"),
        ("sub", "/workspace/repo", "/workspace/repo/sub"),
        (None, "/workspace/repo", "/workspace/repo"),
        ("//etc", None, "/etc"),
    ],
)
def test_cwd(cwd, base, expected):
    assert compiled(base_cwd=base, cwd=cwd).spec.cwd == expected


@pytest.mark.parametrize(
    "cwd", ["..", "../x", "a/../../x", "/workspace/..", "a\0", "a\nb", "x" * 2000, ""]
)
def test_hostile_cwd_is_refused(cwd):
    refused(cwd=cwd)


@SETTINGS
@given(st.text(max_size=30))
def test_any_cwd_is_refused_or_inside_the_cell_tree_without_dotdot(cwd):
    spec = outcome(cwd=cwd)
    if spec is None:
        return
    assert spec.cwd.startswith("/") and ".." not in spec.cwd.split("/")
    assert not any(ord(c) < 32 for c in spec.cwd)


SURROGATE = "\ud800"


@pytest.mark.parametrize(
    "fields",
    [
        {"script": SURROGATE},
        {"env": {"A": SURROGATE}},
        {"command": ["echo", SURROGATE]},
        {"cwd": SURROGATE},
        {"allow_hosts": [SURROGATE + ".com"]},
        {"name": SURROGATE},
        {"workspace": {"repo": "https://x/" + SURROGATE}},
    ],
)
def test_lone_surrogates_anywhere_are_one_line(fields):
    assert "surrogate" in refused(**fields)


HOSTILE_CHARS = ["\ud800", "\udcff", "\x00", "\n", "\r", "\x1b", "\x7f", "=", "/", ".", "a", "-"]
any_text = st.one_of(st.text(max_size=12), st.text(st.sampled_from(HOSTILE_CHARS), max_size=8))


@SETTINGS
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "script": any_text,
            "command": st.lists(any_text, max_size=3),
            "env": st.dictionaries(any_text, any_text, max_size=3),
            "cwd": any_text,
            "allow_hosts": st.lists(any_text, max_size=2),
            "deny_hosts": st.lists(any_text, max_size=2),
            "policies": st.lists(any_text, max_size=2),
            "credentials": st.lists(any_text, max_size=2),
            "nixpkgs": any_text,
            "backend": any_text,
            "name": any_text,
        },
    )
)
def test_any_request_text_is_refused_in_one_line_or_compiles(fields):
    """Every text field at once, any code point (surrogates and controls included): a
    JobError of one line or a contained spec (``compiled`` checks it) — never another error."""
    fields.setdefault("command", ["true"])
    if "script" in fields:
        fields["command"] = []
    try:
        request(**fields)
    except ValidationError:
        return
    outcome(**fields)
