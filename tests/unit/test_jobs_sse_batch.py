"""``sse.event_stream`` batches what is waiting into one write: every item still goes out once,
in order, as its own well-formed frame; a source's error after some items still sends those
items first, then the error frame; the stream ends at the source's end."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.jobs.model import Event, LogLine
from nixcell.jobs.sse import BATCH, event_stream


def _frames(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line[:1] != ":")
        if "data" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def _run(items: list, fail: bool = False, pause_every: int = 0) -> list[str]:
    async def source():
        for i, item in enumerate(items):
            if pause_every and i % pause_every == 0:
                await asyncio.sleep(0)  # some items arrive alone, some in a crowd
            yield item
        if fail:
            raise RuntimeError("boom")

    async def main() -> list[str]:
        return [chunk async for chunk in event_stream(source(), asyncio.Event(), lambda e: 0)]

    return asyncio.run(main())


def _lines(n: int) -> list[LogLine]:
    return [LogLine(1, i, 1.0, "stdout", f"line {i}\nforged: x") for i in range(1, n + 1)]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3 * BATCH + 7), fail=st.booleans(), pause=st.sampled_from([0, 1, 7, 499]))
def test_every_item_once_in_order(n: int, fail: bool, pause: int) -> None:
    final = Event(1, 3, 2.0, "state", "succeeded", None)
    chunks = _run([*_lines(n), final], fail=fail, pause_every=pause)
    frames = _frames("".join(chunks))
    texts = [data["text"] for kind, data in frames if kind == "log"]
    assert texts == [f"line {i}\nforged: x" for i in range(1, n + 1)]
    kinds = [kind for kind, _ in frames]
    assert kinds[n] == "state"
    assert kinds[n + 1 :] == (["error"] if fail else [])
    if fail:
        assert frames[-1][1] == {"error": "internal error"}
    assert len(chunks) <= n + 3  # batched: never more writes than items


def test_a_crowd_goes_out_in_few_writes() -> None:
    chunks = _run(_lines(2 * BATCH))
    assert len(_frames("".join(chunks))) == 2 * BATCH
    assert len(chunks) < 2 * BATCH // 10
