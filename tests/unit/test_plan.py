"""The planner is pure: these tests run no sandbox, no nix, no I/O."""

import json

import pytest

from nixcell.errors import SpecError, UsageError
from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.plan import Plan, plan
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
BASH = "/nix/store/" + "b" * 32 + "-bash"
GLIBC = "/nix/store/" + "c" * 32 + "-glibc"
CLOSURE = Closure(ENV, (ENV, BASH, GLIBC), ("bash",), "offline package set", ("bash", "sh"))
HOST = HostFacts(uid=0, gid=0, term="xterm")
USER_HOST = HostFacts(uid=1000, gid=1000, term="xterm")


def make(**kw):
    kw.setdefault("command", ["bash", "-c", "true"])
    kw.setdefault("packages", ["bash"])
    return make_spec(**kw)


def test_plan_binds_exactly_the_closure_read_only():
    p = plan(make(), CLOSURE, HOST)
    binds = [op for op in p.mounts if op.kind == "ro-bind" and op.dest.startswith("/nix/store")]
    assert sorted(op.dest for op in binds) == sorted(CLOSURE.paths)
    assert all(op.src == op.dest for op in binds)
    assert not any(op.kind == "bind" and op.dest.startswith("/nix") for op in p.mounts)


def test_plan_namespaces_and_hardening_flags():
    args = plan(make(), CLOSURE, HOST).bwrap_args()
    for ns in ("user", "pid", "ipc", "uts", "net", "cgroup"):
        assert f"--unshare-{ns}" in args
    for flag in ("--die-with-parent", "--new-session", "--clearenv", "--disable-userns"):
        assert flag in args
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert args[args.index("--uid") + 1] == "1000"
    assert args[args.index("--hostname") + 1] == "cell"
    assert args[args.index("--seccomp") + 1] == "<fd:seccomp>"
    assert args[-4:] == ["--", "bash", "-c", "true"]


def test_root_is_remounted_read_only_last():
    p = plan(make(), CLOSURE, HOST)
    assert p.mounts[-1].kind == "remount-ro" and p.mounts[-1].dest == "/"


def test_env_is_explicit_and_user_wins():
    p = plan(make(env={"FOO": "1", "LANG": "C"}), CLOSURE, HostFacts(0, 0, "vt100", {"P": "x"}))
    assert p.env["PATH"] == f"{ENV}/bin"
    assert p.env["HOME"] == "/home/cell"
    assert p.env["TMPDIR"] == "/tmp"
    assert p.env["USER"] == "cell"
    assert p.env["TERM"] == "vt100"
    assert p.env["LANG"] == "C"
    assert p.env["FOO"] == "1"
    assert p.env["P"] == "x"


def test_workspace_default_is_fresh_tmpfs_and_workdir_binds():
    fresh = plan(make(), CLOSURE, USER_HOST)
    assert any(op.kind == "tmpfs" and op.dest == "/workspace" for op in fresh.mounts)
    bound = plan(make(workdir="/srv/proj"), CLOSURE, USER_HOST)
    assert bound.identity == "invoker" and bound.stage == ()
    assert any(
        op.kind == "bind" and op.dest == "/workspace" and op.src == "/srv/proj"
        for op in bound.mounts
    )


def test_root_run_cells_get_a_subordinate_uid_and_idmapped_binds():
    """As root, no bind comes straight from the host: each goes through the idmapped stage."""
    spec = make(workdir="/srv/proj", mounts=[{"source": "/srv/ro", "target": "/ro"}])
    p = plan(spec, CLOSURE, HostFacts(0, 0, kinds={"/srv/ro": "file"}))
    assert p.identity == "subordinate"
    assert [(s.source, s.readonly, s.is_dir) for s in p.stage] == [
        ("/srv/proj", False, True),
        ("/srv/ro", True, False),
    ]
    ops = {op.dest: (op.kind, op.src) for op in p.mounts}
    assert ops["/workspace"] == ("bind", "/run/nixcell/stage/0")
    assert ops["/ro"] == ("ro-bind", "/run/nixcell/stage/1")
    host_sources = [op.src for op in p.mounts if op.kind in ("bind", "ro-bind")]
    assert "/srv/proj" not in host_sources and "/srv/ro" not in host_sources
    assert Plan.from_json(json.loads(p.dumps())) == p


def test_disk_limit_puts_every_writable_area_in_one_scratch_tmpfs():
    p = plan(make(limits={"disk": "64M"}), CLOSURE, HOST)
    assert p.scratch == 64 << 20
    ops = {op.dest: (op.kind, op.src) for op in p.mounts}
    for name, dest in (("shm", "/dev/shm"), ("tmp", "/tmp"), ("home", "/home/cell")):
        assert ops[dest] == ("bind", f"/run/nixcell/scratch/{name}")
    assert ops["/workspace"] == ("bind", "/run/nixcell/scratch/workspace")
    # no writable tmpfs of bwrap's own is left unsized, and /dev itself is read-only
    assert not [op for op in p.mounts if op.kind == "tmpfs" and op.size is None]
    assert ("remount-ro", "/dev") in [(op.kind, op.dest) for op in p.mounts]
    unlimited = plan(make(), CLOSURE, HOST)
    assert unlimited.scratch is None
    assert {op.dest for op in unlimited.mounts if op.kind == "tmpfs" and op.size is None} == {
        "/dev/shm",
        "/tmp",
        "/home/cell",
        "/workspace",
    }


