"""The store's part of /metrics: what it counts feeds metrics.render, read back by
prometheus_client's own parser. The contract for every store (``__init__.py``)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from nixcell.jobs import metrics


def parse_metrics(text: str) -> dict[str, dict[tuple, float]]:
    """{family name: {(sample name, sorted labels): value}}, with each family's type checked."""
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        samples = found.setdefault(f"{family.name}:{family.type}", {})
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return found


def test_the_store_feeds_render(make_store) -> None:
    store = make_store()
    for _ in range(3):
        store.create("u", "u", {})
    store.transition(1, "running", expect=["queued"])
    store.transition(1, "succeeded", expect=["running"], exit_code=0)
    text = metrics.render(store.counts(), len(store.queued()), store.durations(), {}, 0)
    found = parse_metrics(text)
    jobs = {dict(k[1])["state"]: v for k, v in found["nixcell_jobs:gauge"].items()}
    assert (jobs["queued"], jobs["succeeded"]) == (2, 1)
    hist = found["nixcell_job_duration_seconds:histogram"]
    assert hist[("nixcell_job_duration_seconds_count", (("state", "succeeded"),))] == 1
