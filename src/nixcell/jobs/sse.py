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


async def pumped(
    source: AsyncIterator[Any], closing: asyncio.Event, ping: float = PING
) -> AsyncIterator[Any]:
    """Items of ``source``; ``None`` for each ``ping`` seconds without one; ends at the source's
    end or when ``closing`` is set (the daemon shuts down)."""
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
            getter = asyncio.create_task(queue.get())
            done, _ = await asyncio.wait(
                {getter, closer}, timeout=ping, return_when="FIRST_COMPLETED"
            )
            if getter not in done:
                getter.cancel()
                if closer in done:
                    return
                yield None
                continue
            item = getter.result()
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item
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
        async for item in pumped(items, closing):
            if item is None:
                yield ": ping\n\n"
            elif isinstance(item, LogLine):
                yield frame("log", line_json(item), item.seq)
            elif isinstance(item, Event):
                yield frame(item.kind, event_json(item, exit_code(item)))
    except Exception as exc:  # the stream has started: the error is its last frame
        from nixcell.jobs.contract import JobError

        message = exc.message if isinstance(exc, JobError) else "internal error"
        if not isinstance(exc, JobError):
            import logging

            logging.getLogger(__name__).exception("event stream failed")
        yield frame("error", {"error": message})
