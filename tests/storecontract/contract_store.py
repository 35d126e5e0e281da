"""The JobStore contract (store.py's docstrings), method by method, for every store: run
against SQLite by tests/unit/test_jobs_store.py and against PostgreSQL by
tests/integration/test_jobs_store_pg.py (they give ``make_store``, see ``__init__.py``)."""

from __future__ import annotations

import pytest

from nixcell.errors import StateError
from nixcell.jobs.model import STATES, TERMINAL
from nixcell.jobs.store import TRUNCATED, JobStore
from nixcell.jobs.storeparts import CUT

REQUEST = {"command": ["true"], "env": {"A": "1"}, "packages": ["bash"]}


@pytest.fixture
def store(make_store):
    return make_store(log_limit=5, line_limit=64)


def test_create_is_queued_with_its_first_event(store: JobStore) -> None:
    job = store.create("uid:1", "alice", REQUEST)
    assert (job.id, job.state, job.owner, job.owner_name) == (1, "queued", "uid:1", "alice")
    assert job.request == REQUEST and job.created > 0
    assert (job.started, job.finished, job.exit_code, job.log_lines) == (None, None, None, 0)
    assert store.get(job.id) == job
    [event] = store.events(job.id)
    assert (event.seq, event.kind, event.state, event.time) == (1, "state", "queued", job.created)


def test_ids_count_from_one_and_are_never_reused(make_store) -> None:
    store = make_store()
    ids = [store.create("u", "u", {}).id for _ in range(3)]
    for job_id in ids:
        store.transition(job_id, "cancelled", expect=["queued"])
        store.delete(job_id)
    store.close()
    again = make_store()  # reopened: the sequence goes on after the deleted ones
    assert ids == [1, 2, 3] and again.create("u", "u", {}).id == 4
    again.close()


def test_get_of_a_missing_job_is_none(store: JobStore) -> None:
    assert store.get(1) is None and store.get(-1) is None


LIST_CASES = {
    "everything, newest first": ({}, [6, 5, 4, 3, 2, 1]),
    "one owner": ({"owner": "uid:2"}, [6, 4, 2]),
    "one state": ({"states": ["running"]}, [3]),
    "two states": ({"states": ["running", "failed"]}, [5, 3]),
    "no state chosen selects nothing": ({"states": []}, []),
    "owner and state": ({"owner": "uid:1", "states": ["queued"]}, [1]),
    "limit": ({"limit": 2}, [6, 5]),
    "limit 0": ({"limit": 0}, []),
    "before (paging)": ({"before": 4, "limit": 2}, [3, 2]),
    "an unknown owner": ({"owner": "uid:9"}, []),
}


@pytest.mark.parametrize("query,ids", LIST_CASES.values(), ids=LIST_CASES.keys())
def test_list(store: JobStore, query: dict, ids: list[int]) -> None:
    for n in range(6):
        store.create(f"uid:{n % 2 + 1}", "x", {})
    store.transition(3, "running", expect=["queued"])
    store.transition(5, "failed", expect=["queued"], exit_code=1)
    assert [job.id for job in store.list(**query)] == ids


BAD_QUERIES = {
    "an unknown state": {"states": ["bogus"]},
    "a state in another case": {"states": ["RUNNING"]},
    "a negative limit (LIMIT -1 is no limit in SQLite)": {"limit": -1},
    "a limit that is not a number": {"limit": "10"},
    "a limit that is a bool": {"limit": True},
}


@pytest.mark.parametrize("query", BAD_QUERIES.values(), ids=BAD_QUERIES.keys())
def test_list_refuses_bad_queries(store: JobStore, query: dict) -> None:
    with pytest.raises(StateError) as err:
        store.list(**query)
    assert "\n" not in str(err.value)


def test_queued_is_oldest_first_and_only_queued(store: JobStore) -> None:
    for _ in range(4):
        store.create("u", "u", {})
    store.transition(2, "preparing", expect=["queued"])
    assert [job.id for job in store.queued()] == [1, 3, 4]