@pytest.mark.parametrize(
    "fields",
    [
        {"workdir": "/srv/proj"},
        {"mounts": [{"source": "/srv/out", "target": "/out", "writable": True}]},
    ],
)
def test_disk_limit_refuses_a_writable_host_directory(fields):
    with pytest.raises(UsageError, match="--disk cannot bound"):
        plan(make(limits={"disk": "64M"}, **fields), CLOSURE, HOST)
    ro = make(limits={"disk": "64M"}, mounts=[{"source": "/srv/out", "target": "/out"}])
    assert plan(ro, CLOSURE, HOST).limits.disk == 64 << 20


def test_disk_limit_is_refused_with_nested_sandbox():
    """A nested sandbox can mount a tmpfs of its own: --disk could not hold; say so."""
    spec = make(limits={"disk": "64M"}, hardening_profiles=["nested-sandbox"])
    with pytest.raises(UsageError, match="nested-sandbox"):
        plan(spec, CLOSURE, HOST)


def test_proc_is_covered_unless_nested_sandbox():
    facts = {"/proc/sys": "dir", "/proc/kcore": "file", "/proc/acpi": "dir", "/proc/keys": "file"}
    host = HostFacts(0, 0, proc_entries=facts)
    ops = [(op.kind, op.dest, op.src) for op in plan(make(), CLOSURE, host).mounts]
    assert ("ro-bind", "/proc/sys", "/proc/sys") in ops
    assert ("ro-bind", "/proc/kcore", "/dev/null") in ops
    assert ("ro-bind", "/proc/keys", "/dev/null") in ops
    assert ("tmpfs", "/proc/acpi", None) in ops and ("remount-ro", "/proc/acpi", None) in ops
    assert ops.index(("proc", "/proc", None)) < ops.index(("ro-bind", "/proc/sys", "/proc/sys"))
    nested = plan(make(hardening_profiles=["nested-sandbox"]), CLOSURE, host)
    assert not [op for op in nested.mounts if op.dest.startswith("/proc/")]


def test_stale_plan_format_is_refused():
    data = json.loads(plan(make(), CLOSURE, HOST).dumps())
    data["format"] = 1
    with pytest.raises(ValueError):
        Plan.from_json(data)
    del data["format"]
    with pytest.raises(ValueError):
        Plan.from_json(data)


def test_user_mounts_and_hide():
    spec = make(
        mounts=[
            {"source": "/srv/data", "target": "/data"},
            {"source": "/srv/out", "target": "/out", "writable": True},
        ],
        hide=["/data/secret", "/srv/out/key.pem"],
    )
    host = HostFacts(1000, 1000, kinds={"/data/secret": "dir", "/srv/out/key.pem": "file"})
    p = plan(spec, CLOSURE, host)
    ops = [(op.kind, op.dest, op.src) for op in p.mounts]
    assert ("ro-bind", "/data", "/srv/data") in ops
    assert ("bind", "/out", "/srv/out") in ops
    assert ("tmpfs", "/data/secret", None) in ops
    assert ("ro-bind", "/out/key.pem", "/dev/null") in ops
    # hides come after the mounts they cover
    kinds = [op.dest for op in p.mounts]
    assert kinds.index("/out/key.pem") > kinds.index("/out")


def test_standard_links_only_when_closure_has_programs():
    p = plan(make(), CLOSURE, HOST)
    links = {op.dest: op.src for op in p.mounts if op.kind == "symlink"}
    assert links == {"/bin/sh": f"{ENV}/bin/sh", "/bin/bash": f"{ENV}/bin/bash"}
    bare = Closure(ENV, (ENV, GLIBC), ("jq",), "", ("jq",))
    assert not [op for op in plan(make(), bare, HOST).mounts if op.kind == "symlink"]


def test_nested_sandbox_profile_drops_disable_userns():
    p = plan(make(hardening_profiles=["nested-sandbox"]), CLOSURE, HOST)
    assert "--disable-userns" not in p.bwrap_args()
    assert p.seccomp_profiles == ("nested-sandbox",)


def test_plan_json_round_trip_and_fd_rendering():
    p = plan(make(limits={"memory": "256M", "timeout": "30s", "pids": 64}), CLOSURE, HOST)
    data = json.loads(p.dumps())
    assert data["limits"]["memory"] == 256 << 20
    assert data["bwrap_args"] == p.bwrap_args()
    again = Plan.from_json(data)
    assert again == p
    fds = {name: 10 + i for i, name in enumerate(p.fd_names())}
    rendered = p.bwrap_args(fds)
    assert not any(a.startswith("<fd:") for a in rendered)
    assert rendered[rendered.index("--seccomp") + 1] == str(fds["seccomp"])


