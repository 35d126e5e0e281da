"""Who may do what, against the real daemon: two real users over the unix socket (SO_PEERCRED;
users made with useradd for the test, removed after), the admin group, TCP bearer tokens, the
web session cookie, and the Host/Origin checks (DNS rebinding, cross-site requests)."""

from __future__ import annotations

import grp
import json
import os
import secrets
import shutil
import stat
import subprocess

import pytest
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
J = {"Content-Type": "application/json"}


@pytest.fixture
def users(offline_set):
    """Users a, b (in the socket group), c (also in the admin group), d (in neither)."""
    if os.getuid() != 0:
        pytest.skip("needs root to create users")
    for tool in ("useradd", "userdel", "groupadd", "groupdel", "setpriv"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    tag = secrets.token_hex(3)
    names = {k: f"nxj{k}{tag}" for k in ("a", "b", "c", "d")}
    group, admins = f"nxjsock{tag}", f"nxjadm{tag}"
    made_groups, made_users = [], []
    try:
        for g in (group, admins):
            subprocess.run(["groupadd", g], check=True)
            made_groups.append(g)
        extra = {"a": group, "b": group, "c": f"{group},{admins}", "d": None}
        for key, name in names.items():
            argv = ["useradd", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin"]
            argv += ["-G", extra[key]] if extra[key] else []
            subprocess.run([*argv, name], check=True)
            made_users.append(name)
        yield {"group": group, "admins": admins, **names}
    finally:
        for name in made_users:
            subprocess.run(["userdel", name], check=False)
        for g in made_groups:
            subprocess.run(["groupdel", g], check=False)


def _config(users) -> str:
    return f'[server]\nsocket_group = "{users["group"]}"\nadmin_group = "{users["admins"]}"\n'


def _as(d, users, who: str, *args: str):
    return d.cli(*args, user=users[who])


def test_users_see_only_their_own_jobs(jobsd, users):  # noqa: F811
    d = jobsd(config=_config(users))
    st = os.stat(d.socket)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == grp.getgrnam(users["group"]).gr_gid
    assert stat.S_IMODE(os.stat(os.path.dirname(d.socket)).st_mode) == 0o750
    run = ["submit", "--detach", "-p", "bash", "-p", "coreutils", "--", "bash", "-c"]
    out = _as(d, users, "a", *run, "echo from-a; sleep 600")
    assert out.returncode == 0, out.stderr
    job = out.stdout.decode().strip()
    assert job.isdigit()
    who = json.loads(_as(d, users, "a", "jobs", "--json").stdout)
    assert [j["id"] for j in who] == [int(job)] and who[0]["owner"] == users["a"]
    d.wait_state(int(job), {"running"})
    # b: every path to a's job is the same 404 as a job that does not exist
    for args in (
        ("show", job),
        ("logs", job),
        ("logs", "-f", job),
        ("cancel", job),
        ("artifacts", job, "-o", "/dev/null"),
    ):
        out = _as(d, users, "b", *args)
        assert out.returncode == 1, (args, out)
        assert out.stderr.decode().strip() == f"nixcell: no job {job}", (args, out.stderr)
    assert json.loads(_as(d, users, "b", "jobs", "--json").stdout) == []
    assert b"from-a" not in _as(d, users, "b", "logs", job).stdout
    # the raw API says the same (no "forbidden": ids of others are not confirmed)
    assert d.call("GET", f"/api/v1/jobs/{job}")["job"]["owner"] == users["a"]  # root: admin
    # c is in the admin group: sees and cancels a's job
    listed = json.loads(_as(d, users, "c", "jobs", "--json").stdout)
    assert int(job) in [j["id"] for j in listed]
    out = _as(d, users, "c", "cancel", job)
    assert out.returncode == 0 and b"cancelled" in out.stdout, out.stderr
    job_after = d.call("GET", f"/api/v1/jobs/{job}")["job"]
    assert job_after["state"] == "cancelled" and users["c"] in (job_after["reason"] or "")
    # a's own view
    assert b"from-a" in _as(d, users, "a", "logs", job).stdout
    # d is in no group: the socket refuses it at connect
    out = _as(d, users, "d", "jobs")
    assert out.returncode == 1 and b"cannot reach the daemon" in out.stderr
    assert "Traceback" not in d.log()


def test_tcp_tokens_hosts_origins_and_sessions(jobsd):  # noqa: F811
    d = jobsd(tcp=True)
    host = {"Host": f"127.0.0.1:{d.port}"}

    def req(method, path, *, token=None, headers=None, body=None):
        return d.request(method, path, body, {**host, **(headers or {})}, tcp=True, token=token)

    for token in (None, "", "wrong", d.token + "x", d.token.upper()):
        status, headers, raw = req("GET", "/api/v1/jobs", token=token)
        assert status == 401 and json.loads(raw) == {"error": "a token is required"}, token
    assert req("GET", "/metrics")[0] == 401
    status, _, raw = req("GET", "/api/v1/whoami", token=d.user_token)
    assert status == 200 and json.loads(raw) == {
        "caller": "token user",
        "key": "token:user",
        "admin": False,
    }
    # DNS rebinding: a Host that is not this listener is refused, whatever the token
    for bad in (f"evil.example:{d.port}", "127.0.0.1:1", f"localhost.evil:{d.port}", ""):
        status, _, raw = req("GET", "/api/v1/whoami", token=d.token, headers={"Host": bad})
        assert status == 421, (bad, raw)
    assert (
        req("GET", "/api/v1/whoami", token=d.token, headers={"Host": f"localhost:{d.port}"})[0]
        == 200
    )
    # a job of root (unix) is not the token's
    job = d.call("POST", "/api/v1/jobs", {"packages": ["bash"], "command": ["bash", "-c", "true"]})
    ident = job["job"]["id"]
    status, _, raw = req("GET", f"/api/v1/jobs/{ident}", token=d.user_token)
    assert status == 404 and json.loads(raw) == {"error": f"no job {ident}"}
    assert req("GET", f"/api/v1/jobs/{ident}", token=d.token)[0] == 200  # the admin token
    # cross-origin state changes refused; same-origin ones pass the gate
    evil = {"Origin": "http://evil.example"}
    status, _, raw = req("POST", f"/api/v1/jobs/{ident}/cancel", token=d.token, headers=evil)
    assert status == 403, raw
    same = {"Origin": f"http://127.0.0.1:{d.port}"}
    assert req("POST", f"/api/v1/jobs/{ident}/cancel", token=d.token, headers=same)[0] in (200, 409)
    # web login: a wrong token gets no cookie; the right one an HttpOnly SameSite=Strict cookie
    login = json.dumps({"token": "nope"}).encode()
    status, headers, _ = req("POST", "/api/v1/session", headers=J, body=login)
    assert status == 401 and "set-cookie" not in headers
    login = json.dumps({"token": d.user_token}).encode()
    status, headers, raw = req("POST", "/api/v1/session", headers=J, body=login)
    assert status == 200, raw
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    proof = json.loads(raw)["proof"]
    # the cookie alone is no session (browsers send it to every port of the host): its proof
    status, _, raw = req("GET", "/api/v1/whoami", headers={"Cookie": cookie.split(";")[0]})
    assert status == 401, raw
    jar = {"Cookie": cookie.split(";")[0], "X-Nixcell-Session": proof}
    status, _, raw = req("GET", "/api/v1/whoami", headers=jar)
    assert status == 200 and json.loads(raw)["key"] == "token:user"
    status, _, raw = req(
        "GET", f"/api/v1/jobs?session={proof}&limit=5", headers={"Cookie": jar["Cookie"]}
    )
    assert status == 200, raw  # the query form (EventSource), stripped before the route
    # a cookie alone cannot change state (cross-site forms): the custom header is needed
    status, _, raw = req("POST", f"/api/v1/jobs/{ident}/cancel", headers=jar)
    assert status == 403 and "X-Nixcell" in json.loads(raw)["error"]
    status, _, raw = req("POST", f"/api/v1/jobs/{ident}/cancel", headers={**jar, "X-Nixcell": "1"})
    assert status == 404, raw  # past the gate; root's job is not the token user's
    assert req("GET", "/api/v1/whoami", headers={"Cookie": "nixcell_session=forged"})[0] == 401
    # the secret tokens are nowhere in the log
    assert d.token not in d.log() and d.user_token not in d.log()
