"""Trusted state: where caches live, what makes an entry trusted, what a loaded entry may say."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell import bpfcheck, sealed
from nixcell.errors import NixError, StateError
from nixcell.fsio import private_dir
from nixcell.nix.closure import Closure

H = "0123456789abcdfghijklmnpqrsvwxyz"[:32]
GOOD = f"/nix/store/{H}-bash-5.2"


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    home = tmp_path / "h"
    monkeypatch.setenv("NIXCELL_HOME", str(home))
    sealed._checked_roots.clear()
    yield home
    sealed._checked_roots.clear()


# -- private_dir ------------------------------------------------------------------------------

UNSAFE = {
    "the dir is group-writable": lambda d: (
        d.mkdir(parents=True),
        d.chmod(0o770),
        os.chown(d, -1, 4242),  # a group that is not the user's private group
    ),
    "a parent is group-writable": lambda d: (
        d.parent.mkdir(parents=True),
        d.parent.chmod(0o775),
        os.chown(d.parent, -1, 4242),
    ),
    "the dir is world-writable": lambda d: (d.mkdir(parents=True), d.chmod(0o777)),
    "the dir is someone else's": lambda d: (d.mkdir(parents=True), os.chown(d, 4242, 4242)),
    "a parent is world-writable, not sticky": lambda d: (
        d.parent.mkdir(parents=True),
        d.parent.chmod(0o777),
    ),
    "a parent is someone else's": lambda d: (
        d.parent.mkdir(parents=True),
        os.chown(d.parent, 4242, 0),
    ),
    "a symlink into a world-writable dir": lambda d: (
        d.parent.mkdir(parents=True),
        (d.parent / "open").mkdir(),
        (d.parent / "open").chmod(0o777),
        (d.parent / "open" / "x").mkdir(),
        os.symlink(d.parent / "open" / "x", d),
    ),
    "a file where the dir should be": lambda d: (d.parent.mkdir(parents=True), d.write_text("")),
}


@pytest.mark.parametrize("case", list(UNSAFE), ids=list(UNSAFE))
def test_private_dir_refuses_what_others_could_change(tmp_path, case):
    if os.geteuid() != 0 and ("someone else" in case or "group" in case):
        pytest.skip("chown needs root")
    target = tmp_path / "root" / "cache"
    UNSAFE[case](target)
    with pytest.raises(StateError) as info:
        private_dir(target)
    assert "\n" not in str(info.value)


def test_a_user_private_group_may_write(tmp_path):
    """umask 002 with a group named after the user (Debian's user private groups) is fine."""
    import grp
    import pwd

    me = pwd.getpwuid(os.geteuid()).pw_name
    try:
        group = grp.getgrnam(me)
    except KeyError:
        pytest.skip(f"no group named {me}")
    if group.gr_mem and set(group.gr_mem) != {me}:
        pytest.skip(f"group {me} has other members")
    parent = tmp_path / "p"
    parent.mkdir()
    os.chown(parent, -1, group.gr_gid)
    parent.chmod(0o775)
    private_dir(parent / "cache")


def test_private_dir_creates_0700_and_tightens_a_readable_one(tmp_path):
    fresh = tmp_path / "a" / "b" / "c"
    private_dir(fresh)
    for d in (fresh, fresh.parent, fresh.parent.parent):
        assert d.stat().st_mode & 0o777 == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    private_dir(old)
    assert old.stat().st_mode & 0o777 == 0o700


def test_pure_caches_are_skipped_not_fatal_when_their_dir_is_unsafe(home):
    (home / "cache" / "plans").mkdir(parents=True)
    (home / "cache" / "plans").chmod(0o777)
    assert sealed.cache_file("plans", "x.json") is None
    assert sealed.cache_file("seccomp", "x.bpf") is not None


# -- sealed entries ---------------------------------------------------------------------------


def test_sealed_entries_verify_only_for_their_kind_name_and_key(home):
    blob = sealed.seal("seccomp", "a.bpf", b"program")
    assert sealed.unseal("seccomp", "a.bpf", blob) == b"program"
    assert sealed.unseal("seccomp", "b.bpf", blob) is None  # copied to another name
    assert sealed.unseal("plans", "a.bpf", blob) is None  # another cache's entry
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    assert sealed.unseal("seccomp", "a.bpf", flipped) is None  # payload changed
    assert sealed.unseal("seccomp", "a.bpf", b"program") is None  # written by someone else
    assert sealed.unseal("seccomp", "a.bpf", b"") is None
    sealed.forget_key()  # what gc does: every old entry is void
    assert sealed.unseal("seccomp", "a.bpf", blob) is None
    key = sealed.key_path()
    assert key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_can_read_is_refused(home, mode):
    sealed.seal("x", "y", b"")
    sealed._checked_roots.clear()
    sealed.key_path().chmod(mode)
    with pytest.raises(StateError):
        sealed.seal("x", "y", b"")


def test_a_symlinked_key_is_refused(home, tmp_path):
    sealed.seal("x", "y", b"")
    sealed._checked_roots.clear()
    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    sealed.key_path().unlink()
    os.symlink(other, sealed.key_path())
    with pytest.raises(StateError):
        sealed.seal("x", "y", b"")


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=40))
def test_no_unsealed_or_altered_bytes_ever_load(blob, payload):
    assert sealed.unseal("resolve", "k.json", blob) is None or blob.startswith(sealed.MAGIC)
    good = sealed.seal("resolve", "k.json", payload)
    for i in range(len(sealed.MAGIC), len(good)):  # any one byte changed: refused
        bad = good[:i] + bytes([good[i] ^ 0x40]) + good[i + 1 :]
        assert sealed.unseal("resolve", "k.json", bad) is None