def test_plan_is_deterministic():
    assert plan(make(), CLOSURE, HOST) == plan(make(), CLOSURE, HOST)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"packages": []}, "-p/--package: needs at least one"),
        ({"command": []}, "COMMAND: needs at least one"),
        ({"env": {"1BAD": "x"}}, "1BAD"),
        ({"mounts": [{"source": "relative", "target": "/x"}]}, "absolute"),
        ({"mounts": [{"source": "/a", "target": "/proc/x"}]}, "/proc"),
        ({"mounts": [{"source": "/a", "target": "/nix/store"}]}, "/nix"),
        ({"mounts": [{"source": "/a", "target": "/workspace"}]}, "/workspace"),
        ({"limits": {"memory": "1K"}}, "memory"),
        ({"limits": {"pids": 0}}, "pids"),
        ({"cwd": "rel"}, "absolute"),
    ],
)
def test_bad_specs_give_one_line_errors(fields, needle):
    with pytest.raises(SpecError) as info:
        make(**fields)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_sizes_and_profiles_are_usage_errors():
    with pytest.raises(UsageError, match="--memory"):
        make(limits={"memory": "lots"})
    with pytest.raises(UsageError, match="nested-sandbox"):
        make(hardening_profiles=["no-such-profile"])


def test_shell_builtins_run_through_the_closure_shell():
    p = plan(make(command=["echo", "hi"]), CLOSURE, HOST)
    assert p.command == (f"{ENV}/bin/bash", "-c", '"$@"', "echo", "echo", "hi")
    # a real program of that name wins, and so does an explicit path
    with_echo = Closure(ENV, CLOSURE.paths, ("coreutils",), "", ("bash", "echo"))
    assert plan(make(command=["echo", "hi"]), with_echo, HOST).command == ("echo", "hi")
    assert plan(make(command=["/bin/echo"]), CLOSURE, HOST).command == ("/bin/echo",)
    # no shell in the closure: left alone (the runner reports it as not found)
    no_shell = Closure(ENV, CLOSURE.paths, ("jq",), "", ("jq",))
    assert plan(make(command=["echo", "hi"]), no_shell, HOST).command == ("echo", "hi")


def test_with_command_swaps_only_the_command():
    p = plan(make(), CLOSURE, HOST)
    q = p.with_command(["exit", "3"])
    assert q.command == (f"{ENV}/bin/bash", "-c", '"$@"', "exit", "exit", "3")
    assert q.mounts == p.mounts and q.env == p.env


NET_HOST = HostFacts(uid=0, gid=0, term="xterm", ca_pem="-----BEGIN CERTIFICATE-----\nX\n")


def test_network_plan_leaves_the_namespace_to_the_executor_and_sets_proxy_env():
    p = plan(make(network={"allow_hosts": ["api.github.com"]}), CLOSURE, NET_HOST)
    args = p.bwrap_args()
    assert "--unshare-net" not in args
    for ns in ("user", "pid", "ipc", "uts", "cgroup"):
        assert f"--unshare-{ns}" in args
    assert p.network is not None and p.network["port"] == 3128
    assert p.network["allow_hosts"] == ["api.github.com"]
    for name in ("HTTP_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        assert p.env[name] == "http://127.0.0.1:3128"
    assert p.env["NODE_USE_ENV_PROXY"] == "1"
    assert p.env["NO_PROXY"] == "localhost,127.0.0.1,::1"
    ca = [op for op in p.mounts if op.dest == "/etc/ssl/certs/ca-certificates.crt"]
    assert len(ca) == 1 and ca[0].kind == "data" and ca[0].data == NET_HOST.ca_pem
    assert p.env["SSL_CERT_FILE"] == p.env["NODE_EXTRA_CA_CERTS"] == ca[0].dest
    assert p.mounts[-1].kind == "remount-ro"
    assert Plan.from_json(json.loads(p.dumps())) == p


def test_loopback_cidr_takes_loopback_out_of_no_proxy():
    net = {"allow_hosts": ["up.test"], "allow_cidrs": ["127.0.0.1/32"]}
    p = plan(make(network=net), CLOSURE, NET_HOST)
    assert p.env["NO_PROXY"] == ""


def test_no_network_plan_has_no_proxy_env_and_unshares_net():
    p = plan(make(), CLOSURE, HOST)
    assert p.network is None and "--unshare-net" in p.bwrap_args()
    assert not any("proxy" in k.lower() for k in p.env)


@pytest.mark.parametrize(
    "net, message",
    [
        ({}, "--allow-host, --allow-cidr, --policy or --learn"),
        ({"allow_hosts": ["a b"]}, "a b"),
        ({"allow_hosts": ["x.com:99999"]}, "x.com:99999"),
        ({"allow_cidrs": ["10.0.0.0/33"]}, "10.0.0.0/33"),
        ({"allow_hosts": ["x.com"], "policy_files": ["relative.toml"]}, "absolute"),
    ],
)
def test_bad_network_flags_are_one_line_errors(net, message):
    with pytest.raises(SpecError) as err:
        make(network=net)
    assert message in str(err.value) and "\n" not in str(err.value)
