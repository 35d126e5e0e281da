"""The gvisor backend's translation of a Plan (OCI bundle, runsc argv, seccomp), its refusals,
and the stderr filter that keeps runsc's own error off the cell's stderr: pure, no runsc."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import MountOp, plan
from nixcell.sandbox import dockerspec, gvisor, gvisorio, gvisorspec, seccomp
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
BASH = "/nix/store/" + "b" * 32 + "-bash"
CLOSURE = Closure(ENV, (ENV, BASH), ("bash", "env"), "offline package set", ("bash", "sh"))
HOST = HostFacts(
    uid=0, gid=0, term="xterm", proc_entries={"/proc/sys": "dir", "/proc/kcore": "file",
                                              "/proc/acpi": "dir"},
)  # fmt: skip
VERIFIED = gvisorspec.VERIFIED[0]


def make(**kw):
    kw.setdefault("command", ["bash", "-c", "true"])
    kw.setdefault("packages", ["bash"])
    kw.setdefault("backend", "gvisor")
    return plan(make_spec(**kw), CLOSURE, HOST)


def bundle(p, user=(4242, 4343), netns=None):
    layout = dockerspec.layout(p, user, "/top", "/run/nixcell/scratch")
    filt, refused = gvisorspec.seccomp(tuple(p.seccomp_profiles), VERIFIED)
    assert refused == [] and gvisorspec.refusals(layout) == []
    return gvisorspec.spec(p, layout, user, netns, filt)


def test_the_bundle_is_the_closure_and_the_plans_mounts_only():
    p = make(limits={"memory": "64M", "pids": 32, "cpus": 0.5})
    body = bundle(p)
    mounts = {m["destination"]: m for m in body["mounts"]}
    for path in CLOSURE.paths:  # the closure, read-only, from itself
        assert mounts[path]["source"] == path and "ro" in mounts[path]["options"]
    assert mounts["/etc/passwd"]["source"].startswith("/top/files/")
    assert mounts["/bin"]["source"].startswith("/top/links/")
    assert mounts["/proc"]["type"] == "proc"
    assert mounts["/sys"]["type"] == "tmpfs" and "ro" in mounts["/sys"]["options"]  # no sysfs
    assert "exec" not in mounts["/tmp"]["options"] and "uid=4242" in mounts["/tmp"]["options"]
    assert not any(d.startswith("/proc/") for d in mounts)  # gVisor's /proc has none of them
    dests = [m["destination"] for m in body["mounts"]]
    for i, d in enumerate(dests):  # parents before children
        assert not any(d.startswith(e.rstrip("/") + "/") for e in dests[i + 1 :]), (d, dests)
    proc = body["process"]
    assert proc["user"] == {"uid": 4242, "gid": 4343} and proc["noNewPrivileges"] is True
    assert all(v == [] for v in proc["capabilities"].values())
    assert proc["rlimits"] == [{"type": "RLIMIT_NPROC", "hard": 32, "soft": 32}]
    assert proc["args"] == ["bash", "-c", "true"] and proc["cwd"] == p.cwd
    assert body["root"] == {"path": "rootfs", "readonly": True}
    assert {"type": "network"} in body["linux"]["namespaces"]
    assert gvisorspec.host_pids(32) == gvisorspec.RUNSC_TASKS + 32 * gvisorspec.HOST_TASKS_PER_TASK
    assert gvisorspec.host_pids(None) == gvisorspec.PID_MAX


def test_a_policy_joins_nixcells_namespace_with_host_networking():
    p = make(network={"allow_hosts": ["example.test"]})
    body = bundle(p, netns="/proc/1/fd/7")
    assert {"type": "network", "path": "/proc/1/fd/7"} in body["linux"]["namespaces"]
    argv = gvisorspec.argv("/state", "/b", "nixcell-c1", True, "/b/runsc.log")
    assert argv[argv.index("--network") + 1] == "host"
    assert argv[-4:] == ["run", "--bundle", "/b", "nixcell-c1"]
    assert "--oci-seccomp" in argv and "--ignore-cgroups" in argv
    off = gvisorspec.argv("/state", "/b", "nixcell-c1", False, "/b/runsc.log")
    assert off[off.index("--network") + 1] == "none"


def test_mount_points_are_made_only_in_the_empty_root():
    body = bundle(make())
    files = {"/etc/passwd", "/etc/hosts"}
    made = dict(gvisorspec.mount_points(body, files))
    assert made["/etc/passwd"] is False and made["/proc"] is True and made["/tmp"] is True
    assert not any(p == "/dev" or p.startswith("/dev/") for p in made)  # gVisor's own /dev


@pytest.mark.parametrize("profiles", [(), ("debugger",), ("nested-sandbox",)])
def test_seccomp_keeps_every_rule_or_refuses(profiles):
    """Every rule of the plan is in the OCI filter (EPERM), or answered by the sentry itself with
    the rule's errno (verified versions only); never silently dropped."""
    filt, refused = gvisorspec.seccomp(profiles, VERIFIED)
    assert refused == []
    given_names = {n for e in filt["syscalls"] for n in e["names"]}
    for rule in seccomp.rules(seccomp.check_profiles(profiles)):
        if rule.errno == gvisorspec.EPERM:
            assert rule.syscall in given_names or rule.syscall in seccomp._COMPAT_ONLY, rule
        else:
            assert (rule.syscall, rule.errno) in gvisorspec.NATIVE, rule
    assert all(e["errnoRet"] == gvisorspec.EPERM for e in filt["syscalls"])
    packet = [e for e in filt["syscalls"] if e.get("args") == [
        {"index": 0, "op": "SCMP_CMP_EQ", "value": 17, "valueTwo": 0}]]  # fmt: skip
    assert {e["names"][0] for e in packet} == {"socket", "socketpair"}


