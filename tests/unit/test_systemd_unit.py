"""The systemd backend's unit, checked at plan level: each plan feature -> the property it must
produce, and each part a unit cannot express -> a refusal (the run is then refused).

Execution is untested here, and why: this machine has no systemd as PID 1 (no
/run/systemd/system; ``systemctl is-system-running`` cannot reach a manager), so no transient
unit can be started. What runs here is everything short of that: the properties and the
``systemd-run`` argv generated from real plans, the exit-status decoding from a unit's record,
and the backend's own availability answer on this host.
"""

from __future__ import annotations

import os

import pytest

from nixcell.errors import SandboxError
from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import plan
from nixcell.sandbox import backends, seccomp, systemd, systemdunit
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
BASH = "/nix/store/" + "b" * 32 + "-bash"
GLIBC = "/nix/store/" + "c" * 32 + "-glibc"
CLOSURE = Closure(ENV, (ENV, BASH, GLIBC), ("bash",), "offline package set", ("bash", "sh"))
ROOT = HostFacts(uid=0, gid=0, term="xterm", backend="systemd")
USER = HostFacts(uid=1000, gid=1000, term="xterm", backend="systemd")
NET = HostFacts(uid=0, gid=0, term="xterm", ca_pem="-----BEGIN CERTIFICATE-----\nX\n")
HOST_ID = (1879048200, 1879048200)


def unit(host: HostFacts = ROOT, **fields: object) -> tuple[dict[str, list[str]], list[str]]:
    """The unit's properties (key -> values, in order) and refusals for a spec."""
    fields.setdefault("command", [f"{ENV}/bin/bash", "-c", "true"])
    fields.setdefault("packages", ["bash"])
    p = plan(make_spec(**fields), CLOSURE, host)
    props, refused = systemdunit.properties(p, HOST_ID, "/run/nixcell/systemd/X", "/proc/1/fd/7")
    table: dict[str, list[str]] = {}
    for key, value in props:
        table.setdefault(key, []).append(value)
    return table, refused


HARDENING = {
    "ProtectSystem": "strict",
    "PrivateDevices": "yes",
    "PrivateTmp": "yes",
    "ProtectHome": "tmpfs",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "MemoryDenyWriteExecute": "yes",
    "PrivateNetwork": "yes",
    "RestrictAddressFamilies": "AF_UNIX",
    "User": str(HOST_ID[0]),
    "Group": str(HOST_ID[1]),
    "WorkingDirectory": "/workspace",
}


def test_a_default_plan_gets_every_hardening_property_and_no_refusal():
    props, refused = unit()
    assert refused == []
    for key, value in HARDENING.items():
        assert props.get(key) == [value], key
    assert "NetworkNamespacePath" not in props
    assert props["TemporaryFileSystem"][0] == "/:ro"  # first: nothing of the host's root
    binds = props["BindReadOnlyPaths"]
    for path in CLOSURE.paths:
        assert f"{path}:{path}" in binds
    assert not any(k in props for k in ("MemoryMax", "TasksMax", "CPUQuota", "RuntimeMaxSec"))