def test_a_key_rotated_by_another_process_is_picked_up(home):
    """A long-running nixcell (MCP server, job daemon) must not go on sealing with a key that
    another process's `nixcell gc` deleted: its entries would verify for nobody else."""
    before = sealed.seal("seccomp", "a.bpf", b"program")  # this process now holds the key
    gc = subprocess.run(
        [sys.executable, "-c", "from nixcell import sealed; sealed.forget_key()"],
        env=os.environ.copy(), check=True,
    )  # fmt: skip
    assert gc.returncode == 0 and not sealed.key_path().exists()
    assert sealed.unseal("seccomp", "a.bpf", before) is None  # old entries are void here too
    after = sealed.seal("seccomp", "a.bpf", b"program")  # sealed with a new key, on disk
    fresh = subprocess.run(
        [sys.executable, "-c",
         "import sys; from nixcell import sealed;"
         "sys.exit(sealed.unseal('seccomp', 'a.bpf', sys.stdin.buffer.read()) != b'program')"],
        input=after, env=os.environ.copy(),
    )  # fmt: skip
    assert fresh.returncode == 0, "another process does not verify what this one sealed"
    # the same when the key file is replaced in place by a new one (another gc, then a run)
    sealed.key_path().unlink()
    other = subprocess.run(
        [sys.executable, "-c", "from nixcell import sealed; sealed.seal('x', 'y', b'')"],
        env=os.environ.copy(), check=True,
    )  # fmt: skip
    assert other.returncode == 0
    assert sealed.unseal("seccomp", "a.bpf", after) is None
    again = sealed.seal("seccomp", "a.bpf", b"program")
    assert subprocess.run(
        [sys.executable, "-c",
         "import sys; from nixcell import sealed;"
         "sys.exit(sealed.unseal('seccomp', 'a.bpf', sys.stdin.buffer.read()) != b'program')"],
        input=again, env=os.environ.copy(),
    ).returncode == 0  # fmt: skip


# -- what a loaded closure may say ------------------------------------------------------------

BAD_CLOSURES = {
    "host /etc": ("/etc", ["/etc"]),
    "dot-dot out of the store": (GOOD, [GOOD, f"/nix/store/{H}-x/../../../etc"]),
    "dot-dot name": (GOOD, [GOOD, f"/nix/store/{H}-.."]),
    "the store itself": (GOOD, [GOOD, "/nix/store"]),
    "a subpath": (GOOD, [GOOD, f"{GOOD}/bin"]),
    "another store dir": (GOOD, [GOOD, f"/tmp/nix/store/{H}-x"]),
    "short hash": (GOOD, [GOOD, "/nix/store/abc-x"]),
    "hash outside nix base32": (GOOD, [GOOD, f"/nix/store/{'e' * 32}-x"]),
    "double slash": (GOOD, [GOOD, f"/nix//store/{H}-x"]),
    "trailing newline": (GOOD, [GOOD, f"/nix/store/{H}-x\n"]),
    "env not in paths": (f"/nix/store/{H}-other", [GOOD]),
}


