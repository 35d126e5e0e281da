"""metrics.render read back by prometheus_client's own text parser (not string compares); the
store's part is tests/storecontract/contract_metrics.py (shared with PgStore)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.storecontract.contract_metrics import parse_metrics, test_the_store_feeds_render  # noqa: F401
from tests.storecontract.sqlite import sqlite_make_store  # noqa: F401 - the contract's fixture

from nixcell.jobs import metrics
from nixcell.jobs.model import STATES, TERMINAL


def test_every_family_with_its_type() -> None:
    text = metrics.render(
        {"queued": 3, "running": 2, "succeeded": 9},
        3,
        [("succeeded", 0.3), ("succeeded", 7.0), ("failed", 4000.0)],
        {"allow": 12, "deny": 2},
        2,
    )
    found = parse_metrics(text)
    assert set(found) == {
        "nixcell_jobs:gauge",
        "nixcell_queue_length:gauge",
        "nixcell_jobs_running:gauge",
        "nixcell_job_duration_seconds:histogram",
        "nixcell_proxy_decisions:counter",  # the parser drops the _total suffix of the family
    }
    jobs = {dict(k[1])["state"]: v for k, v in found["nixcell_jobs:gauge"].items()}
    assert jobs == {**dict.fromkeys(STATES, 0), "queued": 3, "running": 2, "succeeded": 9}
    assert list(found["nixcell_queue_length:gauge"].values()) == [3]
    assert list(found["nixcell_jobs_running:gauge"].values()) == [2]
    proxy = found["nixcell_proxy_decisions:counter"]
    assert proxy == {
        ("nixcell_proxy_decisions_total", (("decision", "allow"),)): 12,
        ("nixcell_proxy_decisions_total", (("decision", "deny"),)): 2,
    }
    hist = found["nixcell_job_duration_seconds:histogram"]

    def sample(suffix: str, state: str, le: str | None = None) -> float:
        labels = {"state": state, **({"le": le} if le else {})}
        return hist[(f"nixcell_job_duration_seconds{suffix}", tuple(sorted(labels.items())))]

    assert sample("_count", "succeeded") == 2 and sample("_sum", "succeeded") == pytest.approx(7.3)
    assert sample("_bucket", "succeeded", "0.1") == 0
    assert sample("_bucket", "succeeded", "0.5") == 1
    assert sample("_bucket", "succeeded", "10.0") == 2
    assert sample("_bucket", "failed", "3600.0") == 0
    assert sample("_bucket", "failed", "+Inf") == 1
    assert sample("_count", "error") == 0  # every terminal state has its series


def test_nothing_yet_is_all_zeros_and_still_parses() -> None:
    found = parse_metrics(metrics.render({}, 0, [], {}, 0))
    assert all(v == 0 for family in found.values() for v in family.values())
    states = {dict(k[1]).get("state") for k in found["nixcell_job_duration_seconds:histogram"]}
    assert states == set(TERMINAL)


HOSTILE = {
    "a quote and brace": 'x"} 1\nnixcell_jobs{state="forged',
    "a backslash at the end": "x\\",
    "a newline": "a\nb",
    "unicode": "zé✓",
}


@pytest.mark.parametrize("name", HOSTILE.values(), ids=HOSTILE.keys())
def test_label_values_cannot_forge_samples(name: str) -> None:
    text = metrics.render({name: 1}, 0, [(name, 1.0)], {name: 5}, 0)
    found = parse_metrics(text)
    jobs = {dict(k[1])["state"]: v for k, v in found["nixcell_jobs:gauge"].items()}
    assert jobs[name] == 1 and len(jobs) == len(STATES) + 1
    assert "forged" not in jobs
    decisions = {dict(k[1])["decision"] for k in found["nixcell_proxy_decisions:counter"]}
    assert decisions == {"allow", "deny", name}


BAD_NUMBERS = {
    "negative duration counts as 0": [("succeeded", -3.0)],
    "NaN is left out": [("succeeded", math.nan)],
    "infinity is left out": [("succeeded", math.inf)],
    "a string is left out": [("succeeded", "12")],
}


@pytest.mark.parametrize("durations", BAD_NUMBERS.values(), ids=BAD_NUMBERS.keys())
def test_odd_numbers_still_give_a_valid_page(durations) -> None:
    found = parse_metrics(
        metrics.render({"queued": -1, "failed": True}, -2, durations, {"deny": -1}, -1)
    )
    hist = found["nixcell_job_duration_seconds:histogram"]
    assert all(v >= 0 and math.isfinite(v) for v in hist.values())
    assert all(v == 0 for v in found["nixcell_jobs:gauge"].values())


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(sorted(TERMINAL)), st.floats(0, 1e6)), max_size=50),
)
def test_buckets_are_cumulative_and_end_at_the_count(durations) -> None:
    hist = parse_metrics(metrics.render({}, 0, durations, {}, 0))[
        "nixcell_job_duration_seconds:histogram"
    ]
    for state in TERMINAL:
        buckets = sorted(
            (float(dict(k[1])["le"]), v)
            for k, v in hist.items()
            if k[0].endswith("_bucket") and dict(k[1])["state"] == state
        )
        values = [v for _, v in buckets]
        assert values == sorted(values)
        assert values[-1] == sum(1 for s, _ in durations if s == state)
