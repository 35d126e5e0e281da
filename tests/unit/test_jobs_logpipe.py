"""A job's output through a real pipe into a real SqliteStore (``jobs/logpipe.py``).

Table-driven: whatever bytes a cell writes, in whatever chunks, the stored lines are the
newline-split lines in order, a partial last line is kept, an over-long line is cut visibly and
the rest of it skipped, and invalid UTF-8 never raises.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.jobs.logpipe import CUT, MAX_LINE, LogSink, read_lines
from nixcell.jobs.sqlite import SqliteStore


def run_pipe(store: SqliteStore, job_id: int, chunks: list[bytes], **sink_args) -> list[int]:
    """Write ``chunks`` into a pipe from a thread; read it as the service does. Wake-ups."""
    woken: list[int] = []

    async def main() -> None:
        r, w = os.pipe()
        sink = LogSink(store, job_id, woken.append, **sink_args)
        sink.start()

        def writer() -> None:
            with os.fdopen(w, "wb", buffering=0) as f:
                for chunk in chunks:
                    f.write(chunk)

        await asyncio.gather(read_lines(r, "stdout", sink), asyncio.to_thread(writer))
        await sink.close()

    asyncio.run(main())
    return woken


def expected_lines(data: bytes) -> list[str]:
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    out = []
    for part in parts:
        if len(part) > MAX_LINE:
            part = part[:MAX_LINE]
            out.append(part.removesuffix(b"\r").decode("utf-8", "replace") + CUT)
        else:
            out.append(part.removesuffix(b"\r").decode("utf-8", "replace"))
    return out


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(str(tmp_path / "jobs.db"), line_limit=MAX_LINE * 2)
    yield s
    s.close()


CASES = {
    "lines": [b"a\nb\nc\n"],
    "partial last line": [b"a\nb"],
    "split across chunks": [b"hel", b"lo\nwor", b"ld\n"],
    "empty lines": [b"\n\n\n"],
    "crlf": [b"dos\r\nline\r\n"],
    "bad utf-8": [b"\xff\xfe ok\n\xc3\n"],
    "nul and escapes": [b"a\x00b\x1b[31mred\n"],
    "over-long line then more": [b"x" * (MAX_LINE + 10) + b"\nnext\n"],
    "over-long across chunks": [b"y" * 40000, b"y" * 40000, b"y" * 40000 + b"\nafter"],
    "nothing": [],
}


@pytest.mark.parametrize("chunks", CASES.values(), ids=CASES.keys())
def test_pipe_to_lines(store, chunks) -> None:
    job = store.create("uid:1", "a", {})
    run_pipe(store, job.id, chunks)
    got = [line.text for line in store.logs(job.id)]
    assert got == expected_lines(b"".join(chunks))
    assert all(line.stream == "stdout" for line in store.logs(job.id))


def test_many_lines_in_order_in_batches(store) -> None:
    job = store.create("uid:1", "a", {})
    data = b"".join(b"line %d\n" % i for i in range(1, 20001))
    woken = run_pipe(store, job.id, [data[i : i + 4093] for i in range(0, len(data), 4093)])
    lines = store.logs(job.id, limit=50000)
    assert [line.text for line in lines] == [f"line {i}" for i in range(1, 20001)]
    assert [line.seq for line in lines] == list(range(1, 20001))
    assert 1 < len(woken) < 20000  # batched, and followers were woken along the way


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_any_bytes_any_chunks(tmp_path_factory, chunks) -> None:
    store = SqliteStore(str(tmp_path_factory.mktemp("s") / "jobs.db"))
    try:
        job = store.create("uid:1", "a", {})
        run_pipe(store, job.id, chunks, batch=3, max_pending=5)
        assert [line.text for line in store.logs(job.id)] == expected_lines(b"".join(chunks))
    finally:
        store.close()


def test_redaction(store) -> None:
    job = store.create("uid:1", "a", {})
    run_pipe(
        store,
        job.id,
        [b"token=hunter22 and hunter22\n"],
        redact=lambda t: t.replace("hunter22", "<secret>"),
    )
    assert [line.text for line in store.logs(job.id)] == ["token=<secret> and <secret>"]


def test_a_failing_store_drops_lines_but_never_stalls_the_reader(tmp_path) -> None:
    """The store closed under the sink: every batch fails, the pipe is still read to EOF."""
    store = SqliteStore(str(tmp_path / "jobs.db"))
    job = store.create("uid:1", "a", {})
    store.close()
    data = b"".join(b"%d\n" % i for i in range(20000))
    sink_args = {"batch": 10, "max_pending": 20}

    async def main() -> int:
        r, w = os.pipe()
        sink = LogSink(store, job.id, lambda _: None, **sink_args)
        sink.start()

        def writer() -> None:
            with os.fdopen(w, "wb", buffering=0) as f:
                f.write(data)

        await asyncio.gather(read_lines(r, "stdout", sink), asyncio.to_thread(writer))
        await sink.close()
        return sink.dropped

    assert asyncio.run(main()) == 20000
