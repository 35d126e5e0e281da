"""Store modes and the host network in the pure planner (planstore.py): the ops of each mode,
for both identities, and the refusals (fail closed)."""

from __future__ import annotations

import pytest
from tests.unit.test_plan import CLOSURE, HOST, USER_HOST

from nixcell.errors import SpecError
from nixcell.host import HostFacts
from nixcell.plan import Plan, plan
from nixcell.planstore import DAEMON_SOCKET
from nixcell.planview import PLAN_FORMAT, compile_plan, load
from nixcell.spec import make_spec

COPY = "/srv/project/.nixcell/store/paths"


def make(**kw):
    kw.setdefault("command", ["bash", "-c", "true"])
    kw.setdefault("packages", ["bash"])
    return make_spec(**kw)


def facts(base: HostFacts, **kw) -> HostFacts:
    import dataclasses

    return dataclasses.replace(base, **kw)


def store_ops(p: Plan) -> list[tuple[str, str, str | None]]:
    return [(op.kind, op.dest, op.src) for op in p.mounts if op.dest.startswith("/nix")]


@pytest.mark.parametrize("host", [HOST, USER_HOST], ids=["root", "user"])
def test_each_mode_shows_its_store(host):
    closure = store_ops(plan(make(), CLOSURE, host))
    assert closure == [("ro-bind", p, p) for p in sorted(CLOSURE.paths)]
    readonly = plan(make(store="readonly"), CLOSURE, host)
    assert store_ops(readonly) == [("ro-bind", "/nix/store", "/nix/store")]
    assert "NIX_REMOTE" not in readonly.env
    shared = plan(make(store="shared"), CLOSURE, facts(host, daemon_socket=True))
    ops = store_ops(shared)
    assert ops[0] == ("ro-bind", "/nix/store", "/nix/store")
    assert ops[1][:2] == ("ro-bind", DAEMON_SOCKET) and shared.env["NIX_REMOTE"] == "daemon"
    assert shared.host_source(shared.mounts[[m.dest for m in shared.mounts].index(DAEMON_SOCKET)]
                              ) == DAEMON_SOCKET  # fmt: skip
    for mode in ("copy", "isolated"):
        spec = make(store=mode, store_dir="/srv/project/.nixcell/store")
        p = plan(spec, CLOSURE, facts(host, store_root=COPY, store_stamp="1:2:3"))
        ((kind, dest, src),) = store_ops(p)  # the copy alone: no host store path
        assert (kind, dest) == ("ro-bind", "/nix/store")
        assert p.host_source(next(m for m in p.mounts if m.dest == "/nix/store")) == COPY
        assert (src == COPY) == (host is USER_HOST)  # a root-run cell: through its stage
        assert p.store_stamp == "1:2:3" and p.store == mode and p.closure == CLOSURE.paths


def test_shared_without_the_daemon_is_refused():
    with pytest.raises(SpecError, match="Nix daemon"):
        plan(make(store="shared"), CLOSURE, HOST)


