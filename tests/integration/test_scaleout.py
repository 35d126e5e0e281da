"""Scale-out (issue 13): real ``nixcell serve`` workers on one real PostgreSQL, real cells.

Three workers (w1..w3, own state dirs and sockets) stand in for hosts. Everything a test checks
is read back through the API of some worker, often not the one that ran the job: that every
host sees the whole cluster is part of what is tested.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
from collections import Counter

import pytest
from tests.integration.clusterrig import Workers, cluster, wait_until  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.jobsrig import cgroups_of, processes_with

pytestmark = [pytest.mark.integration, pytest.mark.root]

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}
HOSTS = ("w1", "w2", "w3")


def _numbered(n: int, lines: int = 3) -> dict:
    """A job printing ``n i`` for i in 1..lines and exiting n % 5."""
    body = "; ".join(f"echo {n} {i}" for i in range(1, lines + 1))
    return {"packages": ["bash"], "command": ["bash", "-c", f"{body}; exit {n % 5}"]}


def _db(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


def _drop_connections(server, dsn: str) -> int:
    rows = server.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        _db(dsn),
    )
    return len(rows)


def _all_jobs(c: Workers, via: str = "w1") -> list[dict]:
    return c[via].call("GET", "/api/v1/jobs?all_hosts=1&limit=1000")["jobs"]


def _stdout(c: Workers, via: str, job_id: int) -> list[str]:
    lines = c[via].call("GET", f"/api/v1/jobs/{job_id}/logs?stream=stdout")["lines"]
    return [line["text"] for line in lines]


def _events(c: Workers, via: str, job_id: int) -> list[dict]:
    return c[via].call("GET", f"/api/v1/jobs/{job_id}")["events"]


def test_300_jobs_on_three_workers_each_run_exactly_once(cluster) -> None:  # noqa: F811
    c = cluster(3)
    submitted = {}
    for n in range(300):
        job = c.submit(HOSTS[n % 3], _numbered(n))
        submitted[job["id"]] = n
    done = wait_until(
        lambda: (jobs := _all_jobs(c, "w2")) and all(j["state"] in TERMINAL for j in jobs) and jobs,
        wait=600,
    )
    assert len(done) == 300
    ran_on: Counter[str] = Counter()
    for job in done:
        n = submitted[job["id"]]
        assert job["exit_code"] == n % 5, job
        assert job["state"] == ("succeeded" if n % 5 == 0 else "failed"), job
        assert job["host"] in HOSTS, job
        ran_on[job["host"]] += 1
        via = HOSTS[(n + 1) % 3]  # read through another worker than the submitting one
        assert _stdout(c, via, job["id"]) == [f"{n} {i}" for i in (1, 2, 3)]
        states = [e["state"] for e in _events(c, via, job["id"]) if e["kind"] == "state"]
        assert states.count("preparing") == 1 and states.count("running") == 1, states
    # more than one worker took part (not necessarily all three: the closure hint leaves a
    # fresh job to the hosts that hold its closure, and under load two may drain the queue)
    assert len(ran_on) >= 2, ran_on
    print(f"jobs per host: {dict(ran_on)}")


def test_a_pinned_job_runs_on_its_host_only(cluster) -> None:  # noqa: F811
    c = cluster(3)
    jobs = [c.submit("w1", {**_numbered(i), "on_host": HOSTS[i % 3]}) for i in range(9)]
    for i, job in enumerate(jobs):
        final = c.wait("w3", job["id"], TERMINAL)
        assert final["host"] == HOSTS[i % 3], final
    # a host the cluster has never seen is refused at submit, not queued forever
    status, _, body = c["w1"].request(
        "POST",
        "/api/v1/jobs",
        b'{"packages": ["bash"], "command": ["true"], "on_host": "nowhere"}',
        {"Content-Type": "application/json"},
    )
    assert status == 400 and b"no host 'nowhere'" in body, body


LIST_STORE = 'shopt -s dotglob; for f in /nix/store/*; do echo "${f##*/}"; done'


def test_each_worker_realises_closures_in_its_own_nix_root(cluster) -> None:  # noqa: F811
    """Every root starts empty: each host fetches the paths from the signed cache and builds the
    env in its own store; same pin, same store paths; a cell sees its host's root only."""
    c = cluster(3)
    jobs = {h: c.submit("w1", {"packages": ["bash"], "command": ["bash", "-c", LIST_STORE],
                               "on_host": h}) for h in HOSTS}  # fmt: skip
    seen = {}
    for host, job in jobs.items():
        assert c.wait("w2", job["id"], TERMINAL)["state"] == "succeeded"
        seen[host] = set(_stdout(c, "w3", job["id"]))
    envs = {h: {n for n in names if n.endswith("-nixcell-env")} for h, names in seen.items()}
    assert len({frozenset(e) for e in envs.values()}) == 1 and len(envs["w1"]) == 1, envs
    env = next(iter(envs["w1"]))
    machine = set(os.listdir("/nix/store"))
    for host, names in seen.items():
        root = c.roots[host]
        assert os.path.isdir(f"{root}/nix/store/{env}"), host  # built there
        in_root = set(os.listdir(f"{root}/nix/store"))
        assert names <= in_root, (host, names - in_root)
        assert "python3" not in " ".join(in_root)  # only what its jobs needed came
    # a file planted in w2's copy of bash is seen by w2's cells only
    bash = next(n for n in seen["w2"] if "-bash-" in n)
    where = f"{c.roots['w2']}/nix/store/{bash}"
    os.chmod(where, 0o755)
    with open(f"{where}/planted", "w") as f:
        f.write("w2-root\n")
    os.chmod(where, 0o555)
    show = f"echo $(<'/nix/store/{bash}/planted')"
    read = {"packages": ["bash"], "command": ["bash", "-c", show]}
    for host in ("w1", "w2"):
        job = c.submit("w3", {**read, "on_host": host})
        c.wait("w3", job["id"], TERMINAL)
        assert (_stdout(c, "w3", job["id"]) == ["w2-root"]) == (host == "w2"), host
    assert not os.path.exists(f"/nix/store/{bash}/planted") and bash in machine


