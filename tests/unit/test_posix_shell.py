"""/bin/sh in every cell, PYTHONPATH from the closure, and the caches that must keep them apart
(pure: no cell, no nix; tests/integration/test_posix_cell.py runs the real programs)."""

from __future__ import annotations

import os

import pytest

from nixcell.errors import NixError
from nixcell.host import HostFacts
from nixcell.nix.closure import Closure
from nixcell.nix.offline.setfile import render_set_nix
from nixcell.nix.pins import PackageSource
from nixcell.nix.resolve import cache_key, package_expr
from nixcell.plan import Plan, plan
from nixcell.spec import make_spec

ENV = "/nix/store/" + "a" * 32 + "-nixcell-env"
GLIBC = "/nix/store/" + "c" * 32 + "-glibc"
HOST = HostFacts(uid=1000, gid=1000, term="xterm")


def spec(packages=("python3",), **kw):
    kw.setdefault("command", ["python3"])
    return make_spec(packages=list(packages), **kw)


def closure(*programs, sites=()):
    return Closure(ENV, (ENV, GLIBC), (), "offline package set", programs, tuple(sites))


@pytest.mark.parametrize(
    ("packages", "sh", "resolved"),
    [
        (["python3"], True, ["python3", "dash"]),
        (["nodejs", "coreutils"], True, ["nodejs", "coreutils", "dash"]),
        (["git"], True, ["git", "dash"]),
        (["python3"], False, ["python3"]),
        (["bash"], True, ["bash"]),  # bash brings its sh
        (["busybox", "jq"], True, ["busybox", "jq"]),
        (["bashInteractive"], True, ["bashInteractive"]),
        (["dash"], True, ["dash"]),  # asked for: not twice
        (["nixpkgs#bash"], True, ["nixpkgs#bash", "dash"]),  # not known to bring one
    ],
)
def test_closure_packages(packages, sh, resolved):
    assert spec(packages, sh=sh).closure_packages() == resolved


def test_with_and_without_sh_never_share_a_resolution():
    source = PackageSource("offline", "(import /x)", "offline:1", "offline package set")
    keys = {
        sh: cache_key(source, [package_expr(p)[2] for p in spec(sh=sh).closure_packages()])
        for sh in (True, False)
    }
    assert keys[True] != keys[False]


@pytest.mark.parametrize(
    ("programs", "bin_sh", "shell", "path_extra", "shell_env"),
    [
        (("python3", "dash"), "dash", "dash", ("/bin",), "/bin/sh"),
        (("bash", "sh", "dash"), "sh", "bash", (), f"{ENV}/bin/bash"),
        (("busybox", "sh", "dash"), "sh", "sh", (), "/bin/sh"),
        (("bash",), "bash", "bash", ("/bin",), f"{ENV}/bin/bash"),
        (("python3",), None, None, (), None),  # --no-sh and no shell: none of it
    ],
)
def test_bin_sh_shell_path_and_shell_env(programs, bin_sh, shell, path_extra, shell_env):
    p = plan(spec(), closure(*programs), HOST)
    links = {op.dest: op.src for op in p.mounts if op.kind == "symlink"}
    assert links.get("/bin/sh") == (f"{ENV}/bin/{bin_sh}" if bin_sh else None)
    assert p.shell == (f"{ENV}/bin/{shell}" if shell else None)
    assert p.path_dirs == (f"{ENV}/bin", *path_extra)
    assert p.env["PATH"] == ":".join(p.path_dirs)
    assert p.env.get("SHELL") == shell_env


def test_builtins_go_through_dash_when_it_is_the_only_shell():
    p = plan(spec(command=["echo", "hi"]), closure("python3", "dash"), HOST)
    assert p.command == (f"{ENV}/bin/dash", "-c", '"$@"', "echo", "echo", "hi")


def test_names_go_to_dns_so_an_attempt_is_counted():
    p = plan(spec(), closure("python3", "dash"), HOST)
    nss = next(op.data for op in p.mounts if op.dest == "/etc/nsswitch.conf")
    assert "hosts: files dns\n" in nss
    assert not any(op.dest == "/etc/resolv.conf" for op in p.mounts)  # queries stay on lo


def test_pythonpath_from_the_closure_and_the_user_wins():
    site = f"{ENV}/lib/python3.11/site-packages"
    p = plan(spec(), closure("python3", "dash", sites=[site]), HOST)
    assert p.env["PYTHONPATH"] == site
    assert "PYTHONPATH" not in plan(spec(), closure("python3", "dash"), HOST).env
    mine = plan(spec(env={"PYTHONPATH": "/workspace/lib"}), closure(sites=[site]), HOST)
    assert mine.env["PYTHONPATH"] == "/workspace/lib"


@pytest.mark.parametrize(
    "site",
    [
        "/etc",
        f"{ENV}/lib/python3.11/site-packages/../../../../../etc",
        f"{GLIBC}/lib/python3.11/site-packages",  # not the env's
        f"{ENV}/lib/python3.11",
        f"{ENV}/lib/python3.x/site-packages",
        f"{ENV}/lib/python3.11/site-packages:/etc",
    ],
)
def test_a_cached_closure_with_a_stray_site_packages_is_refused(site):
    with pytest.raises(NixError, match="site-packages"):
        closure(sites=[site]).check()


def test_closure_json_round_trip_keeps_site_packages():
    c = closure("python3", sites=[f"{ENV}/lib/python3.11/site-packages"])
    assert Closure.from_json(c.to_json()) == c
    old = c.to_json()
    del old["site_packages"]  # an entry written before the field existed
    assert Closure.from_json(old).site_packages == ()


def test_plan_json_round_trip_with_dash():
    p = plan(spec(), closure("python3", "dash"), HOST)
    assert Plan.from_json(p.to_json()) == p