TRANSITIONS = {
    # (path of (state, expect) steps) -> final state, or None where the last step must not match
    "claim": ([("preparing", ["queued"])], "preparing"),
    "run": ([("preparing", ["queued"]), ("running", ["preparing"])], "running"),
    "finish": ([("running", ["queued"]), ("succeeded", ["running"])], "succeeded"),
    "cancelled stays cancelled": ([("cancelled", ["queued"]), ("running", ["preparing"])], None),
    "a finished job is not cancelled": (
        [("failed", ["queued"]), ("cancelled", ["queued", "preparing", "running"])],
        None,
    ),
    "expecting nothing matches nothing": ([("running", [])], None),
    "any of several": ([("timed_out", ["preparing", "queued"])], "timed_out"),
}


@pytest.mark.parametrize("steps,final", TRANSITIONS.values(), ids=TRANSITIONS.keys())
def test_transition_is_compare_and_set(store: JobStore, steps, final) -> None:
    job = store.create("u", "u", {})
    results = [store.transition(job.id, state, expect=expect) for state, expect in steps]
    assert all(r is not None for r in results[:-1])
    if final is None:
        assert results[-1] is None
        before = steps[-2][0] if len(steps) > 1 else "queued"
        assert store.get(job.id).state == before
        assert len(store.events(job.id)) == len(steps)  # no event for the refused step
    else:
        assert results[-1].state == final == store.get(job.id).state
        assert [e.state for e in store.events(job.id)] == ["queued", *(s for s, _ in steps)]


def test_transition_records_times_reason_exit_code_and_cell(store: JobStore) -> None:
    job = store.create("u", "u", {})
    running = store.transition(job.id, "running", expect=["queued"], cell_id="c-1")
    assert running.started is not None and running.finished is None and running.cell_id == "c-1"
    done = store.transition(job.id, "timed_out", expect=["running"], reason="after 5s", exit_code=9)
    assert done.started == running.started and done.finished >= done.started
    assert (done.reason, done.exit_code, done.cell_id) == ("after 5s", 9, "c-1")
    assert done.terminal
    last = store.events(job.id)[-1]
    assert (last.state, last.detail, last.time) == ("timed_out", "after 5s", done.finished)


def test_transition_of_a_missing_job_is_none(store: JobStore) -> None:
    assert store.transition(7, "running", expect=["queued"]) is None


@pytest.mark.parametrize("state,expect", [("bogus", ["queued"]), ("running", ["Queued"])])
def test_transition_refuses_unknown_states(store: JobStore, state, expect) -> None:
    job = store.create("u", "u", {})
    with pytest.raises(StateError, match="unknown job state"):
        store.transition(job.id, state, expect=expect)
    assert store.get(job.id).state == "queued"


def test_add_event_numbers_on_after_state_events(store: JobStore) -> None:
    job = store.create("u", "u", {})
    store.transition(job.id, "running", expect=["queued"])
    event = store.add_event(job.id, "attach", "by alice")
    assert (event.seq, event.kind, event.state, event.detail) == (3, "attach", None, "by alice")
    assert store.events(job.id)[-1] == event
    assert [e.seq for e in store.events(job.id, after=1)] == [2, 3]
    with pytest.raises(StateError, match="no job 99"):
        store.add_event(99, "attach")


def test_append_logs_numbers_lines_on(store: JobStore) -> None:
    job = store.create("u", "u", {})
    assert store.append_logs(job.id, [("stdout", "a"), ("stderr", "b")]) == 2
    assert store.append_logs(job.id, []) == 2
    assert store.append_logs(job.id, [("proxy", "c")]) == 3
    lines = store.logs(job.id)
    assert [(ln.seq, ln.stream, ln.text) for ln in lines] == [
        (1, "stdout", "a"),
        (2, "stderr", "b"),
        (3, "proxy", "c"),
    ]
    assert store.get(job.id).log_lines == 3 and not store.get(job.id).log_truncated


def test_the_bound_keeps_one_marker_last_and_counts_on(store: JobStore) -> None:
    job = store.create("u", "u", {})  # log_limit 5
    assert store.append_logs(job.id, [("stdout", str(n)) for n in range(4)]) == 4
    assert store.append_logs(job.id, [("stdout", "4"), ("stdout", "5"), ("stdout", "6")]) == 6
    assert store.append_logs(job.id, [("stderr", "7")]) == 6
    lines = store.logs(job.id)
    assert [ln.text for ln in lines[:5]] == ["0", "1", "2", "3", "4"]
    assert (lines[-1].seq, lines[-1].stream) == (6, "system")
    assert lines[-1].text == TRUNCATED.format(dropped=3)
    job = store.get(job.id)
    assert job.log_truncated and job.log_lines == 6


