"""`--learn`: the recorded run becomes a policy that allows exactly that run, and reads back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from nixcell.net.learn import Recorder, path_patterns, render_policy
from nixcell.net.policy import Request, load_policy, parse_policy

T0 = dt.datetime(2026, 1, 2, 10, 0, 0, tzinfo=dt.UTC)


def clock():
    ticks = iter(range(1000))
    return lambda: T0 + dt.timedelta(seconds=next(ticks))


RUN = [
    Request("GET", "https", "api.github.com", 443, "/repos/a/b"),
    Request("GET", "https", "api.github.com", 443, "/repos/c"),
    Request("POST", "https", "api.github.com", 443, "/repos/c"),
    Request("GET", "https", "api.github.com", 443, "/zen"),
    Request("GET", "https", "api.github.com", 443, "/zen"),
    Request("GET", "http", "api.github.com", 80, "/zen"),
    Request("get", "http", "localhost", 8080, "/health"),
    Request("PUT", "https", "::1", 8443, "/a(b)/x*y"),
    Request("OPTIONS", "https", "cdn.example.com", 443, "*"),
    Request("GET", "https", "cdn.example.com", 443, "/"),
]


@pytest.fixture
def recorder() -> Recorder:
    rec = Recorder(clock=clock())
    for i, req in enumerate(RUN):
        rec.record(req, None if i == 3 else 200)
    return rec


def test_round_trip_allows_exactly_the_run(recorder: Recorder, tmp_path: Path) -> None:
    path = tmp_path / "learned.toml"
    path.write_text(render_policy(recorder.records))
    pol = load_policy(path)
    for req in RUN:
        decision = pol.decide(req)
        assert decision.allowed, (req, decision.explain())
        if req.scheme == "https":
            assert pol.decide_connect(req.host, req.port).allowed
    assert not pol.decide(Request("GET", "https", "evil.com", 443, "/zen")).allowed
    assert not pol.decide(Request("GET", "https", "github.com", 443, "/zen")).allowed
    assert not pol.decide(Request("DELETE", "https", "api.github.com", 443, "/zen")).allowed
    assert not pol.decide(Request("GET", "https", "api.github.com", 443, "/admin")).allowed
    assert not pol.decide(Request("GET", "https", "api.github.com", 443, "/zen/x")).allowed
    assert not pol.decide(Request("GET", "https", "localhost", 8081, "/health")).allowed
    assert not pol.decide(Request("GET", "https", "cdn.example.com", 443, "/x")).allowed


def test_rendered_text(recorder: Recorder) -> None:
    text = recorder.render()
    assert text.startswith("# Written by nixcell --learn")
    assert (
        "# api.github.com: 6 requests, first seen 2026-01-02T10:00:00+00:00; "
        "http:80, https:443; status 200, no response\n"
        "[[rules]]\n"
        'action = "allow"\n'
        'methods = ["GET", "POST"]\n'
        "[rules.pattern]\n"
        'host = "api.github.com"\n'
        'path = ["/repos/**", "/zen"]\n'
    ) in text
    assert 'methods = ["GET"]\nport = 8080\n[rules.pattern]\nhost = "localhost"\n' in text
    assert "# [::1]:8443: 1 request," in text
    assert 'path = ["re:/a\\\\(b\\\\)/x\\\\*y"]' in text
    assert text.count("[[rules]]") == 4  # 80 and 443 share one rule: a rule's default ports
    assert render_policy(recorder) == text  # a Recorder is an iterable of records
    assert len(recorder) == len(recorder.records) == 10


def test_recorder_counts_repeats() -> None:
    rec = Recorder(clock=clock())
    for _ in range(3):
        rec.record(Request("get", "https", "a.com", 443, "/x"), 200)
    rec.record(Request("GET", "https", "a.com", 443, "/x"), 404)
    counts = sorted((r.request.method, r.status, r.count) for r in rec.records)
    assert counts == [("GET", 200, 3), ("GET", 404, 1)]
    assert rec.records[0].first_seen == T0


def test_empty_run_denies_everything() -> None:
    text = render_policy([])
    pol = parse_policy(text, "learned.toml")
    assert pol.rules == () and "denies everything" in text


@pytest.mark.parametrize(
    ("paths", "expected"),
    [
        (["/zen"], ["/zen"]),
        (["/repos/a/b", "/repos/c"], ["/repos/**"]),
        (["/repos/o/r/issues", "/repos/o/r/pulls"], ["/repos/o/**"]),
        (["/repos/o/r/issues", "/repos/o/r/issues/1"], ["/repos/o/**"]),
        (["/a", "/a/b"], ["/a/**"]),
        (["/a", "/a/"], ["/a/**"]),
        (["/a", "/b"], ["/a", "/b"]),
        (["/"], ["/"]),
        (["/", "/x"], ["/", "/x"]),
        (["/x*y"], ["re:/x\\*y"]),
        (["/v1+/a", "/v1+/b"], ["re:/v1\\+(?:/.*)?"]),
        (["/a.b"], ["/a.b"]),
        (["/a.*b"], ["re:/a\\.\\*b"]),
        (["/a%2Fb"], ["/a%2Fb"]),
        (["*"], ["re:\\*"]),
    ],
)
def test_path_patterns(paths: list[str], expected: list[str]) -> None:
    assert path_patterns(paths) == expected


@pytest.mark.parametrize(
    "paths",
    [
        ["/api/v4/projects/g%2Fp/merge_requests"],
        ["/api/v4/projects/g%2Fp/mr", "/api/v4/projects/g%2Fq/mr"],
        ["/a;b", "/a%3Bc"],
        ["/caf%C3%A9", "/x%20y", "/a%40b"],
        ["/files/%252F"],
    ],
)
def test_learned_escaped_paths_read_back_and_allow_the_run(paths: list[str]) -> None:
    rec = Recorder(clock=clock())
    for path in paths:
        rec.record(Request("GET", "https", "gitlab.test", 443, path), 200)
    text = rec.render()
    needs = any(p for p in paths if "%2F" in p or ";" in p or "%25" in p or "%C3" in p)
    assert ("allow_encoded = true" in text) is needs
    pol = parse_policy(text, "learned.toml")
    for path in paths:
        assert pol.decide(Request("GET", "https", "gitlab.test", 443, path)).allowed, (path, text)
    assert not pol.decide(Request("GET", "https", "gitlab.test", 443, "/other")).allowed
