"""Encoded secrets in responses. Compressed responses from credential hosts: decoded and scrubbed,
or refused — never passed on unseen; a token echoed inside base64 (``Basic``): scrubbed. The
loopback upstream compresses whatever ``Accept-Encoding`` said (the proxy asks credential hosts
for identity; a server may ignore that), so a real token inside a gzip body is exactly the case
a byte-level scrubber alone would miss."""

from __future__ import annotations

import base64
import json

import pytest
from tests.integration.test_net_credentials import (
    GH_ENV,
    auth,
    dummy_of,
    github_token,
    network,
    nothing_leaked,
    write_policy,
)

import nixcell
from nixcell import CellSpec

CLIENT = """
import gzip, json, os, sys, urllib.request, urllib.error
base, other = sys.argv[1], sys.argv[2]
def get(url, token=None):
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers.get("Content-Encoding"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Encoding"), e.read()
token = os.environ["GITHUB_TOKEN"]
print("dummy=" + token)
out = {}
for coding in ("gzip", "deflate", "rawdeflate", "br", "gzip,br"):
    status, enc, body = get(f"{base}/encoded/{coding}/auth", token)
    out[coding] = [status, enc, body.decode(errors="replace")]
status, enc, body = get(f"{base}/encoded/gzip/token")
issued = json.loads(body)["access_token"]
out["token"] = [status, enc, issued, get(f"{base}/echo-auth", issued)[2].decode()]
status, enc, body = get(f"{base}/encoded/gzip/bomb")
out["bomb"] = [status, enc, body.decode(errors="replace")[:200]]
status, enc, body = get(f"{other}/encoded/gzip/auth", token)  # not a credential host
out["other"] = [status, enc, body.decode(errors="replace")]
print(json.dumps(out))
"""


@pytest.fixture(autouse=True)
def _fresh(tls):
    tls.seen.clear()


@pytest.fixture
def real(monkeypatch) -> str:
    value = github_token()
    monkeypatch.setenv(GH_ENV, value)  # the real secret, only in this host process
    return value


@pytest.fixture
def outcome(offline_set, tls, real, tmp_path):
    policy = write_policy(tmp_path / "p.toml", tls.port)
    audit = tmp_path / "audit.jsonl"
    spec = CellSpec(
        command=["python3", "-c", CLIENT, tls.url(""), tls.url("", host="other.test")],
        packages=["python3"],
        network=network(tls, policy, audit=str(audit)),
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    dummy = dummy_of(result, real)
    out = json.loads(result.stdout.decode().splitlines()[-1])
    return result, dummy, out, [json.loads(line) for line in audit.read_text().splitlines()]


def test_gzip_and_deflate_bodies_are_decoded_then_scrubbed(outcome, tls, real):
    result, dummy, out, _ = outcome
    for coding in ("gzip", "deflate", "rawdeflate"):
        # Decoded for the cell (no Content-Encoding left), the echoed real token scrubbed.
        assert out[coding] == [200, None, f"auth=Bearer {dummy}\n"], (coding, out[coding])
    echoed = [s for s in tls.seen if s.path.endswith("/auth") and "other" not in s.host]
    assert {auth(s) for s in echoed} == {f"Bearer {real}"}  # the upstream did get the real one
    nothing_leaked(result, real)


def test_encodings_nixcell_cannot_read_are_refused_not_forwarded(outcome, real):
    result, _, out, audit = outcome
    for coding in ("br", "gzip,br"):
        status, encoding, body = out[coding]
        assert status == 502 and encoding is None, out[coding]
        assert "cannot inspect" in body and real not in body, body
    refused = [r for r in audit if r["path"].startswith("/encoded/br") and r["status"] == 502]
    assert refused and refused[0]["action"] == "error", audit
    nothing_leaked(result, real)


def test_compressed_oauth_token_response_is_mapped(outcome, tls, real):
    result, _, out, _ = outcome
    status, encoding, issued, echoed = out["token"]
    fixed = "gho_" + "Z" * 36  # what /encoded/gzip/token hands out
    assert status == 200 and encoding is None
    assert issued != fixed and len(issued) == len(fixed) and issued.startswith("gho_")
    assert echoed == f"auth=Bearer {issued}\n"  # scrubbed back to the cell's dummy
    assert [auth(s) for s in tls.seen if s.path == "/echo-auth"] == [f"Bearer {fixed}"]
    nothing_leaked(result, fixed)


def test_token_response_decoding_past_the_cap_is_refused(outcome):
    _, _, out, _ = outcome
    status, _, body = out["bomb"]
    assert status == 502 and "over" in body, out["bomb"]


def test_other_hosts_responses_are_decoded_too(outcome):
    _, dummy, out, _ = outcome
    # other.test holds no credential, but may republish one: its gzip body is decoded (and
    # scrubbed) like the credential host's; the dummy it was sent comes back unchanged.
    assert out["other"] == [200, None, f"auth=Bearer {dummy}\n"], out["other"]


BASIC = """
import base64, json, os, sys, urllib.request
token = os.environ["GITHUB_TOKEN"]
print("dummy=" + token)
req = urllib.request.Request(sys.argv[1] + "/echo-auth")
basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
req.add_header("Authorization", "Basic " + basic)
with urllib.request.urlopen(req, timeout=20) as r:
    body, header = r.read().decode(), r.headers["X-Echo-Auth"]
seen = [base64.b64decode(v.split("Basic ", 1)[1].strip()).decode("latin-1") for v in (body, header)]
print(json.dumps(seen))
"""


def test_basic_auth_echoed_in_base64_is_scrubbed(offline_set, tls, real, tmp_path):
    """git and many clients send ``Basic base64(user:token)``: the proxy swaps the token inside,
    and an upstream echoing that header must not give the cell the real token in base64."""
    policy = write_policy(tmp_path / "p.toml", tls.port)
    spec = CellSpec(
        command=["python3", "-c", BASIC, tls.url("")],
        packages=["python3"],
        network=network(tls, policy),
    )
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 0, result
    dummy = dummy_of(result, real)
    [sent] = [auth(s) for s in tls.seen]
    assert sent is not None and sent.startswith("Basic ")
    assert base64.b64decode(sent[6:]).decode() == f"x-access-token:{real}"  # upstream: the real
    for echoed in json.loads(result.stdout.decode().splitlines()[-1]):
        user, token = echoed.split(":", 1)
        assert user == "x-access-token" and len(token) == len(real)
        assert token[:-2] == dummy[:-2] and real[4:-2] not in token, (token, dummy)
    nothing_leaked(result, real)
