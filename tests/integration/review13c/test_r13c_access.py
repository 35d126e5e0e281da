"""Review of issue 13's host cache (outside reviewer, part c): who may read ``/nix-cache/`` and
what any spelling of a path can make it serve. REAL workers on a REAL PostgreSQL; w1 serves a
seeded Nix root. A failing test is a finding; a passing one is a defence that held."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest
from tests.integration.clusterrig import Workers, cluster  # noqa: F401 - fixture
from tests.integration.jobsd import jobsd  # noqa: F401 - fixture
from tests.integration.nixcache import remove_root, seeded_root
from tests.integration.review13c.rig import basic, closure, password, path_of, raw_get

pytestmark = [pytest.mark.integration, pytest.mark.root]


@pytest.fixture
def seeded():
    root = seeded_root(closure(["bash", "coreutils"]))
    yield root
    remove_root(root)


def _serving(cluster, seeded) -> Workers:  # noqa: F811
    c = cluster(0)
    c.add("w1", root=seeded, cache=False, serve_cache=True)
    return c


def test_only_the_cluster_password_opens_the_cache_on_any_listener(cluster, seeded) -> None:  # noqa: F811
    """No bearer token (admin or not), no unix-socket peer (root), no other login, no other
    Host (DNS rebinding) reads a narinfo; a present and an absent path get the same answer."""
    c = _serving(cluster, seeded)
    w1 = c["w1"]
    good = basic("nixcell", password(c.key, c["w1"]))
    bash = path_of("bash")[11:43]
    here, absent = f"/nix-cache/{bash}.narinfo", f"/nix-cache/{'0' * 32}.narinfo"
    host = {"Host": f"127.0.0.1:{w1.port}"}
    assert raw_get(w1.port, here, {**host, "Authorization": good})[0] == 200
    answers = set()
    for headers in (
        {},
        {"Authorization": f"Bearer {w1.token}"},
        {"Authorization": f"Bearer {w1.user_token}"},
        {"Authorization": basic("root", password(c.key, c["w1"]))},
        {"Authorization": basic("nixcell", password(c.key, c["w1"])[:-1])},
        {"Authorization": "Basic " + "A" * 400},
    ):
        for target in (here, absent):
            for method in ("GET", "HEAD"):
                status, body = raw_get(w1.port, target, {**host, **headers}, method)
                assert status == 401 and b"StorePath" not in body, (headers, target, status)
                answers.add((status, body, method))
    assert len({(s, b) for s, b, m in answers if m == "GET"}) == 1  # no existence oracle
    for evil in ("evil.example", f"evil.example:{w1.port}", f"127.0.0.1.nip.io:{w1.port}"):
        status, body = raw_get(w1.port, here, {"Host": evil, "Authorization": good})
        assert status == 421 and b"StorePath" not in body, (evil, status)
    for target in (here, "/nix-cache/nix-cache-info", f"/nix-cache/nar/{bash}.nar"):
        status, _, body = w1.request("GET", target)  # the unix socket, as root (an admin peer)
        assert status == 401 and b"StorePath" not in body, (target, status)
    assert password(c.key, c["w1"]) not in w1.log()


def test_no_spelling_serves_a_path_outside_the_cells_closures(cluster, seeded) -> None:  # noqa: F811
    c = _serving(cluster, seeded)
    w1 = c["w1"]
    secret = password(c.key, c["w1"])
    auth = {"Authorization": basic("nixcell", secret), "Host": f"127.0.0.1:{w1.port}"}

    def secret(tmp: str) -> str:
        with open(os.path.join(tmp, "secret"), "w") as f:
            f.write("r13c-not-for-the-cluster\n")
        return os.path.join(tmp, "secret")

    other = _add(seeded, secret)[11:43]  # in w1's root; no cell of w1's was ever given it
    for name in (
        f"/nix-cache/{other}.narinfo",
        f"/nix-cache//{other}.narinfo",
        f"/nix-cache/./{other}.narinfo",
        f"/nix-cache/nar/../{other}.narinfo",
        f"/nix-cache/nar/{other}.nar",
        f"/nix-cache/nar//{other}.nar",
        f"/nix-cache/%6ear/{other}.nar",
        f"/nix-cache/nar%2f{other}.nar",
        f"/NIX-CACHE/{other}.narinfo",
        f"/nix-cache/{other}.narinfo/",
        f"/nix-cache/{other}.narinfo?x=1",
        f"/nix-cache/{other}.narinfo;x",
        f"/nix-cache/{other.upper()}.narinfo",
        "/nix-cache/nar/..%2f..%2f..%2fetc%2fpasswd",
        "/nix-cache/../../../../etc/passwd",
        "/nix-cache/nar/%2e%2e/%2e%2e/etc/passwd",
    ):  # fmt: skip  (a trailing '/' is Starlette's 307 to the name without it: 404 there)
        for method in ("GET", "HEAD"):
            status, body = raw_get(w1.port, name, auth, method)
            assert status >= 300 and b"StorePath" not in body and b"root:" not in body, (
                name, method, status)  # fmt: skip
            assert b"nix-archive" not in body and b"r13c-not" not in body, name


def _add(root: str, build) -> str:
    """A store path (in ``root``) made from what ``build(dir)`` writes."""
    with tempfile.TemporaryDirectory(prefix="r13c-") as tmp:
        top = build(tmp)
        out = subprocess.run(["nix-store", "--store", root, "--add", top], capture_output=True,
                             text=True, check=True)  # fmt: skip
    return out.stdout.strip()


def test_a_served_path_with_links_out_gives_links_not_host_files(cluster, seeded) -> None:  # noqa: F811
    """A store path that is a link to /etc/shadow, and one holding links to /etc: their NARs hold
    the links' targets as text, never the files (nix-store --dump does not follow links)."""

    def top_link(tmp: str) -> str:
        os.symlink("/etc/shadow", os.path.join(tmp, "shadowlink"))
        return os.path.join(tmp, "shadowlink")

    def dir_links(tmp: str) -> str:
        d = os.path.join(tmp, "links")
        os.mkdir(d)
        os.symlink("/etc", os.path.join(d, "etc"))
        os.symlink("/etc/passwd", os.path.join(d, "passwd"))
        os.symlink("../../../../../etc/passwd", os.path.join(d, "up"))
        return d

    top, holder = _add(seeded, top_link), _add(seeded, dir_links)
    c = _serving(cluster, seeded)
    w1 = c["w1"]
    secret = password(c.key, c["w1"])
    auth = {"Authorization": basic("nixcell", secret), "Host": f"127.0.0.1:{w1.port}"}
    # (since the review only the package set and what w1's own jobs resolved are served, and
    # jobs name attribute paths only: paths added by hand are never served, links or not)
    assert raw_get(w1.port, f"/nix-cache/{path_of('bash')[11:43]}.narinfo", auth)[0] == 200
    for p in (top, holder):
        for name in (f"{p[11:43]}.narinfo", f"nar/{p[11:43]}.nar"):
            status, body = raw_get(w1.port, f"/nix-cache/{name}", auth)
            assert status == 404 and b"root:" not in body, (p, name, status)