# (spec fields, property, value it must have; None: the property must be absent)
FEATURES = [
    ({"limits": {"memory": "256M"}}, "MemoryMax", str(256 << 20)),
    ({"limits": {"memory": "256M"}}, "MemorySwapMax", "0"),
    ({"limits": {"pids": 64}}, "TasksMax", "64"),
    ({"limits": {"cpus": 1.5}}, "CPUQuota", "150%"),
    ({"limits": {"timeout": 10}}, "RuntimeMaxSec", "15"),  # the engine kills at 10: a backstop
    ({"hardening_profiles": ["jit-runtime"]}, "MemoryDenyWriteExecute", None),
    ({"hardening_profiles": ["nested-sandbox"]}, "RestrictNamespaces", None),
    ({"hardening_profiles": ["debugger"]}, "LockPersonality", "yes"),  # stricter than bwrap
    ({"env": {"FOO": "a b"}}, "WorkingDirectory", "/workspace"),
    ({"cwd": "/tmp"}, "WorkingDirectory", "/tmp"),
    ({"host_network": True}, "PrivateNetwork", None),
    ({"host_network": True}, "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
]


@pytest.mark.parametrize(("fields", "key", "value"), FEATURES)
def test_each_plan_feature_becomes_its_property(fields, key, value):
    props, refused = unit(**fields)
    assert refused == []
    if value is None:
        assert key not in props
    else:
        assert value in props[key]


def test_a_policy_network_joins_the_proxy_namespace_with_ip_sockets():
    props, refused = unit(NET, network={"allow_hosts": ["api.github.com"]})
    assert refused == []
    assert props["NetworkNamespacePath"] == ["/proc/1/fd/7"]
    assert "PrivateNetwork" not in props
    assert props["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


@pytest.mark.parametrize(
    "profiles", [[], ["jit-runtime"], ["nested-sandbox"], ["debugger"], ["debugger", "jit-runtime"]]
)
def test_the_seccomp_profiles_become_a_deny_list_and_every_conditional_rule_is_covered(profiles):
    """Every rule of nixcell's filter is either denied by name or enforced by a property;
    a new argument-testing rule in seccomp.py without a mapping here would be a refusal."""
    filt, refused = systemdunit.syscall_filter(tuple(profiles))
    assert refused == []
    assert filt.startswith("~")
    words = set(filt[1:].split())
    for rule in seccomp.rules(tuple(profiles)):
        if rule.when == ((),):
            assert rule.syscall in words or any(w.startswith(rule.syscall + ":") for w in words)
    assert "clone3:ENOSYS" in words and "openat2:ENOSYS" in words
    assert ("ptrace" in words) == ("debugger" not in profiles)
    assert ("mount" in words) == ("nested-sandbox" not in profiles)
    assert {"keyctl", "bpf", "io_uring_setup", "kexec_load", "init_module"} <= words


def test_the_deny_list_names_no_syscall_twice_and_uses_eperm_by_default():
    props, _ = unit()
    words = props["SystemCallFilter"][0][1:].split()
    names = [w.split(":")[0] for w in words]
    assert len(names) == len(set(names))
    assert props["SystemCallErrorNumber"] == ["EPERM"]


def test_the_cells_own_areas_are_tmpfs_owned_by_its_uid():
    props, _ = unit()
    tmpfs = props["TemporaryFileSystem"]
    uid, gid = HOST_ID
    assert f"/home/cell:mode=0700,uid={uid},gid={gid}" in tmpfs
    assert f"/workspace:mode=0755,uid={uid},gid={gid}" in tmpfs
    assert "/tmp:mode=1777" in tmpfs
    assert not any(t.startswith("/proc/") for t in tmpfs)  # ProcSubset=pid hides those
    assert props["ProcSubset"] == ["pid"] and props["ProtectProc"] == ["invisible"]


def test_generated_files_and_links_are_read_only_binds():
    props, _ = unit()
    binds = props["BindReadOnlyPaths"]
    etc = {b.split(":")[1]: b.split(":")[0] for b in binds if ":/etc/" in b}
    assert etc["/etc/passwd"].startswith("/run/nixcell/systemd/X/data/")
    assert f"{ENV}/bin/sh:/bin/sh" in binds  # a link's target, bound at the link's place


def test_passwd_names_the_cells_host_uid():
    p = plan(make_spec(command=["bash"], packages=["bash"]), CLOSURE, ROOT)
    files = systemdunit.data_files(p, HOST_ID)
    passwd = next(t for i, t in files.items() if p.mounts[i].dest == "/etc/passwd")
    group = next(t for i, t in files.items() if p.mounts[i].dest == "/etc/group")
    assert f"cell:x:{HOST_ID[0]}:{HOST_ID[1]}:" in passwd and "root:x:0:0:" in passwd
    assert f"cell:x:{HOST_ID[1]}:" in group


REFUSED = [
    ({"limits": {"disk": "64M"}}, ROOT, "--disk"),
    ({"workdir": "/srv/proj"}, ROOT, "idmapped bind"),
    ({"workdir": "/srv/proj"}, USER, "a bind made by fd"),
    ({"env": {"X": "a\nb"}}, ROOT, "environment variable systemd cannot carry ('X')"),
    ({"command": ["bash", "-c", "true"]}, ROOT, "absolute path"),
    ({"command": [f"{ENV}/bin/bash", "\udcff"]}, ROOT, "not text"),
]


@pytest.mark.parametrize(("fields", "host", "phrase"), REFUSED)
def test_what_a_unit_cannot_express_is_refused(fields, host, phrase):
    _, refused = unit(host, **fields)
    assert any(phrase in r for r in refused), refused


def test_a_mount_path_systemd_cannot_quote_is_refused():
    spec = make_spec(
        command=[f"{ENV}/bin/bash"], packages=["bash"],
        mounts=[{"source": "/srv/a b", "target": "/data"}],
    )  # fmt: skip
    p = plan(spec, CLOSURE, HostFacts(uid=1000, gid=1000))
    import dataclasses

    p = dataclasses.replace(p, mounts=[dataclasses.replace(m, by_fd=False) for m in p.mounts])
    _, refused = systemdunit.properties(p, HOST_ID)
    assert any("cannot quote ('/srv/a b')" in r for r in refused)


def test_the_argv_waits_pipes_and_keeps_dollars_literal():
    p = plan(make_spec(command=[f"{ENV}/bin/bash", "-c", "echo $HOME ${X}"], env={"FOO": "a b"},
                       packages=["bash"]), CLOSURE, ROOT)  # fmt: skip
    props, _ = systemdunit.properties(p, HOST_ID)
    args = systemdunit.argv(p, props, "1-ab", "nixcell cell owner 1-2")
    assert args[0] == "systemd-run"
    assert {"--wait", "--pipe", "--unit=nixcell-1-ab.service"} <= set(args)
    assert "--property=ProtectSystem=strict" in args
    assert "--setenv=FOO=a b" in args
    assert args[args.index("--") :] == ["--", f"{ENV}/bin/bash", "-c", "echo $$HOME $${X}"]


EXITS = [
    ({"Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}, 0, False),
    ({"Result": "exit-code", "ExecMainCode": "1", "ExecMainStatus": "3"}, 3, False),
    ({"Result": "signal", "ExecMainCode": "2", "ExecMainStatus": "9"}, 137, False),
    ({"Result": "core-dump", "ExecMainCode": "3", "ExecMainStatus": "11"}, 139, False),
    ({"Result": "oom-kill", "ExecMainCode": "2", "ExecMainStatus": "9"}, 137, True),
    ({"Result": "success", "ExecMainCode": "0", "ExecMainStatus": "0"}, 0, False),  # unloaded
]


@pytest.mark.parametrize(("show", "code", "oom"), EXITS)
def test_the_exit_status_comes_from_the_units_record(show, code, oom):
    ended = systemd.exit_of(show)
    assert (ended.returncode, ended.oom) == (code, oom)


def test_a_record_without_a_status_is_an_error_not_a_guess():
    with pytest.raises(SandboxError, match="without an exit status"):
        systemd.exit_of({"Result": "resources"})


def test_the_version_line_is_read():
    assert systemd.systemd_version("systemd 252 (252.39-1~deb12u2)\n+PAM") == 252
    assert systemd.systemd_version("not systemd") is None


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd runs on this host")
def test_availability_here_says_systemd_is_not_pid_1():
    found = systemd.BACKEND.availability()
    assert not found.ok and "not PID 1" in found.detail
    backends._cache.pop("systemd", None)
    assert not backends.availability("systemd").ok
