"""A job's network: the proxy's decisions as the ``proxy`` log stream, the audit answer and the
metrics, and a server credential that never shows its real value anywhere the service keeps or
answers. The only upstream is the loopback test server (``plain``); denied names never leave."""

from __future__ import annotations

import os

import pytest
from tests.integration.jobsrig import ALICE, serve, settle

from nixcell.jobs.model import JobRequest

pytestmark = pytest.mark.integration

REAL = "realsecret-0123456789abcdef"


@pytest.fixture
def credential(monkeypatch):
    monkeypatch.setenv("NIXCELL_TEST_JOB_TOKEN", REAL)
    return {
        "name": "tok",
        "source": "env:NIXCELL_TEST_JOB_TOKEN",
        "hosts": ["127.0.0.1"],
        "header": "Authorization",
        "format": "Bearer {token}",
        "env": "TOKEN",
        "allow_plaintext": True,
    }


def test_proxy_stream_audit_and_metrics(tmp_path, offline_set, plain, credential) -> None:
    url = f"http://127.0.0.1:{plain.port}"
    text = (
        f'curl -s -H "Authorization: Bearer $TOKEN" "{url}/echo-auth/$TOKEN"; echo; '
        "curl -s -o /dev/null -w '%{http_code}\\n' http://denied.test/nope; "
        'echo "dummy=$TOKEN"'
    )
    request = JobRequest(
        packages=["bash", "coreutils", "curl"],
        script=text,
        policies=["loopback"],
        credentials=["tok"],
    )
    policy = tmp_path / "loopback.toml"
    policy.write_text('[[rules]]\naction = "allow"\n[rules.pattern]\ncidr = "127.0.0.1/32"\n')

    async def body(svc):
        job = await svc.submit(ALICE, request)
        job = await settle(svc, job.id)
        lines = svc.logs(ALICE, job.id)
        return job, lines, svc.audit(ALICE, job.id), svc.metrics(), svc.shown(ALICE, job)

    job, lines, audit, metrics, shown = serve(
        tmp_path, body, credentials=(credential,), policies={"loopback": str(policy)}
    )
    texts = [f"{x.stream}: {x.text}" for x in lines]
    assert job.state == "succeeded", texts
    proxy = [x.text for x in lines if x.stream == "proxy"]
    assert any(t.startswith("allow GET 127.0.0.1:") and "/echo-auth/" in t for t in proxy), proxy
    assert any(t.startswith("deny GET denied.test/nope") for t in proxy), proxy
    assert "403" in [x.text for x in lines if x.stream == "stdout"]
    assert plain.seen and REAL in plain.seen[-1].headers.get("authorization", "")
    assert {a["decision"] for a in audit} == {"allow", "deny"}
    assert {a["host"] for a in audit} == {"127.0.0.1", "denied.test"}
    assert 'nixcell_proxy_decisions_total{decision="deny"} 1' in metrics
    assert 'nixcell_proxy_decisions_total{decision="allow"} 1' in metrics
    everything = repr(lines) + repr(audit) + repr(shown)
    assert REAL not in everything, "the real credential reached the logs, audit or API"
    state = os.path.join(tmp_path, "state")
    for root, _, files in os.walk(state):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                assert REAL.encode() not in f.read(), f"the real credential is in {name}"
