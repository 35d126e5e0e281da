"""HTTP shape of the job API with an in-test Service double (only the HTTP layer is under test
here: status codes, one-line JSON errors, SSE framing, peer identity). The same request table
runs against the real daemon in tests/integration/test_jobs_api.py.

Real uvicorn on a real unix socket with ``auth.PeerProtocol``; no mocks of the HTTP stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

uvicorn = pytest.importorskip("uvicorn")

from tests.unit.jobs_malformed import MALFORMED  # noqa: E402

from nixcell.jobs.api import create_app  # noqa: E402
from nixcell.jobs.auth import PeerProtocol  # noqa: E402
from nixcell.jobs.contract import Conflict, NotFound  # noqa: E402
from nixcell.jobs.model import Caller, Event, Job, JobRequest, LogLine  # noqa: E402


class Double:
    """Just enough of ``contract.Service`` to answer: one job per submit, three log lines."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}

    async def upload(self, caller: Caller, body: AsyncIterator[bytes]) -> str:
        async for _ in body:
            pass
        return "u-00"

    async def submit(self, caller: Caller, request: JobRequest) -> Job:
        ident = len(self.jobs) + 1
        job = Job(
            ident,
            caller.key,
            caller.name,
            request.model_dump(),
            "succeeded",
            time.time(),
            exit_code=0,
        )
        self.jobs[ident] = job
        return job

    def get(self, caller: Caller, job_id: int) -> Job:
        job = self.jobs.get(job_id)
        if job is None or not caller.may_see(job.owner):
            raise NotFound(f"no job {job_id}")
        return job

    def list(self, caller, *, states=None, limit=100, all_users=True):
        return [j for j in self.jobs.values() if caller.may_see(j.owner)][:limit]

    def shown(self, caller: Caller, job: Job) -> dict:
        return {
            "id": job.id,
            "state": job.state,
            "owner": job.owner_name,
            "created": job.created,
            "exit_code": job.exit_code,
            "request": JobRequest.model_validate(job.request).shown(),
        }

    async def cancel(self, caller: Caller, job_id: int) -> Job:
        self.get(caller, job_id)
        raise Conflict(f"job {job_id} has finished")

    def _lines(self, job_id: int) -> list[LogLine]:
        return [LogLine(job_id, i, time.time(), "stdout", f"line {i}\x1b[31m") for i in (1, 2, 3)]

    def logs(self, caller, job_id, *, after=0, tail=None, streams=None):
        self.get(caller, job_id)
        return [x for x in self._lines(job_id) if x.seq > after][-(tail or 3) :]

    def job_events(self, caller, job_id):
        return [Event(job_id, 1, time.time(), "state", "succeeded")]

    async def _follow(self, job_id: int, after: int):
        for line in self._lines(job_id):
            if line.seq > after:
                yield line
        yield Event(job_id, 1, time.time(), "state", "succeeded")

    def follow(self, caller, job_id, *, after=0, streams=None):
        self.get(caller, job_id)
        return self._follow(job_id, after)

    async def _never(self):
        await asyncio.Event().wait()
        yield  # pragma: no cover

    def events(self, caller, job_id=None):
        return self._never()

    def audit(self, caller, job_id):
        self.get(caller, job_id)
        return []

    def artifacts(self, caller, job_id):
        self.get(caller, job_id)
        return iter([b"x" * 10])

    async def gc(self, caller):
        return {"jobs": 0}

    def metrics(self) -> str:
        return "nixcell_up 1\n"


class _Config:
    tokens = ()
    admin_group = None
    upload_limit = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    path = str(Path(tmp_path_factory.mktemp("api")) / "s.sock")
    app = create_app(Double(), _Config())
    config = uvicorn.Config(app, uds=path, http=PeerProtocol, lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield path
    server.should_exit = True
    thread.join(30)


def _request(path: str, method: str, url: str, body=None, headers=None):
    from nixcell.jobs.client import _UnixConnection

    conn = _UnixConnection(path, 30)
    try:
        conn.request(method, url, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("content-type"), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "url", "body", "headers", "status"), MALFORMED)
def test_malformed_requests_are_4xx_json(served, method, url, body, headers, status):
    got, ctype, raw = _request(served, method, url, body, headers)
    assert got == status, raw
    assert ctype == "application/json"
    error = json.loads(raw)["error"]
    assert error and "\n" not in error and "Traceback" not in error


def test_submit_show_logs_and_follow_shape(served):
    body = json.dumps(
        {"command": ["true"], "packages": ["bash"], "env": {"K": "v"}, "secret_env": ["K"]}
    ).encode()
    status, _, raw = _request(
        served, "POST", "/api/v1/jobs", body, {"Content-Type": "application/json"}
    )
    assert status == 201, raw
    job = json.loads(raw)["job"]
    assert job["request"]["env"] == {"K": "<secret>"}
    shown = json.loads(_request(served, "GET", f"/api/v1/jobs/{job['id']}")[2])
    assert shown["events"][0]["exit_code"] == 0  # the terminal event carries the job's code
    lines = json.loads(_request(served, "GET", f"/api/v1/jobs/{job['id']}/logs?tail=2")[2])
    assert [x["seq"] for x in lines["lines"]] == [2, 3]
    status, ctype, raw = _request(
        served, "GET", f"/api/v1/jobs/{job['id']}/logs?follow=1", headers={"Last-Event-ID": "1"}
    )
    assert ctype.startswith("text/event-stream")
    frames = raw.decode().split("\n\n")
    assert frames[0].startswith("id: 2\nevent: log\ndata: ")
    assert json.loads(frames[0].split("data: ", 1)[1])["text"] == "line 2\x1b[31m"
    assert frames[2].startswith("event: state\n")
    who = json.loads(_request(served, "GET", "/api/v1/whoami")[2])
    assert who == {
        "caller": "root" if os.getuid() == 0 else who["caller"],
        "key": f"uid:{os.getuid()}",
        "admin": os.getuid() == 0,
    }
