"""Properties of the log store over any sequence of appends (hypothesis): the contract for every
store (``tests/storecontract/__init__.py``). The examples of one test share its database, each
on a job of its own."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nixcell.jobs.model import STREAMS
from nixcell.jobs.store import TRUNCATED
from nixcell.jobs.storeparts import CUT

_SHARED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]

LINE = st.tuples(st.sampled_from(STREAMS), st.text(max_size=40))
BATCHES = st.lists(st.lists(LINE, max_size=12), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=_SHARED)
@given(bound=st.integers(0, 20), batches=BATCHES)
def test_any_appends_keep_seqs_contiguous_and_the_marker_last(
    make_store, bound: int, batches
) -> None:
    store = make_store(log_limit=bound, line_limit=32)
    try:
        job = store.create("u", "u", {})
        sent: list[tuple[str, str]] = []
        for batch in batches:
            last = store.append_logs(job.id, batch)
            sent.extend(batch)
            assert last == store.get(job.id).log_lines
        lines = store.logs(job.id, limit=10_000)
    finally:
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


OWNER = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None, suppress_health_check=_SHARED)
@given(request=JSON, owner=OWNER)  # a NUL is refused (test_text_fields_a_database_cannot_hold…)
def test_a_request_and_owner_come_back_as_stored(make_store, request, owner: str) -> None:
    store = make_store()
    try:
        job = store.create(owner, owner, {"r": request})
        again = store.get(job.id)
    finally:
        store.close()
    assert again == job and again.request == {"r": request} and again.owner == owner
