"""The job API over real HTTP against a real ``nixcell serve`` (tests/integration/jobsd.py):
submit, follow (SSE), list, logs, cancel; every malformed request a one-line 4xx JSON error with
no traceback in the daemon's log; the OpenAPI document matches the real answers."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture
from tests.unit.jobs_malformed import MALFORMED, REFUSED

pytestmark = pytest.mark.integration
J = {"Content-Type": "application/json"}
LINES = "for i in $(seq 1 20); do echo line $i; done; echo oops >&2; exit 3"


def _submit(d, command: str, **more) -> dict:
    request = {"packages": ["bash", "coreutils"], "command": ["bash", "-c", command], **more}
    return d.call("POST", "/api/v1/jobs", request)["job"]


def _sse(raw: bytes) -> list[tuple[str, str | None, dict]]:
    frames = []
    for block in raw.decode().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if "data" in fields:
            frames.append(
                (fields.get("event", "message"), fields.get("id"), json.loads(fields["data"]))
            )
    return frames


@pytest.fixture(scope="module")
def daemon(offline_set, tmp_path_factory):
    """One daemon for this module's read-mostly tests (each test that needs its own makes it)."""
    import tempfile
    from pathlib import Path

    from tests.integration.jobsd import Daemon, remove_tree

    root = Path(tempfile.mkdtemp(prefix="nixcell-jobsd-", dir="/tmp"))
    root.chmod(0o755)
    d = Daemon(root, "[server]\nconcurrency = 2\n", tcp=True).start()
    yield d
    assert d.stop() == 0, d.log()
    remove_tree(root)


def test_submit_follow_list_logs(daemon):
    job = _submit(daemon, LINES, name="numbers", env={"TOKEN": "s3cret"}, secret_env=["TOKEN"])
    assert job["state"] == "queued" and job["name"] == "numbers"
    assert job["request"]["env"] == {"TOKEN": "<secret>"}
    status, headers, raw = daemon.request("GET", f"/api/v1/jobs/{job['id']}/logs?follow=1")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    frames = _sse(raw)
    logs = [data for kind, _, data in frames if kind == "log"]
    stdout = [x["text"] for x in logs if x["stream"] == "stdout"]
    assert stdout == [f"line {i}" for i in range(1, 21)]
    assert [x["text"] for x in logs if x["stream"] == "stderr"] == ["oops"]
    assert [int(ident) for kind, ident, _ in frames if kind == "log"] == [x["seq"] for x in logs]
    last = frames[-1]
    assert last[0] == "state" and last[2]["state"] == "failed" and last[2]["exit_code"] == 3
    shown = daemon.call("GET", f"/api/v1/jobs/{job['id']}")
    assert shown["job"]["exit_code"] == 3 and shown["job"]["state"] == "failed"
    states = [e["state"] for e in shown["events"] if e["kind"] == "state"]
    assert states[0] == "queued" and states[-1] == "failed" and "running" in states
    listed = daemon.call("GET", "/api/v1/jobs?state=failed&limit=5")["jobs"]
    assert job["id"] in [j["id"] for j in listed]
    assert all(j["state"] == "failed" for j in listed)
    tail = daemon.call("GET", f"/api/v1/jobs/{job['id']}/logs?tail=2&stream=stdout")["lines"]
    assert [x["text"] for x in tail] == ["line 19", "line 20"]
    after = daemon.call("GET", f"/api/v1/jobs/{job['id']}/logs?after={logs[-2]['seq']}")["lines"]
    assert after[0]["seq"] == logs[-1]["seq"]
    # resuming a follow with Last-Event-ID: only what came after it
    _, _, raw = daemon.request(
        "GET",
        f"/api/v1/jobs/{job['id']}/logs?follow=1",
        headers={"Last-Event-ID": str(logs[-2]["seq"])},
    )
    assert [d["seq"] for k, _, d in _sse(raw) if k == "log"] == [logs[-1]["seq"]]
    assert b"s3cret" not in json.dumps(daemon.call("GET", "/api/v1/jobs")).encode()


