"""Store modes with real cells through the real CLI: what /nix/store shows in each, the daemon
socket only in shared (a real nix-daemon building a derivation inside the cell), a copy refreshed
when the packages change, an isolated copy frozen and still running after its source left the
host store, and the warm path never running a stale copy."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from tests.conftest import cli

from nixcell.nix.storestamp import PATHS
from nixcell.planstore import DAEMON_SOCKET

LIST = "ls -1 /nix/store; test -e /nix/var/nix/daemon-socket/socket && echo SOCKET || true"


def _run(home: Path, *flags: str, command: str = LIST) -> subprocess.CompletedProcess[bytes]:
    return cli("run", *flags, "--", "sh", "-c", command, env={"NIXCELL_HOME": str(home)}, input=b"")


def _closure(home: Path, *flags: str) -> set[str]:
    """The closure the plan binds (--dry-run --json), as /nix/store entry names."""
    out = cli("run", "--dry-run", "--json", *flags, "--", "true", env={"NIXCELL_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    return {os.path.basename(p) for p in json.loads(out.stdout)["closure"]}


def _listing(out: subprocess.CompletedProcess[bytes]) -> set[str]:
    assert out.returncode == 0, out.stderr
    return set(out.stdout.decode().split())


def _error(out: subprocess.CompletedProcess[bytes]) -> str:
    """The one-line error a refused run ends with (after any first-run notice), no traceback."""
    assert out.returncode != 0
    err = out.stderr.decode()
    assert "Traceback" not in err and err.endswith("\n"), err
    return err.splitlines()[-1]


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def daemon(offline_set, tmp_path_factory):
    """A real nix-daemon (Debian's), started only when none runs, stopped after; no
    substituters (it would go to cache.nixos.org). Yields its log file (None: not ours)."""
    if _answers(DAEMON_SOCKET):
        yield None
        return
    if shutil.which("nix-daemon") is None:
        pytest.skip("needs nix-daemon (apt install nix-bin)")
    had_socket = os.path.lexists(DAEMON_SOCKET)
    log = tmp_path_factory.mktemp("daemon") / "daemon.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["nix-daemon", "-v", "--option", "substituters", ""], stdout=out, stderr=out
        )
    try:
        for _ in range(200):
            if _answers(DAEMON_SOCKET):
                break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        yield log
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if not had_socket:  # (nix-daemon leaves its socket file behind)
            os.unlink(DAEMON_SOCKET)


@pytest.fixture(scope="module")
def with_nix(offline_set):
    if "nix" not in offline_set.packages:
        pytest.skip("the offline set has no nix: rebuild it with `nixcell offline build`")


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


def test_closure_mode_lists_only_the_closure(home):
    flags = ("-p", "coreutils")
    closure = _closure(home, *flags)
    assert _listing(_run(home, *flags)) == closure


def test_shared_mode_without_a_daemon_is_one_line(home):
    if _answers(DAEMON_SOCKET):
        pytest.skip("a Nix daemon runs on this host")
    out = _run(home, "--store", "shared", "-p", "coreutils")
    assert "needs the Nix daemon" in _error(out)


def test_readonly_mode_lists_the_whole_store_and_no_socket(home, daemon):
    flags = ("--store", "readonly", "-p", "coreutils")
    closure = _closure(home, *flags)
    seen = _listing(_run(home, *flags))
    others = set(os.listdir("/nix/store")) - closure - {".links"}
    assert closure < seen and others & seen, "other store paths are visible"
    assert "SOCKET" not in seen  # (a daemon runs: readonly still has no socket)
    out = _run(home, *flags, command="touch /nix/store/x")
    assert out.returncode != 0 and b"Read-only file system" in out.stderr


def test_shared_mode_builds_through_the_daemon(home, daemon, with_nix, tmp_path):
    busybox = next(p for p in os.listdir("/nix/store") if p.endswith("-busybox-1.35.0"))
    marker = os.urandom(6).hex()  # a derivation never built before: the daemon really builds
    expr = tmp_path / "drv.nix"
    expr.write_text(
        f'derivation {{ name = "nixcell-shared-{marker}"; system = builtins.currentSystem; '
        f'builder = "/nix/store/{busybox}/bin/busybox"; '
        f'args = [ "sh" "-c" "echo {marker} > $out" ]; }}\n'
    )
    flags = ("--store", "shared", "-p", "nix", "-p", "coreutils", "--ro-bind", f"{expr}:/t.nix")
    seen = _listing(_run(home, *flags))
    assert "SOCKET" in seen and busybox in seen
    script = (
        f"nix-store -q --hash /nix/store/{busybox} && "
        'out=$(nix-build --no-out-link /t.nix) && echo "OUT=$out" && cat "$out"'
    )
    out = _run(home, *flags, command=script)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert text.startswith("sha256:") and marker in text.splitlines()[-1]
    built = next(line[4:] for line in text.splitlines() if line.startswith("OUT="))
    assert os.path.isfile(built)  # in the host's store: the daemon built it there
    if daemon is not None:  # the daemon saw the cell's own host uid, never root
        # (nixcell's own check that the daemon answers connects as the invoking user)
        log = daemon.read_text()
        users = [int(u) for u in re.findall(r"accepted connection from pid \d+, user (\d+)", log)]
        assert users, log
        if os.getuid() == 0:  # a root-run cell: its own subordinate uid
            from nixcell.sandbox.identity import subordinate_range

            assert all(u in subordinate_range() for u in users), log
    subprocess.run(["nix-store", "--delete", built], capture_output=True)


def test_copy_mode_is_refreshed_when_the_packages_change(home, tmp_path):
    store = tmp_path / "store"
    base = ("--store", "copy", "--store-dir", str(store), "-p", "coreutils")
    one = _closure(home, *base)
    assert _listing(_run(home, *base)) == one
    assert set(os.listdir(store / PATHS)) == one
    two = _closure(home, *base, "-p", "gnugrep")
    seen = _listing(_run(home, *base, "-p", "gnugrep"))
    assert seen == two and one - two  # the old env was removed, gnugrep copied
    assert set(os.listdir(store / PATHS)) == two
    manifest = json.loads((store / "manifest.json").read_text())
    assert {os.path.basename(p) for p in manifest["closure"]["paths"]} == two
    assert _listing(_run(home, *base)) == one  # and back
    assert not any(e.endswith(".drv") for e in os.listdir(store / PATHS))  # runtime paths only
    entry = sorted(one)[0]
    out = _run(home, *base, command=f"touch /nix/store/x || rm -rf /nix/store/{entry}/*")
    assert out.returncode != 0 and b"Read-only file system" in out.stderr
    assert _listing(_run(home, *base)) == one  # untouched


def _own_package(tmp_path: Path) -> str:
    """A store path made here (nix-store --add): a program nobody else's closure holds."""
    pkg = tmp_path / f"own-{os.urandom(4).hex()}"
    (pkg / "bin").mkdir(parents=True)
    tool = pkg / "bin" / "own-tool"
    tool.write_text(f"#!/bin/sh\necho own-tool {pkg.name}\n")
    tool.chmod(0o755)
    added = subprocess.run(["nix-store", "--add", str(pkg)], capture_output=True, text=True)
    assert added.returncode == 0, added.stderr
    return added.stdout.strip()


def test_isolated_mode_is_frozen_and_outlives_its_source(home, tmp_path):
    own = _own_package(tmp_path)
    store = tmp_path / "store"
    flags = ("--store", "isolated", "--store-dir", str(store), "-p", "dash", "-p", own)
    first = _run(home, *flags, command=f"own-tool; {LIST}")
    assert first.returncode == 0, first.stderr
    assert f"own-tool {os.path.basename(own)[33:]}" in first.stdout.decode()
    entries = set(os.listdir(store / PATHS))
    assert os.path.basename(own) in entries
    # the source leaves the host store: its GC roots (the resolution's) go, then the paths
    shutil.rmtree(home / "state", ignore_errors=True)
    shutil.rmtree(home / "cache", ignore_errors=True)
    referrers = subprocess.run(
        ["nix-store", "-q", "--referrers-closure", own], capture_output=True, text=True
    ).stdout.split()  # own, the env and its .drv
    outputs = [p for p in referrers if p != own and not p.endswith(".drv")]
    drvs = [p for p in referrers if p.endswith(".drv")]
    for path in (*outputs, *drvs, own):  # (an output keeps its .drv alive, a .drv its inputs)
        gone = subprocess.run(["nix-store", "--delete", path], capture_output=True, text=True)
        assert gone.returncode == 0, gone.stderr
    assert not os.path.exists(own)
    again = _run(home, *flags, command=f"own-tool; {LIST}")
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout  # the same cell, from the frozen copy, without nix
    err = _error(_run(home, *flags, "-p", "coreutils"))
    assert "frozen" in err and f"delete {store}" in err, err


def test_a_store_dir_the_cell_could_write_is_refused(home, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    flags = ("--workdir", str(work), "--store", "copy", "--store-dir", str(work / "store"))
    assert "which the cell may write" in _error(_run(home, *flags, "-p", "coreutils"))
    (work / "store").mkdir()
    elsewhere = _run(home, *flags, "--ro-bind", f"{work / 'store'}:/ro", "-p", "coreutils")
    assert "which the cell may write" in _error(elsewhere)  # /workspace/store is still writable
    over = ("--ro-bind", f"{work / 'store'}:/workspace/store", "-p", "coreutils")
    ok = _run(home, *flags, *over, command="touch /workspace/store/x")  # covered where it shows
    assert ok.returncode != 0 and b"Read-only file system" in ok.stderr, ok.stderr
    assert _listing(_run(home, *flags, *over)) == _closure(home, *flags, *over)


def _entry(home: Path) -> tuple[int, int]:
    (entry,) = (home / "cache" / "plans").iterdir()
    st = entry.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.parametrize("mode", ["copy", "isolated"])
def test_the_warm_path_never_runs_a_stale_copy(home, tmp_path, mode):
    store = tmp_path / "store"
    flags = ("--store", mode, "--store-dir", str(store), "-p", "coreutils")
    first = _listing(_run(home, *flags))
    cached = _entry(home)
    assert _listing(_run(home, *flags)) == first
    assert _entry(home) == cached, "the unchanged copy runs warm"
    victim = next(e for e in os.listdir(store / PATHS) if "coreutils" in e)
    subprocess.run(["chmod", "-R", "u+w", str(store / PATHS / victim)], check=True)
    shutil.rmtree(store / PATHS / victim)
    out = _run(home, *flags)
    if mode == "copy":  # planned again: the refresh copied it back
        assert _listing(out) == first and _entry(home) != cached
        assert victim in os.listdir(store / PATHS)
    else:  # frozen: a damaged copy is an error, never a cell without its packages
        assert "lacks" in _error(out)
    shutil.rmtree(store)  # gone: the normal path copies it again (both modes)
    assert _listing(_run(home, *flags)) == first


def test_an_ordinary_user_gets_a_copy_and_the_whole_store(user_home):
    """The invoker identity: bwrap binds the copy itself (no stage), the user owns the copy."""
    from tests.integration.test_ordinary_user import NOBODY, as_nobody

    mine = user_home / "mine"
    mine.mkdir()
    os.chown(mine, NOBODY, NOBODY)
    store = mine / "store"
    flags = ("--store", "copy", "--store-dir", str(store), "-p", "bash", "-p", "coreutils")
    out = as_nobody(user_home, "run", *flags, "--", "bash", "-c", "ls /nix/store; id -u")
    assert out.returncode == 0, out.stderr
    *listing, uid = out.stdout.decode().split()
    assert set(listing) == set(os.listdir(store / PATHS)) and uid == "1000"
    assert os.stat(store).st_uid == NOBODY and os.stat(store / "manifest.json").st_uid == NOBODY
    whole = as_nobody(user_home, "run", "--store", "readonly", *flags[4:], "--",
                      "bash", "-c", "ls /nix/store")  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    assert len(whole.stdout.split()) > len(listing)
    # fewer packages: the user's refresh removes its own read-only (0555) entries
    fewer = as_nobody(user_home, "run", *flags[:-2], "--", "bash", "-c", "echo /nix/store/*")
    assert fewer.returncode == 0, fewer.stderr
    left = {os.path.basename(p) for p in fewer.stdout.decode().split()}
    assert left == set(os.listdir(store / PATHS)) and left != set(listing)
    assert not any("coreutils" in e for e in left)


def test_shared_for_a_user_the_daemon_refuses_is_one_line(user_home, daemon):
    """Debian's daemon-socket directory is 0770 root:nix-users: nobody is not let in."""
    from tests.integration.test_ordinary_user import as_nobody

    mode = os.stat(os.path.dirname(DAEMON_SOCKET)).st_mode
    if mode & 0o005:
        pytest.skip("this host lets everyone reach the daemon")
    out = as_nobody(user_home, "run", "--store", "shared", "-p", "bash", "--", "bash", "-c", "")
    assert "Permission denied" in _error(out) and "nix-users" in _error(out)
