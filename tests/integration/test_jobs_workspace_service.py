"""Workspaces through the real job service (in-process ``JobService``, SQLite, real cells):
an upload job and a git job run in their workspaces, their artifacts come back as tars, another
user's upload cannot be used, a failing clone is the job's one-line error."""

from __future__ import annotations

import io
import tarfile

from tests.integration.jobsrig import ADMIN, ALICE, BOB, collect, script, serve, settle
from tests.integration.test_jobs_workspace_git import origin  # noqa: F401 - a fixture
from tests.unit.test_jobs_tar import make_tar, member

from nixcell.jobs.contract import JobError


async def _body(data: bytes):
    yield data


def _tar_of(stream) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    with tarfile.open(fileobj=io.BytesIO(stream.read()), mode="r:") as tar:
        for m in tar.getmembers():
            data = tar.extractfile(m).read() if m.isreg() else ""  # type: ignore[union-attr]
            out[m.name] = m.linkname if m.issym() else data
    return out


def test_an_upload_job_runs_in_its_workspace_and_gives_artifacts(offline_set, tmp_path):
    upload = make_tar(member("in.txt", data=b"21\n"), member("sub", tarfile.DIRTYPE))

    async def body(svc):
        upload_id = await svc.upload(ALICE, _body(upload))
        with_bob = script("true", workspace={"upload": upload_id})
        try:
            await svc.submit(BOB, with_bob)
            raise AssertionError("bob used alice's upload")
        except JobError as exc:
            assert str(exc) == f"no upload {upload_id}"
        request = script(
            "pwd; echo $(( $(cat ../in.txt) * 2 )) > ../out.txt; ln -s /etc/shadow ../link",
            workspace={"upload": upload_id, "path": "sub"},
        )
        job = await svc.submit(ALICE, request)
        done = await settle(svc, job.id)
        lines = [x.text for x in await collect(svc, ALICE, job.id) if hasattr(x, "text")]
        assert done.state == "succeeded", (done.reason, lines)
        assert "/workspace/sub" in lines
        files = _tar_of(svc.artifacts(ALICE, job.id))
        assert files["out.txt"] == b"42\n" and files["in.txt"] == b"21\n"
        assert files["link"] == "/etc/shadow"  # a link in the tar, never its target

    serve(tmp_path, body)


def test_a_git_job_and_a_failing_clone(offline_set, tmp_path, origin):  # noqa: F811
    # the origin is root's, in root's 0700 tmp dir: file:// is read as the caller, so root
    ALICE = ADMIN

    async def body(svc):
        job = await svc.submit(
            ALICE,
            script(
                "cat README; git --version >/dev/null 2>&1 || echo no-git",
                workspace={"repo": origin.url, "ref": "v1"},
            ),
        )
        done = await settle(svc, job.id)
        lines = [x.text for x in await collect(svc, ALICE, job.id) if hasattr(x, "text")]
        assert done.state == "succeeded", (done.reason, lines)
        assert "first" in lines
        assert "README" in _tar_of(svc.artifacts(ALICE, job.id))
        bad = await svc.submit(ALICE, script("true", workspace={"repo": origin.url, "ref": "nope"}))
        failed = await settle(svc, bad.id)
        assert failed.state == "error"
        assert failed.reason is not None and "has no branch or tag 'nope'" in failed.reason
        assert "\n" not in failed.reason and str(tmp_path) not in failed.reason

    serve(tmp_path, body)


BAD_AT_SUBMIT = [  # workspace faults a clone would refuse before any git: 400 at submit
    ({"repo": "ext::sh%20-c%20id"}, "remote-helper"),
    ({"repo": "-uhttp://x/y"}, "option"),
    ({"repo": "https://user:pw@git.example/x.git"}, "password"),
    ({"repo": "ssh://git.example/x.git"}, "scheme ssh"),
    ({"repo": "https://git.example/x.git", "ref": "--upload-pack=id"}, "workspace.ref"),
    ({"repo": "https://git.example/x.git", "ref": "a..b"}, "workspace.ref"),
    ({"repo": "https://git.example/x.git", "path": "../x"}, "workspace.path"),
    ({"repo": "https://git.example/x.git", "git_credential": "nope"}, "no credential 'nope'"),
    ({"ref": "main"}, "needs workspace.repo"),
    ({"repo": "file:///srv/x.git"}, "scheme file"),
]


def test_workspace_faults_are_refused_at_submit_and_not_stored(offline_set, tmp_path):
    async def body(svc):
        for workspace, why in BAD_AT_SUBMIT:
            try:
                await svc.submit(ALICE, script("true", workspace=workspace))
                raise AssertionError(f"accepted {workspace}")
            except JobError as exc:
                assert exc.status == 400 and why in str(exc) and "\n" not in str(exc), exc
        assert svc.list(ADMIN) == []  # nothing was stored

    serve(tmp_path, body, repo_schemes=("https", "http"))