def test_set_nix_nests_dotted_attrs():
    store = "/nix/store/" + "d" * 32
    text = render_set_nix(
        "x86_64-linux",
        {
            "busybox": f"{store}-busybox",
            "python3Packages.numpy": f"{store}-numpy",
            "python3Packages.pyyaml": f"{store}-pyyaml",
            "python311Packages.pyyaml": f"{store}-pyyaml",
        },
    )
    assert '"python3Packages" = {' in text and '"python311Packages" = {' in text
    assert f'"numpy" = builtins.storePath "{store}-numpy";' in text
    with pytest.raises(ValueError, match="scope"):
        render_set_nix("x", {"busybox": store, "a": store, "a.b": store})
    with pytest.raises(ValueError, match="scope"):
        render_set_nix("x", {"busybox": store, "a.b": store, "a": store + "x"})


@pytest.mark.parametrize(
    ("mounts", "dev_null"),
    [
        ([], True),
        ([{"source": "/srv/ca", "target": "/etc/ssl"}], False),  # the user's own certificates
        ([{"source": "/srv/ca.pem", "target": "/etc/ssl/certs/ca-certificates.crt"}], False),
        ([{"source": "/srv/x", "target": "/etc/ssl/certs2"}], True),
    ],
)
def test_a_no_network_cell_gets_an_empty_ca_bundle_unless_it_binds_one(mounts, dev_null):
    p = plan(spec(mounts=mounts), closure("python3", "dash"), HOST)
    ca = "/etc/ssl/certs/ca-certificates.crt"
    empty = [op for op in p.mounts if op.dest == ca and op.src == "/dev/null"]
    assert len(empty) == (1 if dev_null else 0)


BUSYBOX = "/nix/store/" + "b" * 32 + "-busybox-1.35.0"


@pytest.mark.parametrize(
    ("packages", "sh", "tools"),
    [
        (["python3"], True, {"env": "busybox"}),
        (["nodejs"], True, {"env": "busybox"}),
        (["bash"], True, {"env": "busybox"}),  # bash brings sh, not env
        (["python3", "coreutils"], True, {}),
        (["busybox"], True, {}),
        (["python3"], False, {}),  # --no-sh: neither /bin/sh nor /usr/bin/env
    ],
)
def test_closure_tools(packages, sh, tools):
    assert spec(packages, sh=sh).closure_tools() == tools


def test_env_tool_is_linked_alone_and_found_on_path():
    c = Closure(ENV, (ENV, GLIBC, BUSYBOX), (), "", ("python3", "dash"),
                tools={"env": f"{BUSYBOX}/bin/env"})  # fmt: skip
    c.check()
    p = plan(spec(), c, HOST)
    links = {op.dest: op.src for op in p.mounts if op.kind == "symlink"}
    assert links["/usr/bin/env"] == f"{BUSYBOX}/bin/env"
    assert p.path_dirs == (f"{ENV}/bin", "/bin", "/usr/bin")
    own = plan(spec(), Closure(ENV, (ENV, GLIBC), (), "", ("env", "sh")), HOST)
    assert {op.dest: op.src for op in own.mounts if op.kind == "symlink"}["/usr/bin/env"] == (
        f"{ENV}/bin/env"
    )
    assert own.path_dirs == (f"{ENV}/bin",)
    assert Closure.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("env", "/usr/bin/env"),  # not a store path
        ("env", "/nix/store/" + "d" * 32 + "-busybox/bin/env"),  # not in the closure
        ("env", f"{BUSYBOX}/bin/sh"),  # another program
        ("env", f"{BUSYBOX}/bin/../../../etc/env"),
        ("env", f"{BUSYBOX}/libexec/env"),
        ("../env", f"{BUSYBOX}/bin/../env"),
    ],
)
def test_a_cached_closure_with_a_stray_tool_is_refused(name, target):
    with pytest.raises(NixError, match="tool"):
        Closure(ENV, (ENV, GLIBC, BUSYBOX), (), "", (), tools={name: target}).check()


@pytest.mark.parametrize(
    ("programs", "shell"),
    [(("bash", "dash"), f"{ENV}/bin/bash"), (("python3", "dash"), "/bin/sh")],
)
def test_passwd_shell_is_shell(programs, shell):
    p = plan(spec(), closure(*programs), HOST)
    passwd = next(op.data for op in p.mounts if op.dest == "/etc/passwd")
    assert f"cell:x:1000:1000:cell:/home/cell:{shell}\n" in passwd and p.env["SHELL"] == shell
    host_conf = next(op.data for op in p.mounts if op.dest == "/etc/host.conf")
    assert host_conf == "multi on\n"  # localhost: both /etc/hosts lines, 127.0.0.1 and ::1


def _store(tmp_path, name):
    path = tmp_path / f"{'e' * 32}-{name}"
    (path / "bin").mkdir(parents=True)
    return path


def test_tool_program_through_either_buildenv_shape(tmp_path):
    """The offline buildEnv links each program absolutely; nixpkgs' links the whole bin/ of
    the only package that has one. Either way: the package's own bin/env (a relative link to
    busybox stays as it is)."""
    from nixcell.nix.resolve import _tool_program

    busybox = _store(tmp_path, "busybox")
    (busybox / "bin" / "busybox").write_text("")
    os.symlink("busybox", busybox / "bin" / "env")
    offline = _store(tmp_path, "tools-offline")
    os.symlink(busybox / "bin" / "env", offline / "bin" / "env")
    nixpkgs = tmp_path / f"{'f' * 32}-tools-nixpkgs"
    nixpkgs.mkdir()
    os.symlink(busybox / "bin", nixpkgs / "bin")
    for tools in (offline, nixpkgs):
        assert _tool_program(str(tools), "env") == str(busybox / "bin" / "env")
