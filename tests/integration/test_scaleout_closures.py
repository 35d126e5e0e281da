"""Closures from the submitting host (issue 13): REAL workers, each with its own Nix root, one
serving its store to the others over its API (``cache_url``), REAL nix fetching, checking the
cluster key's signature and every NAR's hash.

w1 takes the submits and serves; w2 has an empty root and no binary cache of its own: all it
runs, it has from w1.
"""

from __future__ import annotations

import base64
import os
import subprocess
import urllib.error
import urllib.request

import pytest
from tests.integration.clusterrig import Workers, cluster  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import offline_paths, remove_root, seeded_root

pytestmark = [pytest.mark.integration, pytest.mark.root]

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "error"}


def _path(name: str) -> str:
    return next(p for p in offline_paths() if p[44:].startswith(name + "-"))


def _closure(names: list[str]) -> list[str]:
    out = subprocess.run(["nix-store", "-qR", *map(_path, names)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return sorted(set(out.stdout.split()))


@pytest.fixture
def seeded():
    root = seeded_root(_closure(["bash", "coreutils", "busybox", "dash", "gnugrep"]))
    yield root
    remove_root(root)


def _two(cluster, seeded) -> Workers:  # noqa: F811
    c = cluster(0)
    c.add("w1", root=seeded, cache=False, serve_cache=True)
    c.add("w2", cache=False)
    return c


def _run(c: Workers, via: str, on: str, packages: list[str], command: list[str]) -> dict:
    job = c.submit(via, {"packages": packages, "command": command, "on_host": on})
    return c.wait(via, job["id"], TERMINAL)


def _sigs(root: str, path: str) -> str:
    out = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "path-info", "--store", root,
         "--sigs", path], capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout


def test_a_worker_runs_what_only_the_submitting_host_has(cluster, seeded) -> None:  # noqa: F811
    c = _two(cluster, seeded)
    bash = _path("bash")
    done = _run(c, "w1", "w2", ["bash"], ["bash", "-c", "echo fetched"])
    assert done["state"] == "succeeded", done
    assert done["request"]["via_cache"] == c["w1"].url + "/nix-cache"
    lines = c["w1"].call("GET", f"/api/v1/jobs/{done['id']}/logs?stream=stdout")["lines"]
    assert [x["text"] for x in lines] == ["fetched"]
    assert os.path.isdir(c.roots["w2"] + bash)
    assert "nixcell-cluster-" in _sigs(c.roots["w2"], bash)  # signed by the cluster's key
    # submitted through w2 (which serves nothing), coreutils has nowhere to come from
    done = _run(c, "w2", "w2", ["coreutils"], ["true"])
    assert done["state"] == "error" and "not in the Nix root" in done["reason"], done
    done = _run(c, "w1", "w2", ["coreutils"], ["true"])
    assert done["state"] == "succeeded", done


def test_a_tampered_path_on_the_submitting_host_is_refused(cluster, seeded) -> None:  # noqa: F811
    """The NAR w1 serves no longer matches the hash its store registered: w2's nix refuses it,
    the job ends in error, and nothing of it is in w2's root."""
    c = _two(cluster, seeded)
    grep = _path("gnugrep")
    where = seeded + grep
    os.chmod(where, 0o755)
    with open(os.path.join(where, "planted"), "w") as f:
        f.write("not what the narinfo says\n")
    done = _run(c, "w1", "w2", ["gnugrep"], ["grep", "--version"])
    assert done["state"] == "error" and "do not match the hash" in done["reason"], done
    valid = subprocess.run(["nix-store", "--store", c.roots["w2"], "--check-validity", grep],
                           capture_output=True)  # fmt: skip
    assert valid.returncode != 0  # (nix may leave the unpacked bytes; never registered valid)
    again = _run(c, "w2", "w2", ["gnugrep"], ["grep", "--version"])  # nothing to fetch from
    assert again["state"] == "error", again
    log = c["w2"].call("GET", f"/api/v1/jobs/{again['id']}/logs?stream=stdout")["lines"]
    assert not log  # the bytes left behind never ran


def _get(url: str, password: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if password is not None:
        basic = base64.b64encode(f"nixcell:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _password(c: Workers, via: str = "w1") -> str:
    from nixcell.nix.narinfo import cluster_password

    with open(c.key, "rb") as f:
        return cluster_password(f.read(), c[via].url + "/nix-cache")


def test_the_cache_answers_the_cluster_only_and_only_for_cell_paths(cluster, seeded) -> None:  # noqa: F811
    c = _two(cluster, seeded)
    base = c["w1"].url + "/nix-cache"
    good = _password(c)
    bash = _path("bash")[11:43]
    assert _get(f"{base}/nix-cache-info", good)[0] == 200
    for password in (None, "", "nixcell", good[:-1], good + "x", good.upper()):
        status, body = _get(f"{base}/{bash}.narinfo", password)
        assert status == 401 and b"StorePath" not in body, (password, status)
    status, body = _get(f"{base}/{bash}.narinfo", good)
    assert status == 200 and body.startswith(b"StorePath: " + _path("bash").encode()), body
    assert b"\nSig: nixcell-cluster-" in body
    status, nar = _get(f"{base}/nar/{bash}.nar", good)
    assert status == 200 and nar[:13] == b"\r\x00\x00\x00\x00\x00\x00\x00nix-a"[:13]
    # a store path no cell of w1's was given is not served, nor is any other spelling
    in_root = {p[:32] for p in os.listdir(seeded + "/nix/store") if len(p) > 33}
    served = {p[11:43] for p in _closure(["bash", "coreutils", "busybox", "dash", "gnugrep"])}
    drv = next(iter(sorted(in_root - served)), None)
    names = [f"{'0' * 32}.narinfo", f"{bash}.NARINFO", f"{bash.upper()}.narinfo", f"{bash}",
             f"{bash[:31]}.narinfo", f"{bash}x.narinfo", f"..%2f{bash}.narinfo",
             f"{bash}.narinfo%00", "nar/..%2f..%2fetc%2fpasswd", f"nar/{bash}.narinfo",
             f"nar/{bash}", f"%2e%2e/{bash}.narinfo"]  # fmt: skip
    if drv is not None:
        names.append(f"{drv}.narinfo")
    for name in names:
        status, body = _get(f"{base}/{name}", good)
        assert status == 404 and b"StorePath" not in body and b"root:" not in body, (name, status)


def test_a_client_cannot_name_the_cache_a_job_fetches_from(cluster, seeded) -> None:  # noqa: F811
    c = _two(cluster, seeded)
    status, _, body = c["w1"].request(
        "POST", "/api/v1/jobs",
        b'{"packages": ["bash"], "command": ["true"], "via_cache": "http://127.0.0.1:9/x"}',
        {"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 400 and b"via_cache" in body, body


def test_a_single_host_server_with_a_cache_url_is_refused_in_one_line(jobsd) -> None:  # noqa: F811
    daemon = jobsd(config='[server]\ncache_url = "http://127.0.0.1:9/nix-cache"\n', start=False)
    proc = subprocess.run(daemon.argv(), capture_output=True, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode != 0 and "Traceback" not in err, err
    assert any("cache_url needs a postgresql store" in line for line in err.splitlines()), err


def test_a_burst_of_cold_jobs_on_a_fresh_root_all_run(cluster) -> None:  # noqa: F811
    """Eight jobs at once on a worker whose root is empty: nix 2.8's first use of the root and
    of the cache by several processes at once races (its narinfo cache's SQLite rows, the
    root's first directories); every job runs, and the API answers meanwhile."""
    c = cluster(1, concurrency=8)
    jobs = [c.submit("w1", {"packages": ["bash"], "command": ["bash", "-c", f"echo {i}"]})
            for i in range(8)]  # fmt: skip
    assert c["w1"].call("GET", "/api/v1/jobs?limit=5")["jobs"]  # (not starved by the builds)
    for i, job in enumerate(jobs):
        done = c.wait("w1", job["id"], TERMINAL)
        assert done["state"] == "succeeded", done.get("reason")
        lines = c["w1"].call("GET", f"/api/v1/jobs/{job['id']}/logs?stream=stdout")["lines"]
        assert [x["text"] for x in lines] == [str(i)]