def test_cancel_a_running_job(daemon):
    job = _submit(daemon, "echo started; sleep 600")
    daemon.wait_state(job["id"], {"running"})
    cancelled = daemon.call("POST", f"/api/v1/jobs/{job['id']}/cancel")["job"]
    assert cancelled["state"] == "cancelled", cancelled
    status, _, raw = daemon.request("POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert status == 409 and "\n" not in json.loads(raw)["error"]


@pytest.mark.parametrize(("method", "url", "body", "headers", "status"), MALFORMED + REFUSED)
def test_malformed_requests_against_the_daemon(daemon, method, url, body, headers, status):
    got, headers_back, raw = daemon.request(method, url, body, headers)
    assert got == status, raw
    assert headers_back["content-type"] == "application/json"
    error = json.loads(raw)["error"]
    assert error and "\n" not in error
    assert "Traceback" not in daemon.log()


_segment = st.text(st.characters(codec="utf-8", exclude_characters="/?#"), max_size=30)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
_fields = st.sampled_from(
    ["packages", "command", "env", "memory", "cpus", "pids", "timeout", "workspace", "cwd",
     "profiles", "backend", "hardening", "secret_env", "policies", "credentials", "nixpkgs"]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    tail=st.sampled_from(["", "/cancel", "/logs", "/audit", "/artifacts", "/x"]),
    ident=_segment,
    query=st.dictionaries(
        st.sampled_from(["state", "limit", "after", "tail", "stream", "all", "zz"]),
        _segment,
        max_size=3,
    ),
    body=st.dictionaries(_fields, _json_value, max_size=4),
)
def test_hostile_requests_never_500(daemon, method, tail, ident, query, body):
    from urllib.parse import quote, urlencode

    url = f"/api/v1/jobs/{quote(ident, safe='')}{tail}" if ident else f"/api/v1/jobs{tail}"
    if query:
        url += "?" + urlencode(query)
    data = json.dumps(body).encode() if method != "GET" else None
    status, _, raw = daemon.request(method, url, data, J if data else {})
    assert status < 500, (url, raw)
    if status >= 400:
        assert "\n" not in json.loads(raw)["error"]
    elif status == 201 and "job" in json.loads(raw):  # a valid request: don't leave it running
        daemon.request("POST", f"/api/v1/jobs/{json.loads(raw)['job']['id']}/cancel")


def test_openapi_matches_the_real_answers(daemon):
    import jsonschema

    doc = daemon.call("GET", "/api/v1/openapi.json")
    assert doc["openapi"].startswith("3.")

    def check(path: str, method: str, status: int, answer: object) -> None:
        op = doc["paths"][path][method]
        schema = op["responses"][str(status)]["content"]["application/json"]["schema"]
        full = {**schema, "components": doc["components"]}
        jsonschema.validate(answer, full, cls=jsonschema.Draft202012Validator)

    job = _submit(daemon, "echo hi")
    check("/api/v1/jobs", "post", 201, {"job": job})
    daemon.wait_state(job["id"], {"succeeded", "failed", "error"})
    check("/api/v1/jobs/{id}", "get", 200, daemon.call("GET", f"/api/v1/jobs/{job['id']}"))
    check("/api/v1/jobs", "get", 200, daemon.call("GET", "/api/v1/jobs"))
    check(
        "/api/v1/jobs/{id}/logs", "get", 200, daemon.call("GET", f"/api/v1/jobs/{job['id']}/logs")
    )
    check(
        "/api/v1/jobs/{id}/audit", "get", 200, daemon.call("GET", f"/api/v1/jobs/{job['id']}/audit")
    )
    check("/api/v1/whoami", "get", 200, daemon.call("GET", "/api/v1/whoami"))
    check("/api/v1/gc", "post", 200, daemon.call("POST", "/api/v1/gc"))
    status, _, raw = daemon.request("GET", "/api/v1/jobs/424242")
    check("/api/v1/jobs/{id}", "get", status, json.loads(raw))
    status, _, raw = daemon.request("POST", "/api/v1/jobs", b"{", J)
    check("/api/v1/jobs", "post", status, json.loads(raw))
    metrics = daemon.request("GET", "/metrics")
    assert metrics[0] == 200 and b"nixcell_jobs" in metrics[2]


def test_event_feed_and_streams_end_at_sigterm(jobsd):  # noqa: F811
    from nixcell.jobs.client import _UnixConnection

    d = jobsd()
    conn = _UnixConnection(d.socket, 120)
    conn.request("GET", "/api/v1/events")
    feed = conn.getresponse()
    assert feed.status == 200 and feed.getheader("content-type").startswith("text/event-stream")
    job = _submit(d, "echo hi")
    seen = []
    while "succeeded" not in seen:
        line = feed.readline()
        assert line, "the feed ended early"
        if line.startswith(b"data: "):
            event = json.loads(line[6:])
            if event["job"] == job["id"]:
                seen.append(event["state"])
    assert seen[-1] == "succeeded" and "running" in seen
    follower = _UnixConnection(d.socket, 120)  # a follow of a job that never ends by itself
    running = _submit(d, "sleep 600")
    follower.request("GET", f"/api/v1/jobs/{running['id']}/logs?follow=1")
    stream = follower.getresponse()
    d.wait_state(running["id"], {"running"})
    assert d.stop() == 0, d.log()
    assert b'"state":"cancelled"' in stream.read()  # the follower saw the end, then EOF
    feed.read()  # the feed ended too (no hang)
    assert not os.path.lexists(d.socket) and "Traceback" not in d.log()