@pytest.mark.parametrize(
    "binds, refused",
    [
        ({"workdir": "/srv/project"}, True),
        ({"mounts": [{"source": "/srv", "target": "/srv", "writable": True}]}, True),
        ({"mounts": [{"source": "/srv/project/.nixcell/store", "target": "/s", "writable": True}]},
         True),
        # covered at its own path, but the workdir shows it at /workspace/.nixcell/store
        ({"workdir": "/srv/project", "mounts": [
            {"source": "/srv/project/.nixcell", "target": "/srv/project/.nixcell"}]}, True),
        # a project at level standard: the project at its own path, .nixcell/ read-only over it
        ({"mounts": [
            {"source": "/srv/project", "target": "/srv/project", "writable": True},
            {"source": "/srv/project/.nixcell", "target": "/srv/project/.nixcell"}]}, False),
        ({"mounts": [{"source": "/srv", "target": "/srv"}]}, False),
        ({"workdir": "/srv/other"}, False),
        ({"workdir": "/srv/proj"}, False),  # a name prefix is not a parent
        # read-only elsewhere, still writable through the workdir
        ({"workdir": "/srv/project", "mounts": [
            {"source": "/srv/project/.nixcell/store", "target": "/ro"}]}, True),
        # read-only where the workdir shows it: fine
        ({"workdir": "/srv/project", "mounts": [
            {"source": "/srv/project/.nixcell/store", "target": "/workspace/.nixcell/store"}]},
         False),
        # a part of it bound writable
        ({"mounts": [{"source": "/srv/project/.nixcell/store/paths", "target": "/p",
                      "writable": True}]}, True),
        # covered, then a part of it bound writable again below
        ({"workdir": "/srv/project", "mounts": [
            {"source": "/srv/project/.nixcell", "target": "/workspace/.nixcell"},
            {"source": "/srv/project/.nixcell/store/paths", "target": "/workspace/x",
             "writable": True}]}, True),
        # the covering bind comes first: the writable one is on top
        ({"mounts": [
            {"source": "/srv/project/.nixcell", "target": "/srv/project/.nixcell"},
            {"source": "/srv/project", "target": "/srv/project", "writable": True}]}, True),
    ],
)  # fmt: skip
def test_a_copy_the_cell_could_write_is_refused(binds, refused):
    spec = make(store="copy", store_dir="/srv/project/.nixcell/store", **binds)
    host = facts(USER_HOST, store_root=COPY, store_stamp="s",
                 kinds={m.source: "dir" for m in spec.mounts})  # fmt: skip
    if refused:
        with pytest.raises(SpecError, match="which the cell may write"):
            plan(spec, CLOSURE, host)
    else:
        plan(spec, CLOSURE, host)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"store": "copy"}, "needs a directory"),
        ({"store": "isolated"}, "needs a directory"),
        ({"store": "readonly", "store_dir": "/srv/s"}, "takes no store directory"),
        ({"store": "closure", "store_dir": "/srv/s"}, "takes no store directory"),
        ({"store": "copy", "store_dir": "relative/dir"}, "must be an absolute path"),
        ({"store": "everything"}, "'closure', 'readonly', 'shared', 'copy' or 'isolated'"),
        ({"host_network": True, "network": {"allow_hosts": ["*"]}}, "exclude each other"),
    ],
)
def test_spec_refuses_bad_store_and_network_fields(fields, message):
    with pytest.raises(SpecError, match=message):
        make(**fields)


@pytest.mark.parametrize("host", [HOST, USER_HOST], ids=["root", "user"])
def test_host_network_keeps_the_host_namespace_and_nothing_else(host):
    p = plan(make(host_network=True), CLOSURE, facts(host, resolv_conf="/run/r.conf",
                                                     host_ca="/etc/ca.pem"))  # fmt: skip
    assert "net" not in p.namespaces and p.host_network and p.network is None
    assert not any("proxy" in k.lower() for k in p.env)
    ops = {op.dest: op for op in p.mounts}
    assert (
        ops["/etc/resolv.conf"].kind == "ro-bind" and ops["/etc/resolv.conf"].src == "/run/r.conf"
    )
    assert ops["/etc/ssl/certs/ca-certificates.crt"].src == "/etc/ca.pem"
    assert p.mounts[-1].kind == "remount-ro" and p.mounts[-1].dest == "/"
    default = plan(make(), CLOSURE, host)
    assert "net" in default.namespaces and "/etc/resolv.conf" not in {
        o.dest for o in default.mounts
    }
    bare = plan(make(host_network=True), CLOSURE, host)  # a host without them: none bound
    assert "/etc/resolv.conf" not in {o.dest for o in bare.mounts}


def test_the_new_fields_survive_the_plan_cache():
    assert PLAN_FORMAT >= 7
    spec = make(store="isolated", store_dir="/srv/project/.nixcell/store", host_network=True)
    p = plan(spec, CLOSURE, facts(USER_HOST, store_root=COPY, store_stamp="9:9:9"))
    view = load(compile_plan(p), ["true"])
    assert view is not None
    assert (view.store, view.store_dir, view.store_stamp, view.host_network) == (
        "isolated", "/srv/project/.nixcell/store", "9:9:9", True)  # fmt: skip
    assert Plan.from_json(p.to_json()) == p


def test_a_cached_shared_plan_is_stale_once_the_daemon_is_gone(tmp_path):
    """A real listening socket, then the same socket file with nobody behind it."""
    import socket

    from nixcell.plan import PlanLimits
    from nixcell.plancheck import stale_reason

    path = str(tmp_path / "socket")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen()
    env = tmp_path / "env" / "bin"
    env.mkdir(parents=True)
    cached = Plan(
        command=("true",), mounts=(), env={}, cwd="/", limits=PlanLimits(), seccomp_profiles=(),
        closure=(), path_dirs=(str(env),), checked=(("daemon", path, "file"),), store="shared",
    )  # fmt: skip
    try:
        assert stale_reason(cached) is None
    finally:
        server.close()
    assert "does not answer" in stale_reason(cached)
