"""Properties of the log store over any sequence of appends (hypothesis)."""

from __future__ import annotations

import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.jobs.model import STREAMS
from nixcell.jobs.sqlite import CUT, SqliteStore
from nixcell.jobs.store import TRUNCATED

LINE = st.tuples(st.sampled_from(STREAMS), st.text(max_size=40))
BATCHES = st.lists(st.lists(LINE, max_size=12), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bound=st.integers(0, 20), batches=BATCHES)
def test_any_appends_keep_seqs_contiguous_and_the_marker_last(bound: int, batches) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"{tmp}/j.db", log_limit=bound, line_limit=32)
        job = store.create("u", "u", {})
        sent: list[tuple[str, str]] = []
        for batch in batches:
            last = store.append_logs(job.id, batch)
            sent.extend(batch)
            assert last == store.get(job.id).log_lines
        lines = store.logs(job.id, limit=10_000)
        store.close()
    assert [ln.seq for ln in lines] == list(range(1, len(lines) + 1))
    assert len(lines) <= bound + 1
    dropped = len(sent) - bound
    if dropped > 0:
        assert len(lines) == bound + 1
        assert (lines[-1].stream, lines[-1].text) == ("system", TRUNCATED.format(dropped=dropped))
        kept = lines[:-1]
    else:
        assert len(lines) == len(sent)
        kept = lines
    for line, (stream, text) in zip(kept, sent, strict=False):  # the first ones, as they came
        assert line.stream == stream
        data = text.encode("utf-8", "replace")
        if len(data) <= 32:
            assert line.text == data.decode()
        else:
            assert line.text.endswith(CUT) and data.startswith(line.text[: -len(CUT)].encode())
            assert len(line.text.encode()) <= 32


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=40, deadline=None)
@given(request=JSON, owner=st.text(min_size=1, max_size=20))
def test_a_request_and_owner_come_back_as_stored(request, owner: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(f"{tmp}/j.db")
        job = store.create(owner, owner, {"r": request})
        again = store.get(job.id)
        store.close()
    assert again == job and again.request == {"r": request} and again.owner == owner
