"""Review of issue 13's host cache (outside reviewer, part c): what the served set is made of.
The docs: only "the closures of its package set and of its own resolutions (what its cells
could see)". The set is read from ``paths.state_dir()/gcroots``: the uid's nixcell state, shared
with the same user's ``nixcell run`` and the MCP server's artifacts, not the server's own
``state_dir``."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest
from tests.conftest import NIXCELL
from tests.integration.clusterrig import cluster, wait_until  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import basic, closure, password, raw_get

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash", "coreutils", "busybox", "dash", "gnugrep"]))
    yield root
    remove_root(root)


def _secret_path(root: str) -> str:
    with tempfile.TemporaryDirectory(prefix="r13c-") as tmp:
        top = os.path.join(tmp, "r13c-private")
        os.makedirs(os.path.join(top, "share"))
        with open(os.path.join(top, "share", "note"), "w") as f:
            f.write("r13c: an operator's path, no job's\n")
        out = subprocess.run(["nix-store", "--store", root, "--add", top], capture_output=True,
                             text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def test_a_cli_run_on_the_serving_host_does_not_widen_what_it_serves(cluster, seeded) -> None:  # noqa: F811
    """Expected: a path no job of the server was given stays unserved after the same uid runs
    ``nixcell run -p /nix/store/…`` (jobs may only name attribute paths). Found: the CLI's GC
    root lands in the same gcroots dir, and within 10 s the daemon serves its whole closure to
    every cluster host, signed by the cluster's key."""
    secret = _secret_path(seeded)
    c = cluster(0)
    w1 = c.add("w1", root=seeded, cache=False, serve_cache=True)
    pw = password(c.key, c["w1"])
    auth = {"Authorization": basic("nixcell", pw), "Host": f"127.0.0.1:{w1.port}"}
    target = f"/nix-cache/{secret[11:43]}.narinfo"
    assert raw_get(w1.port, target, auth)[0] == 404
    env = {**os.environ, "NIXCELL_NIX_ROOT": seeded}
    run = subprocess.run([NIXCELL, "run", "-p", secret, "-p", "coreutils", "--", "true"],
                         capture_output=True, env=env, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    served = wait_until(lambda: raw_get(w1.port, target, auth)[0] == 200, wait=25)
    assert not served, f"{secret} (a CLI run's, no job's) is served to the cluster"