def test_a_zero_bound_stores_only_the_marker(make_store) -> None:
    store = make_store(log_limit=0)
    job = store.create("u", "u", {})
    assert store.append_logs(job.id, [("stdout", "x")]) == 1
    assert [ln.text for ln in store.logs(job.id)] == [TRUNCATED.format(dropped=1)]


CUTS = {
    "short": ("abc", "abc"),
    "exactly the limit": ("x" * 64, "x" * 64),
    "one byte over": ("x" * 65, "x" * (64 - len(CUT)) + CUT),
    "a multibyte char split by the cut goes": ("x" * 57 + "é" * 10, "x" * 57 + CUT),
    "lone surrogates are replaced, not an error": ("a\udcffb", "a?b"),
    "NUL and CR are kept as they are": ("a\x00b\rc", "a\x00b\rc"),
}


@pytest.mark.parametrize("text,stored", CUTS.values(), ids=CUTS.keys())
def test_lines_are_cut_at_the_line_limit(store: JobStore, text: str, stored: str) -> None:
    job = store.create("u", "u", {})
    store.append_logs(job.id, [("stdout", text)])
    [line] = store.logs(job.id)
    assert line.text == stored and len(line.text.encode()) <= 64


def test_append_logs_refuses_unknown_streams_and_jobs_storing_nothing(store: JobStore) -> None:
    job = store.create("u", "u", {})
    with pytest.raises(StateError, match="unknown log stream"):
        store.append_logs(job.id, [("stdout", "a"), ("secret", "b")])
    with pytest.raises(StateError, match="no job 9"):
        store.append_logs(9, [("stdout", "a")])
    assert store.logs(job.id) == []


LOG_QUERIES = {
    "all": ({}, [1, 2, 3, 4, 5]),
    "after": ({"after": 3}, [4, 5]),
    "one stream": ({"streams": ["stderr"]}, [2, 4]),
    "no stream chosen": ({"streams": []}, []),
    "tail": ({"tail": 2}, [4, 5]),
    "tail of one stream": ({"tail": 1, "streams": ["stdout"]}, [5]),
    "tail longer than the log": ({"tail": 50}, [1, 2, 3, 4, 5]),
    "tail 0": ({"tail": 0}, []),
    "limit pages from the start": ({"limit": 2}, [1, 2]),
    "tail then limit": ({"tail": 3, "limit": 2}, [3, 4]),
    "after and tail": ({"after": 4, "tail": 3}, [5]),
}


@pytest.mark.parametrize("query,seqs", LOG_QUERIES.values(), ids=LOG_QUERIES.keys())
def test_logs_queries(store: JobStore, query: dict, seqs: list[int]) -> None:
    job = store.create("u", "u", {})
    streams = ["stdout", "stderr", "system", "stderr", "stdout"]
    store.append_logs(job.id, [(s, f"line {n}") for n, s in enumerate(streams, 1)])
    lines = store.logs(job.id, **query)
    assert [ln.seq for ln in lines] == seqs
    assert all(ln.text == f"line {ln.seq}" and ln.job_id == job.id for ln in lines)


@pytest.mark.parametrize(
    "query", [{"streams": ["STDOUT"]}, {"tail": -1}, {"limit": -5}, {"limit": 1.5}]
)
def test_logs_refuses_bad_queries(store: JobStore, query: dict) -> None:
    job = store.create("u", "u", {})
    with pytest.raises(StateError):
        store.logs(job.id, **query)


def test_logs_of_a_job_are_its_own(store: JobStore) -> None:
    a, b = store.create("u", "u", {}), store.create("u", "u", {})
    store.append_logs(a.id, [("stdout", "a")])
    store.append_logs(b.id, [("stdout", "b")])
    assert [ln.text for ln in store.logs(b.id)] == ["b"]