def test_a_pinned_job_waits_for_its_host(cluster) -> None:  # noqa: F811
    c = cluster(2)
    c.kill("w2")
    job = c.submit("w1", {**_numbered(7), "on_host": "w2"})
    time.sleep(1.5)  # w1 is free all along: it must leave the job alone
    assert c.job("w1", job["id"])["state"] == "queued"
    c.start("w2")
    assert c.wait("w1", job["id"], TERMINAL)["host"] == "w2"


def test_logs_follow_from_another_host(cluster) -> None:  # noqa: F811
    c = cluster(2)
    job = c.submit("w1", {**_numbered(0, lines=400), "on_host": "w2"})
    out = c["w1"].cli("logs", str(job["id"]), "-f", "--stream", "stdout")
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == [f"0 {i}" for i in range(1, 401)]


def test_cancel_reaches_the_job_on_another_worker(cluster) -> None:  # noqa: F811
    c = cluster(2)
    marker = f"{int(time.time() * 1000) % 100000 + 200000}"
    job = c.submit(
        "w1",
        {"packages": ["bash", "coreutils"], "command": ["sleep", marker], "on_host": "w2"},
    )
    c.wait("w1", job["id"], {"running"})
    assert processes_with(marker)
    started = time.monotonic()
    out = c["w1"].cli("cancel", str(job["id"]))
    assert out.returncode == 0, out.stderr
    final = c.job("w2", job["id"])
    assert final["state"] == "cancelled" and final["host"] == "w2", final
    assert "cancelled by" in (final["reason"] or "")
    wait_until(lambda: not processes_with(marker), wait=30)
    assert not processes_with(marker)
    print(f"cancel across hosts took {time.monotonic() - started:.2f} s")


def test_kill_9_of_a_worker_fails_its_jobs_and_its_restart_cleans_up(
    cluster,  # noqa: F811
    pg_server,
    pg_dsn,
) -> None:
    c = cluster(3)
    marker = f"{int(time.time() * 1000) % 100000 + 300000}"
    job = c.submit(
        "w1",
        {"packages": ["bash", "coreutils"], "command": ["sleep", marker], "on_host": "w3",
         "memory": "128M"},
    )  # fmt: skip
    c.wait("w1", job["id"], {"running"})
    [(cell_id,)] = pg_server.admin(
        "SELECT cell_id FROM jobs WHERE id = %s", job["id"], dbname=_db(pg_dsn)
    )
    assert cell_id and cgroups_of(cell_id)
    c.kill("w3")
    lost = c.wait("w1", job["id"], TERMINAL, wait=60)
    assert (lost["state"], lost["reason"], lost["host"]) == ("error", "host lost", "w3"), lost
    other = c.submit("w2", _numbered(10))  # the others keep working meanwhile
    assert c.wait("w2", other["id"], TERMINAL)["exit_code"] == 0
    c.start("w3")  # the restarted worker cleans its leftovers: cgroups, processes, job dir
    wait_until(lambda: not processes_with(marker) and not cgroups_of(cell_id), wait=60)
    assert not processes_with(marker) and not cgroups_of(cell_id)
    assert not os.path.lexists(os.path.join(c["w3"].state_dir, "jobs", str(job["id"])))
    again = c.submit("w1", {**_numbered(3), "on_host": "w3"})  # and it works again
    assert c.wait("w1", again["id"], TERMINAL)["exit_code"] == 3


def test_a_job_with_retry_runs_again_elsewhere_when_its_host_is_lost(cluster) -> None:  # noqa: F811
    c = cluster(2)
    marker = f"{int(time.time() * 1000) % 100000 + 400000}"
    job = c.submit(
        "w1", {"packages": ["bash", "coreutils"], "command": ["sleep", marker], "retry": 1}
    )
    first = c.wait("w1", job["id"], {"running"})
    loser = first["host"]
    winner = "w2" if loser == "w1" else "w1"
    c.kill(loser)
    again = wait_until(
        lambda: (j := c.job(winner, job["id"]))["state"] == "running" and j["host"] == winner and j,
        wait=60,
    )
    assert again, c.job(winner, job["id"])
    events = [e for e in _events(c, winner, job["id"]) if e["kind"] == "state"]
    assert any("requeued" in (e["detail"] or "") for e in events), events
    c[winner].cli("cancel", str(job["id"]))


