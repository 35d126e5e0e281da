"""A real cell in a prepared workspace plants what a hostile job would (symlinks to host files
and to /, FIFOs, a socket, a 300-deep tree, a hard link, an unreadable directory); then
``artifacts`` and ``remove`` stay inside, and a workspace swapped for a symlink is refused."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.unit.test_jobs_tar import make_tar, member

from nixcell import CellSpec, run
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import Caller, Job, JobRequest
from nixcell.jobs.workspace import Workspaces

ALICE = Caller("uid:0", "root")

HOSTILE = r"""
set -u
cd /workspace
id -u > whoami
echo data > out.txt
ln -s /etc/shadow shadow-link
ln -s / rootlink
ln -s ../../../../../../.. up
ln -s "$CANARY" canary-link
ln out.txt hard
mkfifo fifo
python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.bind("sock")'
d=deep; for i in $(seq 1 300); do d="$d/d"; done; mkdir -p "$d"; echo bottom > "$d/f"
mkdir locked; echo x > locked/f; chmod 000 locked
mkdir -p sub; ln -s ../../../../etc sub/etc
echo ok
"""


@pytest.fixture
def prepared(offline_set, tmp_path):
    """A job dir with an uploaded workspace, after a real hostile cell ran in it."""
    state = tmp_path / "state"
    ws = Workspaces(SimpleNamespace(state_dir=str(state)))
    body = make_tar(member("given.txt", data=b"from the upload\n"))

    async def chunks():
        yield body

    upload_id = asyncio.run(ws.store_upload(ALICE, chunks()))
    job_dir = tmp_path / "jobs" / "7"
    job_dir.mkdir(parents=True, mode=0o700)
    job = Job(id=7, owner=ALICE.key, owner_name="root", request={}, state="preparing", created=0)
    request = JobRequest(command=["true"], workspace={"upload": upload_id})
    got = asyncio.run(ws.prepare(job, request, str(job_dir)))
    assert got.path == str(job_dir / "workspace")
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("host file\n")
    spec = CellSpec(
        command=["bash", "-c", HOSTILE],
        packages=["bash", "coreutils", "python3"],
        workdir=got.path,
        env={"CANARY": str(canary)},
    )
    result = run(spec, capture_output=True)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip().endswith(b"ok")
    return SimpleNamespace(ws=ws, job_dir=job_dir, canary=canary, path=Path(got.path))


def read_tar(ws: Workspaces, job_dir: Path) -> tarfile.TarFile:
    data = b"".join(ws.artifacts(str(job_dir)))
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")


def test_the_cell_wrote_its_workspace_as_its_own_user(prepared):
    inside = (prepared.path / "whoami").read_text().strip()
    assert inside == "1000"  # the cell's user inside
    assert (prepared.path / "given.txt").read_text() == "from the upload\n"
    # on the host what the cell wrote belongs to whoever runs nixcell (idmapped for root)
    assert (prepared.path / "out.txt").stat().st_uid == os.getuid()


def test_artifacts_of_a_hostile_workspace_stay_inside(prepared):
    shadow = Path("/etc/shadow").read_bytes() if os.access("/etc/shadow", os.R_OK) else b""
    tar = read_tar(prepared.ws, prepared.job_dir)
    members = {m.name: m for m in tar.getmembers()}
    assert tar.extractfile(members["out.txt"]).read() == b"data\n"
    assert tar.extractfile(members["given.txt"]).read() == b"from the upload\n"
    for name, target in (
        ("shadow-link", "/etc/shadow"),
        ("rootlink", "/"),
        ("canary-link", str(prepared.canary)),
        ("sub/etc", "../../../../etc"),
    ):
        assert members[name].issym() and members[name].linkname == target
    assert members["hard"].isreg()  # a plain copy, never a link out
    assert "fifo" not in members and "sock" not in members
    assert not any(m.isdev() or m.isfifo() or m.islnk() for m in tar.getmembers())
    assert all(not n.startswith(("/", "..")) and "/../" not in n for n in members)
    deepest = max(m.name.count("/") for m in members.values())
    assert deepest < 130  # bounded: the bottom of the 300-deep tree is left out
    assert "keep" not in " ".join(members)
    data = b"".join(prepared.ws.artifacts(str(prepared.job_dir)))
    if shadow:
        assert shadow not in data
    assert b"host file" not in data


def test_remove_stays_inside(prepared):
    before = Path("/etc/shadow").stat()
    prepared.ws.remove(str(prepared.job_dir))
    assert not prepared.job_dir.exists()
    assert (prepared.canary / "keep").read_text() == "host file\n"
    after = Path("/etc/shadow").stat()
    assert (after.st_mode, after.st_uid, after.st_ino) == (
        before.st_mode,
        before.st_uid,
        before.st_ino,
    )
    assert Path("/etc").is_dir()


def test_a_workspace_swapped_for_a_symlink_is_refused(prepared):
    from nixcell.fsio import remove_tree

    remove_tree(prepared.path)
    os.symlink(prepared.canary, prepared.path)
    with pytest.raises(JobError) as info:
        prepared.ws.artifacts(str(prepared.job_dir))
    assert info.value.status == 409
    assert "no longer a directory" in str(info.value)
    prepared.ws.remove(str(prepared.job_dir))
    assert (prepared.canary / "keep").read_text() == "host file\n"


def test_a_job_without_repo_or_upload_gets_an_empty_workspace_or_a_tmpfs(tmp_path):
    ws = Workspaces(SimpleNamespace(state_dir=str(tmp_path / "state")))
    job_dir = tmp_path / "jobs" / "8"
    job_dir.mkdir(parents=True)
    job = Job(id=8, owner=ALICE.key, owner_name="root", request={}, state="preparing", created=0)
    got = asyncio.run(ws.prepare(job, JobRequest(command=["true"]), str(job_dir)))
    assert got.path == str(job_dir / "workspace") and os.listdir(got.path) == []
    assert b"".join(ws.artifacts(str(job_dir))) == b"\0" * 1024  # an empty tar
    disk = JobRequest(command=["true"], disk="10M")
    assert asyncio.run(ws.prepare(job, disk, str(job_dir))).path is None
    with pytest.raises(JobError, match="no workspace"):
        ws.artifacts(str(tmp_path / "jobs" / "9"))