def test_a_client_cannot_set_or_blank_via_cache(cluster, seeded) -> None:  # noqa: F811
    c = _serving(cluster, seeded)
    c.add("w2", cache=False)
    base = b'{"packages": ["bash"], "command": ["true"]'
    for via, extra in (("w1", b', "via_cache": ""'), ("w2", b', "via_cache": "http://127.0.0.1:9/x"'),
                       ("w1", b', "via_cache": 0'), ("w1", b', "Via_cache": "http://127.0.0.1:9/x"'),
                       ("w1", b', "via_cache": ["http://127.0.0.1:9/x"]')):  # fmt: skip
        status, _, body = c[via].request("POST", "/api/v1/jobs", base + extra + b"}",
                                         {"Content-Type": "application/json"})  # fmt: skip
        assert status == 400 and b"ia_cache" in body, (via, extra, status, body)
    # a duplicate key: the last (null) wins, and the server still names its own cache only
    body = base + b', "via_cache": "http://127.0.0.1:9/x", "via_cache": null}'
    status, _, raw = c["w1"].request("POST", "/api/v1/jobs", body,
                                     {"Content-Type": "application/json"})  # fmt: skip
    if status == 200 or status == 201:
        job = json.loads(raw)["job"]
        assert job["request"]["via_cache"] == c["w1"].url + "/nix-cache", job
    else:
        assert status == 400, (status, raw)