def test_a_worker_whose_database_connections_drop_loses_and_doubles_nothing(
    cluster,  # noqa: F811
    pg_server,
    pg_dsn,
) -> None:
    import threading

    c = cluster(2)
    ids = [c.submit(HOSTS[n % 2], _numbered(n))["id"] for n in range(40)]
    stop = threading.Event()
    dropped = []

    def cut() -> None:  # every client connection of the test database, again and again
        while not stop.wait(0.15):
            dropped.append(_drop_connections(pg_server, pg_dsn))

    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        time.sleep(2)
        more = []
        for n in range(40, 80):  # submits while connections drop: each answered is stored
            status, _, raw = c[HOSTS[n % 2]].request(
                "POST", "/api/v1/jobs", json.dumps(_numbered(n)).encode(),
                {"Content-Type": "application/json"},
            )  # fmt: skip
            assert status in (201, 503), (status, raw)  # the database away is a 503, no more
            if status == 201:
                more.append((n, json.loads(raw)["job"]["id"]))
        time.sleep(2)
    finally:
        stop.set()
        cutter.join()
    assert sum(dropped) > 10, dropped  # the cuts really happened
    ids += [job_id for _, job_id in more]
    numbers = list(range(40)) + [n for n, _ in more]
    done = wait_until(
        lambda: all(c.job("w1", i)["state"] in TERMINAL for i in ids), wait=300, every=0.2
    )  # (the cuts are over: reads answer again)
    assert done
    listed = {j["id"] for j in _all_jobs(c)}
    assert listed == set(ids), listed ^ set(ids)  # no job made that was not answered
    for n, job_id in zip(numbers, ids, strict=True):
        job = c.job("w2", job_id)
        assert job["exit_code"] == n % 5, job
        assert _stdout(c, "w1", job_id) == [f"{n} {i}" for i in (1, 2, 3)]
        states = [e["state"] for e in _events(c, "w1", job_id) if e["kind"] == "state"]
        assert states.count("running") == 1, states


def test_an_upload_received_by_one_host_runs_on_another_and_artifacts_come_back(
    cluster,  # noqa: F811
    tmp_path,
) -> None:
    c = cluster(2)
    src = tmp_path / "src"
    src.mkdir()
    (src / "in.txt").write_text("from the upload\n")
    out = c["w1"].cli(
        "submit", "--upload", str(src), "--on-host", "w2", "-p", "bash", "-p", "coreutils",
        "--follow", "--", "bash", "-c", "cat in.txt; echo made > out.txt",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().strip() == "from the upload"
    job = _all_jobs(c, "w1")[0]
    assert job["host"] == "w2"
    for via in ("w1", "w2"):
        status, _, body = c[via].request("GET", f"/api/v1/jobs/{job['id']}/artifacts")
        assert status == 200, body
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            names = {m.name.lstrip("./") for m in tar.getmembers()}
            assert {"in.txt", "out.txt"} <= names, names


def test_jobs_lists_this_hosts_jobs_unless_all_hosts(cluster) -> None:  # noqa: F811
    c = cluster(2)
    a = c.submit("w1", {**_numbered(0), "on_host": "w1"})
    b = c.submit("w1", {**_numbered(0), "on_host": "w2"})
    for job in (a, b):
        c.wait("w1", job["id"], TERMINAL)
    listed = {j["id"]: j["host"] for j in json.loads(c["w2"].cli("jobs", "--json").stdout)}
    assert listed == {b["id"]: "w2"}, listed
    every = json.loads(c["w2"].cli("jobs", "--json", "--all-hosts").stdout)
    assert {j["id"]: j["host"] for j in every} == {a["id"]: "w1", b["id"]: "w2"}


def test_serve_refuses_a_newer_schema_in_one_line(cluster, pg_server, pg_dsn) -> None:  # noqa: F811  # noqa: F811
    c = cluster(1)
    c["w1"].stop()
    pg_server.admin("UPDATE schema_version SET version = version + 1", dbname=_db(pg_dsn))
    daemon = c["w1"]
    proc = subprocess.run(daemon.argv(), capture_output=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.decode().strip().splitlines()
    assert "Traceback" not in proc.stderr.decode(), err
    assert any("schema version" in line and "newer nixcell" in line for line in err), err


def test_serve_refuses_a_nix_root_others_could_write_in_one_line(cluster) -> None:  # noqa: F811
    c = cluster(1)
    c["w1"].stop()
    os.chmod(c.roots["w1"], 0o777)
    proc = subprocess.run(c["w1"].argv(), capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert any("Nix root" in line and "writable by group or others" in line
               for line in err.splitlines()), err  # fmt: skip
