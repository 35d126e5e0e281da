"""A Nix root of the host's own (issue 13, "closures realised where the job runs"): REAL nix with
``--store ROOT``, REAL cells on every backend this host runs, a REAL signed binary cache on
loopback.

What a cell runs must come from the root, never from the machine's /nix/store: each test plants
a marker file in the root's copy of a store path (the machine's copy has none) and reads it
from inside the cell.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest
from tests.conftest import cli
from tests.integration.backendrig import FAST_ONLY, run_captured
from tests.integration.nixcache import make_key, offline_paths, remove_root, seeded_root

pytestmark = [pytest.mark.integration]

PACKAGES = ["bash", "coreutils"]
MARKER = "nixcell-root-marker"
# /nix/store's entries by bash itself (gVisor's runsc refuses coreutils ls's statx flags)
LIST = 'shopt -s dotglob; for f in /nix/store/*; do echo "${f##*/}"; done'


def _by_name(name: str) -> str:
    return next(p for p in offline_paths() if p.split("-", 1)[1].startswith(name + "-"))


def _closure_of(paths: list[str]) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", *paths], capture_output=True, text=True, check=True)
    return sorted(set(out.stdout.split()))


def _needed() -> list[str]:
    return _closure_of([_by_name(n) for n in ("bash", "coreutils", "busybox", "dash")])


def _plant(root: str, store_path: str) -> str:
    """A marker file in the root's copy of ``store_path`` (nix does not check contents at use)."""
    token = secrets.token_hex(8)
    where = root + store_path
    os.chmod(where, 0o755)
    Path(where, MARKER).write_text(token)
    os.chmod(Path(where, MARKER), 0o444)
    os.chmod(where, 0o555)
    return token


@pytest.fixture(scope="module")
def seeded(offline_set):
    """(root, marker token) of a root holding the closures of bash, coreutils, busybox, dash."""
    root = seeded_root(_needed())
    yield root, _plant(root, _by_name("bash"))
    remove_root(root)


def test_a_cell_runs_its_closure_from_the_nix_root(backend, seeded, monkeypatch) -> None:
    root, token = seeded
    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    bash = _by_name("bash")
    result = run_captured(f"cat {bash}/{MARKER}; echo; {LIST}", packages=PACKAGES, backend=backend)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.decode().split()
    assert lines[0] == token  # the root's file, not the machine's (which has no marker)
    env = next(name for name in lines[1:] if name.endswith("-nixcell-env"))
    assert os.path.isdir(f"{root}/nix/store/{env}")  # built in the root


@pytest.mark.parametrize("store", ["readonly", pytest.param("closure", marks=FAST_ONLY)])
def test_store_modes_show_the_roots_store_only(backend, seeded, monkeypatch, store) -> None:
    root, _ = seeded
    monkeypatch.setenv("NIXCELL_NIX_ROOT", root)
    result = run_captured(LIST, packages=PACKAGES, backend=backend, store=store)
    assert result.exit_code == 0, result.stderr
    seen = set(result.stdout.decode().split()) - {".", ".."}
    in_root = {n for n in os.listdir(f"{root}/nix/store") if not n.startswith(".")}
    assert seen - {".links"} <= in_root
    if store == "readonly":
        assert seen - {".links"} == in_root
    machine_only = {n for n in os.listdir("/nix/store") if not n.startswith(".")} - in_root
    assert machine_only and not (seen & machine_only)


@pytest.mark.parametrize("store", ["shared", "copy", "isolated"])
def test_store_modes_that_need_the_machines_store_are_refused(seeded, tmp_path, store) -> None:
    root, _ = seeded
    args = ["run", "--store", store, "-p", "bash", "--", "bash", "-c", "echo ran"]
    if store != "shared":
        args[3:3] = ["--store-dir", str(tmp_path / "copy")]
    proc = cli(*args, env={"NIXCELL_NIX_ROOT": root})
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"ran" not in proc.stdout and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "Nix root" in err, err  # (before any build)


def test_a_package_missing_from_the_root_is_refused_in_one_line(seeded) -> None:
    root, _ = seeded
    proc = cli("run", "-p", "gawk", "--", "gawk", "BEGIN{print 1}", env={"NIXCELL_NIX_ROOT": root})
    err = proc.stderr.decode()
    assert proc.returncode != 0 and proc.stdout == b""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "not in the Nix root" in err and _by_name("gawk") in err, err


