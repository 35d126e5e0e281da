"""compile_request's network, credentials, limits, backend and hardening: what the server
grants, and nothing a client can widen. Hostile values from every side, one-line refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_jobs_compile import (
    CONFIG,
    CRED_POLICY,
    JOB_DIR,
    SETTINGS,
    compiled,
    outcome,
    refused,
)

from nixcell.jobs.compile import check_request
from nixcell.jobs.config import ServerConfig
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.profiles import Profile

# Host spellings the net layer reads: case, trailing dots, inet_aton forms, IPv6 and mapped
# forms, zone ids, IDNA and full-width letters, wildcards, ports, userinfo, URLs, junk.
HOSTS = [
    "api.github.com", "API.GitHub.COM", "api.github.com.", "api.github.com..", "*.github.com",
    "*", "**.github.com", "a*.github.com", "github.*", "127.0.0.1", "127.1", "0x7f.1",
    "2130706433", "017700000001", "0177.0.0.1", "[::1]", "::1", "[::ffff:127.0.0.1]",
    "[fe80::1%eth0]", "fe80::1%25eth0", "bücher.example", "xn--bcher-kva.example",
    "\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com", "example.com:443", "example.com:0",
    "example.com:65536",
    "example.com:443.", "user@example.com", "http://example.com", "example.com/path",
    "exa mple.com", "exa\nmple.com", "exa\0mple.com", "", ".", "-a.com", "a" * 64 + ".com",
    ("a" * 60 + ".") * 5 + "com", "%2e%2e", "example.com\\", "[::1]:443", "1.2.3.4/8",
]  # fmt: skip


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("field", ["allow_hosts", "deny_hosts"])
def test_every_host_spelling_is_refused_or_kept_exactly(field, host):
    fields = {field: [host]}
    if field == "deny_hosts":
        fields["allow_hosts"] = ["example.org"]
    spec = outcome(**fields)
    assert spec is None or getattr(spec.network, field) == [host]


@pytest.mark.parametrize(
    "cidr",
    [
        "127.0.0.0/8", "127.0.0.1/32", "127.0.0.1", "0.0.0.0/0", "0.0.0.0/1", "10.0.0.0/8",
        "10.1.2.3/32", "172.16.0.0/12", "192.168.1.0/24", "169.254.169.254/32", "100.64.0.0/10",
        "224.0.0.0/4", "::/0", "::1/128", "::ffff:127.0.0.1/128", "::ffff:0:0/96", "fe80::/10",
        "fc00::/7", "fd00:ec2::254/128", "2002::/16", "2002:7f00:1::/48", "64:ff9b::/96",
        "::7f00:1/128", "10/8", "127.1/32", "1.2.3.4/33", "not-a-cidr", "[::1]:443",
        "127.0.0.1/32:5432", "fe80::1%eth0/128",
    ],
)  # fmt: skip
def test_cidrs_into_the_servers_own_networks_are_refused(cidr):
    refused(allow_cidrs=[cidr])


@pytest.mark.parametrize("cidr", ["8.8.8.0/24", "1.1.1.1/32", "8.8.8.8", "2606:4700::/32"])
def test_public_cidrs_are_kept(cidr):
    assert compiled(allow_cidrs=[cidr]).spec.network.allow_cidrs == [cidr]


def test_no_network_fields_means_no_network():
    assert compiled().spec.network is None
    assert compiled(deny_hosts=["example.com"]).spec.network is None  # nothing to deny from


def test_named_policies_are_the_servers_files_and_audit_is_on():
    spec = compiled(policies=["local", "pypi", "local"]).spec
    assert spec.network.policy_files == [
        "/srv/policies/local.toml",
        "/srv/policies/pypi.toml",
        CRED_POLICY,
    ]
    assert spec.network.audit == f"{JOB_DIR}/audit.jsonl"


@pytest.mark.parametrize(
    "name", ["/etc/passwd", "../local", "local/../x", "nope", "", "LOCAL", "local\n", "x" * 999]
)
def test_a_policy_is_named_never_a_path(name):
    refused(policies=[name])


def test_credentials_are_the_servers_by_name_and_need_a_network():
    spec = compiled(credentials=["github"], allow_hosts=["api.github.com"]).spec
    assert spec.network.credentials == ["github"]
    assert spec.network.policy_files == [CRED_POLICY]
    message = refused(credentials=["github"])
    assert "network" in message
    for name in ("gitlab", "../github", "", "github\n", "x" * 500):
        refused(credentials=[name], allow_hosts=["api.github.com"])


def test_credentials_on_a_server_without_any():
    bare = ServerConfig(state_dir="/srv/nixcell")
    refused(bare, credentials=["github"], allow_hosts=["api.github.com"])


def test_the_git_credential_must_exist():
    refused(workspace={"repo": "https://git.example/x.git", "git_credential": "gitlab"})
    compiled(workspace={"repo": "https://git.example/x.git", "git_credential": "github"})


# -- limits -------------------------------------------------------------------------------------


def test_limits_default_cap_and_request():
    spec = compiled().spec
    assert spec.limits.memory == 512 << 20  # the default
    assert spec.limits.timeout == 600.0
    assert spec.limits.pids == 1000  # no default: the maximum caps anyway
    assert spec.limits.cpus is None and spec.limits.disk is None  # neither set: unlimited
    spec = compiled(memory="1G", timeout="30s", pids=50, cpus=0.5, disk="64M").spec
    assert (spec.limits.memory, spec.limits.timeout, spec.limits.pids) == (1 << 30, 30.0, 50)
    assert (spec.limits.cpus, spec.limits.disk) == (0.5, 64 << 20)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("memory", "3G"), ("memory", 1 << 62), ("memory", "1E"), ("memory", "-1"),
        ("memory", "0"), ("memory", "1K"), ("memory", "NaN"), ("memory", "inf"), ("memory", ""),
        ("memory", "1.5.5G"), ("memory", 10**400), ("timeout", "2h"), ("timeout", float("nan")),
        ("timeout", float("inf")), ("timeout", -1.0), ("timeout", 0), ("timeout", "1d"),
        ("timeout", "1e9"), ("cpus", float("nan")), ("cpus", float("inf")), ("cpus", -1.0),
        ("cpus", 0.0), ("cpus", 1e9), ("cpus", "many"), ("pids", 1001), ("pids", 1),
("pids", "-5"), ("pids", "2.5"), ("disk", "1E"), ("disk", "0"),
        ("disk", "x"),
    ],
)  # fmt: skip
def test_hostile_limits_are_refused(key, value):
    message = refused(**{key: value})
    if message != "the request model refused it":
        assert key in message


def test_above_the_maximum_names_key_and_maximum():
    assert refused(memory="3G") == "memory: '3G' is above this server's maximum 2G"
    assert refused(timeout="2h") == "timeout: '2h' is above this server's maximum 60m"


numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.text(max_size=12),
)


@SETTINGS
@given(key=st.sampled_from(["memory", "cpus", "pids", "timeout", "disk"]), value=numbers)
def test_any_limit_is_refused_or_within_the_maxima(key, value):
    try:
        JobRequest(command=["true"], **{key: value})
    except ValueError:
        return  # the model refuses the type: 400 before compile
    spec = outcome(**{key: value})
    if spec is None:
        return
    got = getattr(spec.limits, key)
    assert got is not None and math.isfinite(got) and got > 0


# -- backend, hardening -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["docker", "gvisor", "none", "", "bwrap ", "BWRAP", "../x"])
def test_only_the_servers_backends(backend):
    refused(backend=backend)


def test_bwrap_backend():
    compiled(backend="bwrap")


@pytest.mark.parametrize("names", [["nested-sandbox"], ["nope"], ["debugger", "../x"], [""]])
def test_hardening_the_server_does_not_allow_is_refused(names):
    refused(hardening=names)


def test_hardening_the_server_allows():
    assert compiled(hardening=["debugger"]).spec.hardening_profiles == ["debugger"]
    wide = ServerConfig(state_dir="/srv/nixcell", hardening=("nested-sandbox",))
    assert compiled(wide, hardening=["nested-sandbox"]).spec.hardening_profiles == [
        "nested-sandbox"
    ]


def test_interactive_gets_a_tty():
    assert compiled(interactive=True).spec.tty == "always"
    assert compiled().spec.tty == "never"


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "\x1b[31m", "x" * 201])
def test_job_names_are_one_short_line(name):
    refused(name=name)


# -- check_request ------------------------------------------------------------------------------


def test_check_request_applies_profiles_then_compiles():
    profiles = {"net": Profile(name="net", allow_hosts=("pypi.org",), packages=("python3",))}
    req = JobRequest(command=["python3", "-V"], profiles=["net"])
    result = check_request(req, CONFIG, profiles)
    assert result.spec.packages == ["python3"]
    assert result.spec.network.allow_hosts == ["pypi.org"]
    with pytest.raises(JobError, match="unknown profile"):
        check_request(JobRequest(command=["true"], profiles=["../net"]), CONFIG, profiles)


def test_compile_refuses_a_request_whose_profiles_were_not_applied():
    with pytest.raises(JobError) as info:
        compiled(profiles=["net"])
    assert info.value.status == 500


OFFERING = ServerConfig(
    state_dir="/srv/nixcell", backends=("bwrap", "gvisor", "systemd"), default_backend="gvisor"
)


@pytest.mark.parametrize("backend", ["bwrap", "gvisor", "systemd"])
def test_an_offered_backend_reaches_the_spec(backend):
    assert compiled(OFFERING, backend=backend).spec.backend == backend


def test_the_servers_default_backend_applies():
    assert compiled(OFFERING).spec.backend == "gvisor"
    assert compiled().spec.backend == "bwrap"


@pytest.mark.parametrize("backend", ["docker", "microvm", "auto", "lxc"])
def test_a_backend_the_server_does_not_offer_is_a_400(backend):
    assert "is not offered here (backends: bwrap, gvisor, systemd)" in refused(
        OFFERING, backend=backend
    )


def test_an_interactive_job_needs_bwrap():
    assert "gives a job no terminal" in refused(OFFERING, interactive=True)
    assert compiled(OFFERING, interactive=True, backend="bwrap").spec.tty == "always"