@pytest.mark.parametrize("case", list(BAD_CLOSURES), ids=list(BAD_CLOSURES))
def test_a_closure_that_names_anything_but_store_paths_is_refused(case):
    env, paths = BAD_CLOSURES[case]
    with pytest.raises(NixError):
        Closure(env, tuple(paths)).check()


@pytest.mark.parametrize("program", ["../../bin/sh", "a/b", "", ".", ".."])
def test_a_closure_program_name_must_be_a_file_name(program):
    with pytest.raises(NixError):
        Closure(GOOD, (GOOD,), programs=(program,)).check()


def test_a_real_looking_closure_passes():
    Closure(GOOD, (GOOD, f"/nix/store/{H}-glibc-2.36"), programs=("bash", "sh")).check()


# -- what a loaded seccomp program may be -----------------------------------------------------


def _prog(*insns: tuple[int, int, int, int]) -> bytes:
    return b"".join(struct.pack("<HBBI", *i) for i in insns)


ARCH = (0x20, 0, 0, 4)
DENY = (0x06, 0, 0, 0x00050001)
ALLOW = (0x06, 0, 0, 0x7FFF0000)
BAD_PROGRAMS = {
    "empty": b"",
    "torn": _prog(ARCH, DENY)[:-3],
    "garbage": os.urandom(64),
    "allow-all": _prog(ARCH, ALLOW),
    "no arch check": _prog((0x20, 0, 0, 0), DENY),
    "jump past the end": _prog(ARCH, (0x15, 5, 0, 1), DENY),
    "unconditional jump past the end": _prog(ARCH, (0x05, 0, 0, 9), DENY),
    "no return at the end": _prog(ARCH, DENY, (0x20, 0, 0, 0)),
    "too long": _prog(ARCH, *([(0x20, 0, 0, 0)] * 4096), DENY),
}


@pytest.mark.parametrize("case", list(BAD_PROGRAMS), ids=list(BAD_PROGRAMS))
def test_insane_seccomp_programs_are_detected(case):
    assert bpfcheck.problem(BAD_PROGRAMS[case]) is not None


def test_the_filter_nixcell_builds_is_sane():
    pytest.importorskip("pyseccomp")
    from nixcell.sandbox import seccomp

    for profiles in ((), ("debugger",), ("nested-sandbox",)):
        assert bpfcheck.problem(seccomp.build_filter(profiles)) is None


# -- a writable bind must not hand the cell nixcell's own state ------------------------------


def _spec(**fields):
    from nixcell.spec import make_spec

    return make_spec(command=["true"], packages=["bash"], **fields)


def test_writable_binds_over_nixcell_state_are_refused(home, tmp_path):
    from nixcell.errors import SpecError

    link = tmp_path / "link-to-parent"
    os.symlink(tmp_path, link)
    refused = [
        {"workdir": str(tmp_path)},  # holds the whole NIXCELL_HOME
        {"workdir": str(home / "cache")},
        {"workdir": str(home / "state" / "gcroots")},  # inside it
        {"workdir": str(link)},  # the same through a symlink
        {"mounts": [{"source": str(tmp_path), "target": "/x", "writable": True}]},
        {"workdir": str(tmp_path), "hide": [str(home / "cache")]},  # state and data still open
    ]
    for fields in refused:
        with pytest.raises(SpecError) as info:
            _spec(**fields)
        assert "nixcell's own state" in str(info.value)
    allowed = [
        {"workdir": str(tmp_path / "project")},
        {"mounts": [{"source": str(tmp_path), "target": "/x", "writable": False}]},
        {"workdir": str(tmp_path), "hide": [str(home)]},
    ]
    for fields in allowed:
        _spec(**fields)