def test_a_store_path_the_root_never_registered_is_refused(seeded) -> None:
    """A directory that looks like a store path but nix does not know: never a closure."""
    root, _ = seeded
    fake = f"/nix/store/{'0' * 32}-planted"
    os.makedirs(root + fake + "/bin")
    Path(root + fake + "/bin/planted").write_text("#!/bin/sh\necho planted\n")
    proc = cli("run", "-p", fake, "-p", "bash", "--", "planted", env={"NIXCELL_NIX_ROOT": root})
    assert proc.returncode != 0 and b"planted" not in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr.decode()


@pytest.mark.parametrize(
    "value,why",
    [
        ("relative/root", "absolute"),
        ("/tmp/../tmp/x", "plain"),
        ("/", "plain"),
        ("/nix", "plain"),
        ("/tmp//x", "plain"),
        ("/tmp/x\n", "absolute"),
    ],
)
def test_a_bad_nix_root_is_refused_in_one_line(value, why) -> None:
    proc = cli("run", "-p", "bash", "--", "true", env={"NIXCELL_NIX_ROOT": value})
    err = proc.stderr.decode()
    assert proc.returncode != 0 and why in err and len(err.strip().splitlines()) == 1, err


def test_a_nix_root_others_could_change_is_refused(nix_roots, tmp_path) -> None:
    """Whoever can write the root can change what every cell runs: refused, as is a link; and
    a root a cell's uid could not reach (root-run cells are another uid)."""
    open_root = nix_roots()
    os.chmod(open_root, 0o777)
    linked = Path(nix_roots()) / "linked"
    linked.symlink_to(nix_roots())
    file_root = Path(nix_roots()) / "file"
    file_root.write_text("")
    cases = [
        (open_root, "writable by group or others"),
        (f"{linked}/sub", "symbolic link"),
        (str(file_root), "not a directory"),
    ]
    if os.geteuid() == 0:
        cases.append((str(tmp_path / "closed"), "not searchable by others"))  # (pytest's 0700)
    for value, why in cases:
        proc = cli("run", "-p", "bash", "--", "true", env={"NIXCELL_NIX_ROOT": value})
        err = proc.stderr.decode()
        assert proc.returncode != 0 and why in err and len(err.strip().splitlines()) == 1, err
    assert not (linked / "sub").exists()


def test_an_empty_root_receives_the_closure_from_a_signed_cache(nix_cache, nix_roots) -> None:
    """Nothing in the root: nix fetches every path from the cache (checking its signature),
    builds the env in the root, and nixcell verifies the closure there before the cell runs."""
    root = nix_roots()
    env = {
        "NIXCELL_NIX_ROOT": root,
        "NIXCELL_SUBSTITUTERS": nix_cache.url,
        "NIXCELL_TRUSTED_PUBLIC_KEYS": nix_cache.public_key,
    }
    proc = cli("run", "-p", "bash", "--", "bash", "-c", "echo from-root", env=env)
    assert proc.returncode == 0 and proc.stdout == b"from-root\n", proc.stderr
    bash = _by_name("bash")
    assert os.path.isdir(root + bash)
    info = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--store", root,
         "--sigs", bash], capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert nix_cache.public_key.split(":")[0] in info.stdout  # it came signed from the cache


def test_a_cache_signed_with_another_key_gives_nothing(nix_cache, nix_roots, tmp_path) -> None:
    root = nix_roots()
    _, other = make_key(tmp_path, "not-the-cache-1")
    env = {
        "NIXCELL_NIX_ROOT": root,
        "NIXCELL_SUBSTITUTERS": nix_cache.url,
        "NIXCELL_TRUSTED_PUBLIC_KEYS": other,
    }
    proc = cli("run", "-p", "bash", "--", "bash", "-c", "echo ran", env=env)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and b"ran" not in proc.stdout
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "not signed by any of the trusted public keys" in err and nix_cache.url in err, err
    assert not os.path.exists(root + _by_name("bash"))  # nothing unsigned was let in