def test_unfinished_and_expired(store: JobStore) -> None:
    ids = [store.create("u", "u", {}).id for _ in range(5)]
    store.transition(ids[1], "preparing", expect=["queued"])
    store.transition(ids[2], "running", expect=["queued"])
    store.transition(ids[3], "succeeded", expect=["queued"])
    cut = store.get(ids[3]).finished
    store.transition(ids[4], "error", expect=["queued"], reason="daemon restarted")
    assert [job.id for job in store.unfinished()] == [ids[1], ids[2]]
    assert store.expired(cut) == []
    assert [job.id for job in store.expired(cut + 1e6)] == [ids[3], ids[4]]


def test_delete_takes_events_and_logs_and_refuses_live_jobs(store: JobStore) -> None:
    job = store.create("u", "u", {})
    store.append_logs(job.id, [("stdout", "a")])
    with pytest.raises(StateError, match="only finished jobs"):
        store.delete(job.id)
    store.transition(job.id, "cancelled", expect=["queued"])
    store.delete(job.id)
    assert store.get(job.id) is None and store.events(job.id) == [] and store.logs(job.id) == []
    store.delete(job.id)  # gone already: nothing to do


def test_counts_list_every_state(store: JobStore) -> None:
    assert store.counts() == dict.fromkeys(STATES, 0)
    for _ in range(3):
        store.create("u", "u", {})
    store.transition(1, "running", expect=["queued"])
    assert store.counts() == {**dict.fromkeys(STATES, 0), "queued": 2, "running": 1}


def test_durations_of_finished_jobs_that_ran(store: JobStore) -> None:
    for _ in range(3):
        store.create("u", "u", {})
    store.transition(1, "running", expect=["queued"])
    store.transition(1, "succeeded", expect=["running"])
    store.transition(2, "cancelled", expect=["queued"])  # never ran: no duration
    store.transition(3, "running", expect=["queued"])
    store.transition(3, "failed", expect=["running"])
    found = store.durations()
    assert [state for state, _ in found] == ["failed", "succeeded"]
    assert all(seconds >= 0 for _, seconds in found)
    assert len(store.durations(limit=1)) == 1
    assert {s for s, _ in found} <= TERMINAL


def test_a_closed_store_refuses(make_store) -> None:
    store = make_store()
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.get(1)


def test_jobs_survive_reopening(make_store) -> None:
    store = make_store()
    job = store.create("uid:5", "eve", REQUEST)
    store.append_logs(job.id, [("stdout", "kept")])
    store.close()
    store = make_store()
    assert store.get(job.id) == store.list()[0]
    assert store.get(job.id).request == REQUEST
    assert [ln.text for ln in store.logs(job.id)] == ["kept"]
    store.close()


@pytest.mark.parametrize(
    "request_",
    [{"x": float("nan")}, {"x": float("inf")}, {"x": object()}, {1: "a", "b": 2}, {"x": b"raw"}],
    ids=["NaN", "infinity", "an object", "mixed key types", "bytes"],
)
def test_a_request_that_is_not_plain_json_is_refused(store: JobStore, request_) -> None:
    with pytest.raises(StateError, match="cannot be stored") as err:
        store.create("u", "u", request_)
    assert "\n" not in str(err.value) and store.list() == []


TEXTS = {
    "a NUL": "a\x00b",
    "a lone surrogate": "a\udcffb",
}


@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_text_fields_a_database_cannot_hold_are_refused(store: JobStore, text: str) -> None:
    """PostgreSQL's TEXT holds no NUL; neither store takes one, nor what is not UTF-8."""
    for make in (lambda: store.create(text, "x", {}), lambda: store.create("x", text, {})):
        with pytest.raises(StateError, match="cannot be stored") as err:
            make()
        assert "\n" not in str(err.value)
    assert store.list() == []
    job = store.create("u", "u", {})
    with pytest.raises(StateError, match="cannot be stored"):
        store.transition(job.id, "failed", expect=["queued"], reason=text)
    with pytest.raises(StateError, match="cannot be stored"):
        store.add_event(job.id, "attach", text)
    assert store.get(job.id).state == "queued" and len(store.events(job.id)) == 1