def test_an_unverified_runsc_refuses_the_rules_it_cannot_give():
    _, refused = gvisorspec.seccomp((), "0.0~20990101.0")
    assert any("clone3 with errno 38" in r for r in refused), refused
    assert all("\n" not in r for r in refused)


def test_refusals_are_not_weakenings():
    p = make()
    by_fd = MountOp("bind", "/workspace/x", src="/home/u/x", by_fd=True)
    cases = {
        "made by fd": (by_fd,),
        "after one beneath it": (MountOp("tmpfs", "/a/b"), MountOp("tmpfs", "/a")),
        "a bind mount at /proc/self": (MountOp("bind", "/proc/self", src="/x"),),
    }
    for phrase, ops in cases.items():
        bad = dataclasses.replace(p, mounts=(*p.mounts[:-1], *ops, p.mounts[-1]))
        refused = gvisor.BACKEND.refusals(bad)
        assert any(phrase in r for r in refused), (phrase, refused)
    host_net = dataclasses.replace(p, host_network=True)
    assert any("host's network" in r for r in gvisor.BACKEND.refusals(host_net))


def run_filter(chunks: list[bytes], dropped: str | None) -> bytes:
    filt = gvisorio.StderrFilter()
    return b"".join(filt.feed(c) for c in chunks) + filt.finish(dropped)


RUNSC_LINE = "running container: starting container: failed to load /x: no such file"


def test_runsc_error_line_is_dropped_only_when_it_is_runscs():
    assert run_filter([RUNSC_LINE.encode() + b"\n"], RUNSC_LINE) == b""
    assert run_filter([b"cell says\n", RUNSC_LINE.encode() + b"\n"], RUNSC_LINE) == b"cell says\n"
    own = b"running container: mine\n"  # the cell's own line, not runsc's: delivered
    assert run_filter([own], RUNSC_LINE) == own and run_filter([own], None) == own
    assert run_filter([own, b"more\n"], RUNSC_LINE) == own + b"more\n"
    assert run_filter([b"prompt> "], None) == b"prompt> "


def test_stderr_is_delivered_at_once_unless_it_looks_like_runscs():
    filt = gvisorio.StderrFilter()
    assert filt.feed(b"progress 10%\n") == b"progress 10%\n"
    assert filt.feed(b"half a li") == b"half a li"
    assert filt.feed(b"ne\nrunn") == b"ne\n"  # could be runsc's: held
    assert filt.feed(b"ing fast\n") == b"running fast\n"


@given(st.lists(st.binary(max_size=40), max_size=12), st.sampled_from([None, RUNSC_LINE]))
def test_the_filter_never_loses_or_reorders_the_cells_bytes(chunks, dropped):
    data = b"".join(chunks)
    out = run_filter(chunks, dropped)
    if dropped is not None and data.endswith(dropped.encode() + b"\n"):
        start = len(data) - len(dropped) - 1
        if start == 0 or data[start - 1 : start] == b"\n":
            assert out == data[:start]
            return
    assert out == data


# runsc's log as this runsc wrote it when the sandbox could not set up a mount: three records,
# no newline between them (the gofer's, the sandbox's, then runsc run's)
CONCATENATED = (
    '{"msg":"error setting up FS: mounting /etc/x: read-only file system","level":"error",'
    '"time":"t1"}{"msg":"Error reading mounts file: unexpected end of JSON input\\nJSON bytes:'
    '\\n","level":"error","time":"t2"}{"msg":"debug only","level":"debug","time":"t3"}'
    '{"msg":"running container: creating container: cannot create sandbox: EOF",'
    '"level":"error","time":"t4"}\n{"msg":"a line of its own","level":"info"}\n'
)


def test_runscs_log_errors_are_read_whether_or_not_records_end_lines(tmp_path):
    from nixcell.sandbox import gvisorcell

    assert gvisorcell.log_errors(CONCATENATED) == [
        "error setting up FS: mounting /etc/x: read-only file system",
        "Error reading mounts file: unexpected end of JSON input",
        "running container: creating container: cannot create sandbox: EOF",
    ]
    log = tmp_path / "runsc.log"
    log.write_text(CONCATENATED)
    last = "running container: creating container: cannot create sandbox: EOF"
    assert gvisorcell.runsc_error(str(log)) == last
    assert gvisorcell.runsc_error(str(log), cause=True) == (
        f"{last} (first: error setting up FS: mounting /etc/x: read-only file system)"
    )
    assert gvisorcell.log_errors('not json {"level": "error"} {broken') == []
    assert gvisorcell.runsc_error(str(tmp_path / "none")) is None


def test_nested_mount_points_name_the_bind_they_lie_in():
    body = {"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/workspace", "type": "bind", "source": "/top/stage/0"},
        {"destination": "/workspace/a/b", "type": "bind", "source": "/ro"},
        {"destination": "/workspace/a/b/c", "type": "bind", "source": "/ro/f"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/tmp/x", "type": "bind", "source": "/ro"},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs"},
    ]}  # fmt: skip
    assert gvisorspec.nested_points(body, {"/workspace/a/b/c"}) == [
        ("/workspace/a/b", "/top/stage/0", "a/b", True),
        ("/workspace/a/b/c", "/ro", "c", False),
    ]
