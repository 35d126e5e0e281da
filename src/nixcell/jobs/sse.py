"""Server-sent events for the API: log lines and state events as ``text/event-stream``.

The service's iterator is pumped by its own task into a small queue, so the response can send a
keep-alive comment every ``PING`` seconds without cancelling the service's iterator mid-item.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from nixcell.jobs.model import Event, LogLine

PING = 15.0
BATCH = 500  # items sent in one write at most
_DONE = object()


def line_json(line: LogLine) -> dict[str, Any]:
    return {"seq": line.seq, "time": line.time, "stream": line.stream, "text": line.text}


def event_json(event: Event, exit_code: int | None = None) -> dict[str, Any]:
    exit_code = getattr(event, "exit_code", None) if exit_code is None else exit_code
    data = {
        "job": event.job_id,
        "seq": event.seq,
        "time": event.time,
        "kind": event.kind,
        "state": event.state,
        "detail": event.detail,
    }
    if exit_code is not None:
        data["exit_code"] = exit_code
    return data


def frame(kind: str, data: dict[str, Any], ident: int | None = None) -> str:
    # json.dumps escapes every newline: one data line, never a forged frame
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


DRAIN = 1.0  # seconds a stream still forwards what its source had to say once shutdown began


async def _drained(queue: asyncio.Queue[Any]) -> AsyncIterator[list[Any]]:
    """At shutdown: what the source still delivers within ``DRAIN`` s (the followers were
    woken by the service's stop and read their job's last lines and final state)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN
    while (left := deadline - loop.time()) > 0:
        try:
            item = await asyncio.wait_for(queue.get(), left)
        except TimeoutError:
            return
        if item is _DONE or isinstance(item, Exception):
            return
        yield [item]


async def pumped(
    source: AsyncIterator[Any], closing: asyncio.Event, ping: float = PING
) -> AsyncIterator[list[Any]]:
    """Batches of ``source``'s items: every item already waiting (at most ``BATCH``), so a
    fast log goes out in few writes; ``[]`` for each ``ping`` seconds without one; ends at
    the source's end or when ``closing`` is set (the daemon shuts down)."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=256)  # a slow reader holds up the pump

    async def pump() -> None:
        try:
            async for item in source:
                await queue.put(item)
        except Exception as exc:  # handed to the reader, which ends the stream
            await queue.put(exc)
        finally:
            await queue.put(_DONE)

    task = asyncio.create_task(pump())
    closer = asyncio.create_task(closing.wait())
    try:
        while True:
            if queue.empty():
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait(
                    {getter, closer}, timeout=ping, return_when="FIRST_COMPLETED"
                )
                if getter not in done:
                    getter.cancel()
                    if closer in done:
                        async for last in _drained(queue):
                            yield last
                        return
                    yield []
                    continue
                batch = [getter.result()]
            elif closer.done():
                async for last in _drained(queue):
                    yield last
                return
            else:
                batch = [queue.get_nowait()]
            while len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            for i, item in enumerate(batch):
                if item is _DONE or isinstance(item, Exception):
                    if i:
                        yield batch[:i]
                    if item is _DONE:
                        return
                    raise item
            yield batch
    finally:
        for t in (task, closer):
            t.cancel()
        for t in (task, closer):
            with contextlib.suppress(BaseException):
                await t
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def event_stream(
    items: AsyncIterator[Any], closing: asyncio.Event, exit_code: Callable[[Event], int | None]
) -> AsyncIterator[str]:
    """The SSE text of a follow (log lines and events) or an event feed."""
    try:
        async for batch in pumped(items, closing):
            if not batch:
                yield ": ping\n\n"
                continue
            frames = []
            for item in batch:
                if isinstance(item, LogLine):
                    frames.append(frame("log", line_json(item), item.seq))
                elif isinstance(item, Event):
                    frames.append(frame(item.kind, event_json(item, exit_code(item))))
            yield "".join(frames)
    except Exception as exc:  # the stream has started: the error is its last frame
        from nixcell.jobs.contract import JobError

        message = exc.message if isinstance(exc, JobError) else "internal error"
        if not isinstance(exc, JobError):
            import logging

            logging.getLogger(__name__).exception("event stream failed")
        yield frame("error", {"error": message})
