"""The job daemon under load, end to end: a real ``nixcell serve`` (tests/integration/jobsd.py),
real cells, the real client over the unix socket.

200 jobs, each printing its own number of numbered lines and exiting with its own code, are
submitted by 8 client threads at once to a daemon running 8 at a time. Every exit code and
state is right, every line is stored exactly once and in order, and a few ``nixcell logs -f``
followers, each started as soon as its job was submitted, print every line of it and
the job's end. Also: a cell started by the daemon runs as its own host uid with no
supplementary group (the daemon drops to it through nsenter, so that it can vfork).
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture
from tests.integration.jobsrig import processes_with

pytestmark = pytest.mark.integration

JOBS = 200
CLIENTS = 8
FOLLOWERS = (7, 50, 111, 160, 199)  # job numbers followed live with `nixcell logs -f`
SCRIPT = 'for i in $(seq 1 "$N"); do echo "$JOB line $i"; done; exit $((JOB % 7))'
WAIT = 900.0  # a bound on the whole run, not a timing assertion


def lines_of(number: int) -> int:
    """Each job's own line count: 1 to 400, spread over the jobs."""
    return 1 + (number * 37) % 400


def expected(number: int) -> list[str]:
    return [f"{number} line {i}" for i in range(1, lines_of(number) + 1)]


def request(number: int) -> dict:
    return {
        "packages": ["bash", "coreutils"],
        "command": ["bash", "-c", SCRIPT],
        "env": {"JOB": str(number), "N": str(lines_of(number))},
        "name": f"load-{number}",
    }


def submit_all(d, numbers: list[int], on_submit) -> dict[int, int]:
    """Job number -> id, submitted by CLIENTS threads at once (each its own client)."""
    from nixcell.jobs.client import Client

    ids: dict[int, int] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submitter(share: list[int]) -> None:
        client = Client(d.server)
        try:
            for number in share:
                job = client.call("POST", "/api/v1/jobs", request(number))["job"]
                with lock:
                    ids[number] = job["id"]
                on_submit(number, job["id"])
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    threads = [
        threading.Thread(target=submitter, args=(numbers[i::CLIENTS],)) for i in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    return ids


def wait_finished(d, ids: list[int]) -> dict[int, dict]:
    wanted = set(ids)
    deadline = time.monotonic() + WAIT
    active = "/api/v1/jobs?state=queued&state=preparing&state=running&limit=1000"
    while wanted & {job["id"] for job in d.call("GET", active)["jobs"]}:
        assert time.monotonic() < deadline, "jobs still unfinished"
        time.sleep(0.5)
    return {job_id: d.call("GET", f"/api/v1/jobs/{job_id}")["job"] for job_id in ids}


def test_200_jobs_concurrency_8_lines_and_followers(jobsd):  # noqa: F811
    d = jobsd(config="[server]\nconcurrency = 8\n")
    followed: dict[int, object] = {}
    threads: list[threading.Thread] = []

    def on_submit(number: int, job_id: int) -> None:
        if number not in FOLLOWERS:
            return

        def follow() -> None:
            followed[number] = d.cli("logs", str(job_id), "-f", timeout=WAIT)

        thread = threading.Thread(target=follow)
        thread.start()
        threads.append(thread)

    numbers = list(range(1, JOBS + 1))
    ids = submit_all(d, numbers, on_submit)
    assert sorted(ids) == numbers and len(set(ids.values())) == JOBS
    jobs = wait_finished(d, list(ids.values()))
    for number, job_id in ids.items():
        job = jobs[job_id]
        code = number % 7
        assert (job["state"], job["exit_code"]) == (
            "succeeded" if code == 0 else "failed",
            code,
        ), (number, job)
        lines = d.call("GET", f"/api/v1/jobs/{job_id}/logs?stream=stdout")["lines"]
        assert [x["text"] for x in lines] == expected(number), number
        seqs = [x["seq"] for x in lines]
        assert seqs == sorted(set(seqs)), f"job {number}: seqs repeat or go back"
        assert not job["log_truncated"]
    for thread in threads:
        thread.join(WAIT)
    assert sorted(followed) == sorted(FOLLOWERS)
    for number, done in followed.items():
        assert done.stdout.decode().splitlines() == expected(number), (number, done.stderr)
        assert done.returncode == 0, (number, done.stderr)  # logs -f: 0 (submit -f: the job's)
        assert f"job {'succeeded' if number % 7 == 0 else 'failed'}" in done.stderr.decode()
    assert "Traceback" not in d.log()


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_cell_runs_as_its_own_uid_without_groups(jobsd):  # noqa: F811
    if os.geteuid() != 0:
        pytest.skip("a root-run daemon gives cells their own uid: needs root")
    d = jobsd()
    marker = "918273"
    job = d.call(
        "POST",
        "/api/v1/jobs",
        {"packages": ["bash", "coreutils"], "command": ["sleep", marker]},
    )["job"]
    assert d.wait_state(job["id"], {"running"})["state"] == "running"
    deadline = time.monotonic() + WAIT
    while not processes_with(marker):
        assert time.monotonic() < deadline, "the job's sleep never showed up"
        time.sleep(0.05)
    for pid in processes_with(marker):
        status = _status(pid)
        uids, gids = set(status["Uid"].split()), set(status["Gid"].split())
        assert len(uids) == 1 and uids != {"0"}, status["Uid"]
        assert len(gids) == 1 and gids != {"0"}, status["Gid"]
        assert status["Groups"].strip() == "", status["Groups"]
    d.call("POST", f"/api/v1/jobs/{job['id']}/cancel")
