"""Path and query values of the job API, checked: one-line 400s naming the parameter."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import HTTPConnection, Request

from nixcell.jobs.contract import JobError, NotFound
from nixcell.jobs.gate import one_line
from nixcell.jobs.openapi import MAX_ID

_ID = re.compile(r"[1-9][0-9]{0,18}")


def job_id(conn: HTTPConnection) -> int:
    text = conn.path_params["id"]
    if not _ID.fullmatch(text):
        raise JobError(f"bad job id {one_line(text[:40])!r}: a positive integer", status=400)
    value = int(text)
    if value > MAX_ID:
        raise NotFound(f"no job {value}")
    return value


def query(request: Request, allowed: set[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise JobError(f"unknown query parameter {one_line(key[:40])!r}")
        out.setdefault(key, []).append(value)
    return out


def one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise JobError(f"query parameter {key!r} given twice")
    return values[0]


def integer(query: dict[str, list[str]], key: str, default: int | None, lo: int, hi: int) -> Any:
    text = one(query, key)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", text) or not lo <= int(text) <= hi:
        raise JobError(f"{key} must be an integer from {lo} to {hi}, got {one_line(text[:40])!r}")
    return int(text)


def flag(query: dict[str, list[str]], key: str) -> bool | None:
    text = one(query, key)
    if text is None:
        return None
    if text not in ("0", "1"):
        raise JobError(f"{key} must be 0 or 1, got {one_line(text[:40])!r}")
    return text == "1"


def choices(query: dict[str, list[str]], key: str, known: tuple[str, ...]) -> list[str] | None:
    values = query.get(key)
    if not values:
        return None
    for value in values:
        if value not in known:
            raise JobError(f"unknown {key} {one_line(value[:40])!r} (one of {', '.join(known)})")
    return list(dict.fromkeys(values))
