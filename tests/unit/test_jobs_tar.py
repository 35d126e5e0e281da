"""Uploads: a table of hostile tar streams, each refused with one line and nothing left behind;
good ones unpacked exactly; the symlink-escape check against the kernel's own resolution."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.jobs.contract import JobError
from nixcell.jobs.model import Caller
from nixcell.jobs.tarsafe import escapes
from nixcell.jobs.workspace import Workspaces

ALICE = Caller("uid:1000", "alice")
BOB = Caller("uid:1001", "bob")


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **attrs) -> tuple:
    return (name, kind, data, attrs)


def make_tar(*members: tuple, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, data, attrs in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
            for key, value in attrs.items():
                setattr(info, key, value)
            if kind in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def workspaces(tmp_path: Path, **config) -> Workspaces:
    state = tmp_path / "state"
    return Workspaces(SimpleNamespace(state_dir=str(state), **config))


def upload(ws: Workspaces, body: bytes, caller: Caller = ALICE, chunk: int = 7000) -> str:
    async def chunks():
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    return asyncio.run(ws.store_upload(caller, chunks()))


def leftovers(ws: Workspaces) -> list[str]:
    return sorted(os.listdir(os.path.join(ws.state_dir, "uploads")))


def _many(n: int) -> bytes:
    return make_tar(*(member(f"f{i}") for i in range(n)), fmt=tarfile.USTAR_FORMAT)


def _deep(levels: int) -> bytes:
    return make_tar(member("/".join(["d"] * levels) + "/f"))


def _bomb() -> bytes:  # 3 MiB of zeros in one member, gzip-ed to a few KiB; limit is 1 MiB
    raw = make_tar(member("zeros", data=b"\0" * (3 << 20)))
    return gzip.compress(raw, 9)


def _pax_bomb() -> bytes:  # a 40 MiB pax record (tarfile reads those into memory), gzip-ed
    info = tarfile.TarInfo("f")
    info.pax_headers = {"comment": "x" * (40 << 20)}
    return gzip.compress(info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024, 9)


def _huge_header() -> bytes:  # a header claiming 1 TiB, then nothing
    info = tarfile.TarInfo("big")
    info.size = 1 << 40
    return info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024


ATTACKS: list[tuple[str, Callable[[], bytes], str]] = [
    ("dotdot", lambda: make_tar(member("../evil")), "leaves the upload"),
    ("dotdot inside", lambda: make_tar(member("a/../../evil")), "leaves the upload"),
    ("dotdot dir", lambda: make_tar(member("..", tarfile.DIRTYPE)), "leaves the upload"),
    ("absolute", lambda: make_tar(member("/etc/evil")), "absolute name"),
    ("absolute dir", lambda: make_tar(member("/tmp", tarfile.DIRTYPE)), "absolute name"),
    (
        "symlink out then file through it",
        lambda: make_tar(member("l", tarfile.SYMTYPE, linkname="/etc"), member("l/passwd")),
        "absolute path",
    ),
    (
        "symlink in then file through it",
        lambda: make_tar(
            member("d", tarfile.DIRTYPE),
            member("l", tarfile.SYMTYPE, linkname="d"),
            member("l/x"),
        ),
        "goes through the symlink",
    ),
    ("symlink dotdot", lambda: make_tar(member("l", tarfile.SYMTYPE, linkname="..")), "outside"),
    (
        "symlink escaping through another link",
        lambda: make_tar(
            member("d", tarfile.DIRTYPE),
            member("e", tarfile.SYMTYPE, linkname="d"),
            member("d/x", tarfile.SYMTYPE, linkname="../e/../.."),
        ),
        "outside",
    ),
    (
        "symlink escaping through a link that comes later",
        lambda: make_tar(
            member("d/x", tarfile.SYMTYPE, linkname="../e/../../etc"),
            member("e", tarfile.SYMTYPE, linkname="d"),
        ),
        "outside",
    ),
    (
        "symlink loop",
        lambda: make_tar(
            member("a", tarfile.SYMTYPE, linkname="b"), member("b", tarfile.SYMTYPE, linkname="a")
        ),
        "outside",
    ),
    ("symlink no target", lambda: make_tar(member("l", tarfile.SYMTYPE, linkname="")), "no target"),
    (
        "symlink target with newline",
        lambda: make_tar(member("l", tarfile.SYMTYPE, linkname="a\nb")),
        "control characters",
    ),
    (
        "file below a file",
        lambda: make_tar(member("f", data=b"x"), member("f/g")),
        "goes through the file",
    ),
    (
        "hardlink out",
        lambda: make_tar(member("h", tarfile.LNKTYPE, linkname="/etc/shadow")),
        "hard link",
    ),
    (
        "hardlink inside",
        lambda: make_tar(member("f", data=b"x"), member("h", tarfile.LNKTYPE, linkname="f")),
        "hard link",
    ),
    (
        "char device",
        lambda: make_tar(member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)),
        "device",
    ),
    ("block device", lambda: make_tar(member("sda", tarfile.BLKTYPE, devmajor=8)), "device"),
    ("fifo", lambda: make_tar(member("p", tarfile.FIFOTYPE)), "FIFO"),
    ("unknown type", lambda: make_tar(member("z", b"Z")), "unsupported type"),
    ("setuid", lambda: make_tar(member("su", data=b"x", mode=0o4755)), "setuid"),
    ("setgid", lambda: make_tar(member("sg", data=b"x", mode=0o2755)), "setuid or setgid"),
    ("long part", lambda: make_tar(member("x" * 256)), "over 255 bytes"),
    ("long path", lambda: make_tar(member("/".join(["y" * 200] * 25))), "longer than 4096"),
    ("deep", lambda: _deep(70), "deeper than 64"),
    ("too many members", lambda: _many(10_001), "more than 10000 members"),
    ("nul in name", lambda: make_tar(member("a\0b")), ""),  # tarfile cuts at NUL: "a" is fine
    ("newline in name", lambda: make_tar(member("a\nb")), "control characters"),
    ("escape in name", lambda: make_tar(member("a\x1b[31mb")), "control characters"),
    ("duplicate", lambda: make_tar(member("a", data=b"1"), member("a", data=b"2")), "twice"),
    (
        "file then dir",
        lambda: make_tar(member("a", data=b"1"), member("a", tarfile.DIRTYPE)),
        "twice",
    ),
    ("duplicate spelled ./", lambda: make_tar(member("a"), member("./a")), "twice"),
    ("duplicate spelled //", lambda: make_tar(member("d/a"), member("d//a")), "twice"),
    ("empty name", lambda: make_tar(member("./")), "has no name"),
    ("gzip bomb", _bomb, "over 1048576 bytes"),
    ("gzip pax bomb", _pax_bomb, "too large"),
    ("huge size in header", _huge_header, "over 1048576 bytes"),
    ("not a tar", lambda: b"this is not a tar file, just text" * 40, "not a valid tar stream"),
    ("empty body", lambda: b"", "not a valid tar stream"),
    ("truncated", lambda: make_tar(member("f", data=b"x" * 5000))[:1536], "not a valid tar"),
]


@pytest.mark.parametrize(
    ("body", "why"), [(a[1], a[2]) for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
def test_hostile_uploads_are_refused_and_leave_nothing(tmp_path, body, why):
    ws = workspaces(tmp_path, upload_limit=1 << 20)
    data = body()
    if not why:  # NUL: tarfile stops the name there; what lands must still be inside
        upload_id = upload(ws, data)
        tree = Path(ws.state_dir, "uploads", upload_id, "tree")
        assert sorted(p.name for p in tree.iterdir()) == ["a"]
        return
    with pytest.raises(JobError) as info:
        upload(ws, data)
    message = str(info.value)
    assert why in message
    assert "\n" not in message and len(message) < 300
    assert info.value.status in (400, 413)
    assert leftovers(ws) == []
    assert not (tmp_path / "etc").exists()


def test_raw_stream_over_the_limit_is_refused_while_it_arrives(tmp_path):
    ws = workspaces(tmp_path, upload_limit=1 << 16, upload_members=10)
    sent = []

    async def endless():
        while True:
            sent.append(1)
            yield b"\0" * 65536

    with pytest.raises(JobError, match="the upload is over") as info:
        asyncio.run(ws.store_upload(ALICE, endless()))
    assert info.value.status == 413
    assert len(sent) < 64  # stopped reading soon after the limit
    assert leftovers(ws) == []


def test_a_good_upload_is_unpacked_exactly(tmp_path):
    body = make_tar(
        member("./", tarfile.DIRTYPE),
        member("./README.md", data=b"hello\n"),
        member("./bin/run", data=b"#!/bin/sh\necho hi\n", mode=0o755),
        member("./docs", tarfile.DIRTYPE, mode=0o2775),  # setgid dir from a shared dir: dropped
        member("./docs/readme", tarfile.SYMTYPE, linkname="../README.md"),
        member("./docs/self", tarfile.SYMTYPE, linkname="."),
        member("./deep/a/b/c/file", data=b"x" * 3000),
        member("./deep/a", tarfile.DIRTYPE),  # a directory after its implicit creation
    )
    ws = workspaces(tmp_path)
    upload_id = upload(ws, gzip.compress(body))
    tree = Path(ws.state_dir, "uploads", upload_id, "tree")
    assert (tree / "README.md").read_bytes() == b"hello\n"
    assert os.readlink(tree / "docs" / "readme") == "../README.md"
    assert (tree / "docs" / "readme").read_bytes() == b"hello\n"
    assert stat.S_IMODE((tree / "bin" / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "docs").lstat().st_mode) == 0o755
    assert (tree / "deep/a/b/c/file").stat().st_size == 3000
    ws.check_upload(ALICE, upload_id)
    with pytest.raises(JobError, match=f"no upload {upload_id}"):
        ws.check_upload(BOB, upload_id)  # another's upload is not confirmed
    for bad in ("u-../../x", "u-" + "0" * 32, "../u-x", "", "u-" + "A" * 32):
        with pytest.raises(JobError) as info:
            ws.check_upload(ALICE, bad)
        assert "\n" not in str(info.value)
    assert ws.gc(older_than=3600) == {"uploads": 0, "clones": 0}  # an age in seconds
    assert ws.gc(older_than=1e9) == {"uploads": 0, "clones": 0}  # a unix time (2001)
    assert ws.gc(older_than=0) == {"uploads": 1, "clones": 0}
    assert leftovers(ws) == []


def _kernel_inside(root: Path, links: dict[str, str], path: str) -> bool:
    for name, target in links.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if not p.is_symlink() and not p.exists():
            p.symlink_to(target)
    real = os.path.realpath(root / path)
    return real == str(root) or real.startswith(str(root) + "/")


PART = st.sampled_from(["..", ".", "a", "b", "d", "a/b", "d/.."])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "d/x", "d/y", "a2"]),
        st.lists(PART, min_size=1, max_size=4).map("/".join),
        min_size=1,
        max_size=4,
    )
)
def test_escape_check_never_says_inside_when_the_kernel_leaves(tmp_path_factory, links):
    """The safety direction: whatever ``escapes`` lets through, the kernel resolves inside."""
    root = tmp_path_factory.mktemp("links").resolve()
    (root / "d").mkdir(exist_ok=True)
    links = {k: v for k, v in links.items() if not (k.startswith("d/") and "d" in links)}
    try:
        for name, target in links.items():
            if not escapes(links, name, target):
                assert _kernel_inside(root, links, name), (name, target, links)
    finally:
        for name in links:
            with __import__("contextlib").suppress(OSError):
                (root / name).unlink()


def _entries(tree: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(tree))


_PART = st.sampled_from(["a", "b", "c", "dd"])


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.lists(_PART, min_size=1, max_size=12).map("/".join), min_size=1, max_size=8),
    dirs_last=st.booleans(),
)
def test_members_bound_what_lands_on_disk_implied_directories_included(
    tmp_path_factory, names, dirs_last
):
    """``upload_members`` bounds the entries made, not only the tar headers: a member
    ``a/b/.../f`` makes every directory above it (64 levels each: 10k members would be 640k
    inodes, copied again for every job)."""
    tmp_path = tmp_path_factory.mktemp("members")
    ws = workspaces(tmp_path, upload_members=10)
    seen: set[str] = set()
    members = []
    for name in names:
        if name in seen or any(name.startswith(s + "/") or s.startswith(name + "/") for s in seen):
            continue  # no duplicates, no file above another member
        seen.add(name)
        members.append(member(name))
    if dirs_last:  # the implied directories named after all: the same entries, no more
        members += [
            member(d, tarfile.DIRTYPE)
            for d in sorted({n.rsplit("/", 1)[0] for n in seen if "/" in n})
        ]
    try:
        upload_id = upload(ws, make_tar(*members))
    except JobError as exc:
        assert "more than 10 members" in str(exc)
        assert leftovers(ws) == []
        return
    assert _entries(Path(ws.state_dir, "uploads", upload_id, "tree")) <= 10


@pytest.mark.parametrize(
    ("members", "limit"),
    [
        ([member("/".join(["d"] * 63) + "/f")], 10),  # one member, 63 directories implied
        ([member(f"{i}/x/y/z") for i in range(4)], 10),  # 4 members, 16 entries
        ([member("a/b/c/d/e/f/g/h/i/j/k")], 10),  # 11 entries exactly past the limit
    ],
)
def test_implied_directories_count_as_members(tmp_path, members, limit):
    ws = workspaces(tmp_path, upload_members=limit)
    with pytest.raises(JobError, match=f"more than {limit} members"):
        upload(ws, make_tar(*members))
    assert leftovers(ws) == []


def test_the_member_limit_still_fits_its_own_directories(tmp_path):
    ws = workspaces(tmp_path, upload_members=10)  # 10 entries: 5 dirs named, 5 files in them
    body = make_tar(
        *[member(f"d{i}", tarfile.DIRTYPE) for i in range(5)],
        *[member(f"d{i}/f") for i in range(5)],
    )
    assert _entries(Path(ws.state_dir, "uploads", upload(ws, body), "tree")) == 10
