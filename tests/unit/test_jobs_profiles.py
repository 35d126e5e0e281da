"""Profiles: read strictly from the admin's dir, merged left to right (lists add without
repeats, the first profile to set a scalar wins, the request wins over all), named — never a
path — by the client."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_jobs_compile import SETTINGS

from nixcell.errors import UsageError
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.profiles import Profile, apply_profiles, load_profiles

PY = """\
description = "python with pypi"
packages = ["python3", "coreutils"]
allow_hosts = ["pypi.org", "files.pythonhosted.org"]
env = { PIP_NO_INPUT = "1", LANG = "C.UTF-8" }
hardening = ["debugger"]
nixpkgs = "nixos-24.11"

[limits]
memory = "1G"
timeout = "30m"
"""
NET = """\
packages = ["curl", "python3"]
allow_hosts = ["pypi.org", "api.github.com"]
deny_hosts = ["evil.example"]
credentials = ["github"]
env = { LANG = "en_US.UTF-8", GH = "1" }
nixpkgs = "nixos-unstable"
backend = "bwrap"
script = "echo from net"

[limits]
memory = "2G"
cpus = 2
"""


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    d = tmp_path / "profiles"
    d.mkdir(mode=0o755)
    for name, text in (("py", PY), ("net", NET)):
        (d / f"{name}.toml").write_text(text)
        (d / f"{name}.toml").chmod(0o644)
    return d


def test_load(pdir):
    profiles = load_profiles(str(pdir))
    assert sorted(profiles) == ["net", "py"]
    py = profiles["py"]
    assert py.description == "python with pypi"
    assert py.packages == ("python3", "coreutils")
    assert py.env == {"PIP_NO_INPUT": "1", "LANG": "C.UTF-8"}
    assert py.limits == {"memory": 1 << 30, "timeout": 1800.0}
    assert py.source == str(pdir / "py.toml")
    assert load_profiles(None) == {}


def test_merge_left_to_right(pdir):
    profiles = load_profiles(str(pdir))
    req = JobRequest(packages=["jq", "python3"], env={"LANG": "C"}, cpus=1, profiles=["py", "net"])
    merged = apply_profiles(req, req.profiles, profiles)
    assert merged.packages == ["python3", "coreutils", "curl", "jq"]  # in order, no repeats
    assert merged.allow_hosts == ["pypi.org", "files.pythonhosted.org", "api.github.com"]
    assert merged.deny_hosts == ["evil.example"] and merged.credentials == ["github"]
    assert merged.env == {"PIP_NO_INPUT": "1", "LANG": "C", "GH": "1"}  # request wins, then py
    assert merged.nixpkgs == "nixos-24.11"  # the first profile to set it
    assert merged.memory == 1 << 30 and merged.timeout == 1800.0  # py first
    assert merged.cpus == 1  # the request's
    assert merged.script == "echo from net" and merged.command == []  # py runs nothing
    assert merged.backend == "bwrap" and merged.profiles == []
    other = apply_profiles(req, ["net", "py"], profiles)
    assert other.nixpkgs == "nixos-unstable" and other.memory == 2 << 30
    assert other.env["LANG"] == "C"


def test_the_requests_command_beats_a_profile_script(pdir):
    profiles = load_profiles(str(pdir))
    merged = apply_profiles(JobRequest(command=["true"]), ["net"], profiles)
    assert merged.command == ["true"] and merged.script is None
    merged = apply_profiles(JobRequest(script="echo mine"), ["net"], profiles)
    assert merged.script == "echo mine"


@pytest.mark.parametrize(
    "name",
    ["../net", "net/../py", "/etc/passwd", "x/y", ".hidden", ".net", "net.toml", "NET", "",
     " net", "net\n", "n\0et", "x" * 10_000, "py*", "%2e%2e/net"],
)  # fmt: skip
def test_a_client_names_a_profile_never_a_path(pdir, name):
    (pdir / ".hidden.toml").write_text(NET)
    profiles = load_profiles(str(pdir))
    with pytest.raises(JobError) as info:
        apply_profiles(JobRequest(command=["true"]), [name], profiles)
    assert info.value.status == 400
    message = str(info.value)
    assert message.startswith("unknown profile") and "\n" not in message and len(message) < 300


def test_too_many_profiles():
    profiles = {f"p{i}": Profile(name=f"p{i}") for i in range(40)}
    with pytest.raises(JobError, match="at most 32"):
        apply_profiles(JobRequest(command=["true"]), list(profiles), profiles)
    merged = apply_profiles(JobRequest(command=["true"]), ["p1", "p1", "p2"], profiles)
    assert merged.profiles == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('packages = "python3"', r"bad.toml:1: packages: must be an array"),
        ("packages = [1]", r"bad.toml:1: packages: must be a one-line"),
        ('pakages = ["x"]', r"bad.toml:1: pakages: unknown key"),
        ("env = { A = 1 }", r"bad.toml:1: \[env\] A: must be a string"),
        ('script = "x"\ncommand = ["y"]', r"bad.toml:2: command: a profile sets script or"),
        ("command = []", r"bad.toml:1: command: needs at least"),
        ('[limits]\nmemory = "lots"', r"bad.toml:2: \[limits\] memory:"),
        ('[limits]\nmemroy = "1G"', r"bad.toml:2: \[limits\] memroy: unknown key"),
        ('hardening = ["root"]', r"bad.toml:1: hardening: unknown hardening profile"),
        ("description = 5", r"bad.toml:1: description: must be a one-line"),
        ("[nope]\nx = 1", r"bad.toml:1: nope: unknown key"),
        ("packages = [", r"bad.toml:1: not valid TOML"),
    ],
)
def test_a_bad_profile_is_one_line_naming_file_and_line(pdir, text, message):
    (pdir / "bad.toml").write_text(text + "\n")
    with pytest.raises(UsageError, match=message) as info:
        load_profiles(str(pdir))
    assert "\n" not in str(info.value)


def test_odd_names_are_skipped_not_loaded(pdir):
    (pdir / "a b.toml").write_text(NET)
    (pdir / ".hidden.toml").write_text("garbage")
    (pdir / "README").write_text("not a profile")
    assert sorted(load_profiles(str(pdir))) == ["net", "py"]


def test_symlinks_and_others_files_are_refused(pdir, tmp_path):
    (tmp_path / "elsewhere.toml").write_text(NET)
    (pdir / "link.toml").symlink_to(tmp_path / "elsewhere.toml")
    with pytest.raises(UsageError, match="symbolic link"):
        load_profiles(str(pdir))
    (pdir / "link.toml").unlink()
    (pdir / "py.toml").chmod(0o666)
    with pytest.raises(UsageError, match="writable by group or others"):
        load_profiles(str(pdir))
    (pdir / "py.toml").chmod(0o644)
    pdir.chmod(0o777)
    with pytest.raises(UsageError, match=r"profile dir .*writable by group or others"):
        load_profiles(str(pdir))
    pdir.chmod(0o755)
    link = tmp_path / "dirlink"
    link.symlink_to(pdir)
    with pytest.raises(UsageError, match="symbolic link"):
        load_profiles(str(link))
    with pytest.raises(UsageError, match="No such file"):
        load_profiles(str(tmp_path / "missing"))


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_a_profile_owned_by_someone_else_is_refused(pdir):
    os.chown(pdir / "py.toml", 12345, 12345)
    with pytest.raises(UsageError, match="owned by uid 12345"):
        load_profiles(str(pdir))


words = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=4)


@SETTINGS
@given(
    st.lists(st.tuples(words, st.one_of(st.none(), st.sampled_from(["x", "y"]))), max_size=4),
    words,
    st.one_of(st.none(), st.sampled_from(["r"])),
)
def test_merge_property(parts, request_list, request_pin):
    """Lists: every profile's items then the request's, first occurrence kept; scalars: the
    request's, else the first profile's that sets one."""
    profiles = {
        f"p{i}": Profile(name=f"p{i}", packages=tuple(items), nixpkgs=pin)
        for i, (items, pin) in enumerate(parts)
    }
    req = JobRequest(command=["true"], packages=request_list, nixpkgs=request_pin)
    merged = apply_profiles(req, list(profiles), profiles)
    expected = list(dict.fromkeys([*(x for items, _ in parts for x in items), *request_list]))
    assert merged.packages == expected
    first = next((pin for _, pin in parts if pin), None)
    assert merged.nixpkgs == (request_pin if request_pin is not None else first)


def test_the_documented_profile_loads(tmp_path):
    """docs/jobs-config.md's example profile is a real one (its second toml block)."""
    from tests.conftest import REPO

    text = (REPO / "docs" / "jobs-config.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]
    example = next(b for b in blocks if "description" in b)
    (tmp_path / "doc.toml").write_text(example)
    (tmp_path / "doc.toml").chmod(0o644)
    profile = load_profiles(str(tmp_path))["doc"]
    assert profile.packages == ("python3", "coreutils") and profile.limits["memory"] == 1 << 30
