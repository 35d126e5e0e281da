"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``).

Written out here (the request body's schema comes from ``JobRequest`` itself); the integration
tests validate the real daemon's answers against these schemas, so a drift fails a test.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from nixcell.jobs.model import STATES, STREAMS

_NUM = {"type": "number"}
_OPT_NUM = {"type": ["number", "null"]}
_OPT_STR = {"type": ["string", "null"]}
_OPT_INT = {"type": ["integer", "null"]}


def _obj(props: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": props}
    out["required"] = list(props) if required is None else required
    if not extra:
        out["additionalProperties"] = False
    return out


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK") -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    str(code): _json(_ref("Error"), text)
    for code, text in (
        (400, "a malformed request"),
        (401, "a token is required"),
        (403, "refused: cross-origin, or admins only"),
        (404, "no such job (or not the caller's)"),
        (405, "method not allowed"),
        (409, "the job is not in a state for this"),
        (413, "the body is over the limit"),
        (415, "wrong Content-Type"),
        (421, "wrong Host for this listener (DNS rebinding)"),
        (503, "shutting down, or the queue is full"),
    )
}


def _op(summary: str, ok: dict, *, status: str = "200", params: list | None = None, **more: Any):
    op: dict[str, Any] = {"summary": summary, "responses": {status: ok, **_ERRORS}}
    if params:
        op["parameters"] = params
    op.update(more)
    return op


def _param(name: str, schema: dict, where: str = "query", **more: Any) -> dict:
    return {"name": name, "in": where, "schema": schema, **more}


MAX_ID = 2**63 - 1
_ID = _param("id", {"type": "integer", "minimum": 1, "maximum": MAX_ID}, "path", required=True)


def _schemas() -> dict[str, Any]:
    from nixcell.jobs.model import JobRequest

    request = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = request.pop("$defs", {})
    job = _obj(
        {
            "id": {"type": "integer"},
            "state": {"enum": list(STATES)},
            "owner": {"type": "string"},
            "name": _OPT_STR,
            "created": _NUM,
            "started": _OPT_NUM,
            "finished": _OPT_NUM,
            "duration": _OPT_NUM,
            "exit_code": _OPT_INT,
            "reason": _OPT_STR,
            "host": _OPT_STR,
            "interactive": {"type": "boolean"},
            "log_lines": {"type": "integer"},
            "log_truncated": {"type": "boolean"},
            "request": {"type": "object"},
        },
        ["id", "state", "owner", "created", "request"],
        extra=True,
    )
    event = _obj(
        {
            "job": {"type": "integer"},
            "seq": {"type": "integer"},
            "time": _NUM,
            "kind": {"type": "string"},
            "state": _OPT_STR,
            "detail": _OPT_STR,
            "exit_code": _OPT_INT,
        },
        ["job", "seq", "time", "kind", "state", "detail"],
    )
    line = _obj(
        {
            "seq": {"type": "integer"},
            "time": _NUM,
            "stream": {"enum": list(STREAMS)},
            "text": {"type": "string"},
        }
    )
    return {
        **defs,
        "JobRequest": request,
        "Job": job,
        "Event": event,
        "Line": line,
        "Error": _obj({"error": {"type": "string"}}),
        "Caller": _obj(
            {"caller": {"type": "string"}, "key": {"type": "string"}, "admin": {"type": "boolean"}}
        ),
        "Session": _obj(
            {
                "caller": {"type": "string"},
                "key": {"type": "string"},
                "admin": {"type": "boolean"},
                "proof": {"type": "string"},
            }
        ),
    }


def _paths() -> dict[str, Any]:
    one_job = _json(_obj({"job": _ref("Job")}))
    body = {"required": True, "content": {"application/json": {"schema": _ref("JobRequest")}}}
    states = _param("state", {"type": "array", "items": {"enum": list(STATES)}}, explode=True)
    streams = _param("stream", {"type": "array", "items": {"enum": list(STREAMS)}}, explode=True)
    after = {"type": "integer", "minimum": 0, "maximum": MAX_ID}
    tail = {"type": "integer", "minimum": 0, "maximum": 1_000_000}
    logs = _json(
        _obj({"lines": {"type": "array", "items": _ref("Line")}, "truncated": {"type": "boolean"}})
    )
    logs["content"]["text/event-stream"] = {"schema": {"type": "string"}}
    tar = {"description": "a tar stream", "content": {"application/x-tar": {}}}
    return {
        "/api/v1/openapi.json": {"get": _op("this document", _json({"type": "object"}))},
        "/api/v1/whoami": {"get": _op("the caller", _json(_ref("Caller")))},
        "/api/v1/uploads": {
            "post": _op(
                "unpack a tar stream into a new upload",
                _json(_obj({"upload": {"type": "string"}})),
                status="201",
                requestBody={"required": True, "content": {"application/x-tar": {}}},
            )
        },
        "/api/v1/jobs": {
            "post": _op("submit a job", one_job, status="201", requestBody=body),
            "get": _op(
                "jobs, newest first",
                _json(_obj({"jobs": {"type": "array", "items": _ref("Job")}})),
                params=[
                    states,
                    _param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
                    _param("all", {"enum": ["0", "1"]}),
                    _param("all_hosts", {"enum": ["0", "1"]}),  # a cluster: every host's
                ],
            ),
        },
        "/api/v1/jobs/{id}": {
            "get": _op(
                "a job and its events",
                _json(
                    _obj({"job": _ref("Job"), "events": {"type": "array", "items": _ref("Event")}})
                ),
                params=[_ID],
            )
        },
        "/api/v1/jobs/{id}/cancel": {"post": _op("cancel a job", one_job, params=[_ID])},
        "/api/v1/jobs/{id}/logs": {
            "get": _op(
                "log lines; with follow=1 a text/event-stream",
                logs,
                params=[
                    _ID,
                    _param("after", after),
                    _param("tail", tail),
                    streams,
                    _param("follow", {"enum": ["0", "1"]}),
                ],
            )
        },
        "/api/v1/jobs/{id}/audit": {
            "get": _op(
                "the job's policy decisions",
                _json(_obj({"decisions": {"type": "array", "items": {"type": "object"}}})),
                params=[_ID],
            )
        },
        "/api/v1/jobs/{id}/artifacts": {
            "get": _op("a tar of the job's workspace", tar, params=[_ID])
        },
        "/api/v1/events": {
            "get": _op(
                "state events of every job the caller may see",
                {"description": "SSE", "content": {"text/event-stream": {}}},
            )
        },
        "/api/v1/gc": {
            "post": _op(
                "admins: apply retention now",
                _json({"type": "object", "additionalProperties": {"type": "integer"}}),
            )
        },
        "/api/v1/session": {
            "post": _op(
                "web login on TCP: an HttpOnly SameSite=Strict cookie, and the proof the page"
                " sends with it (X-Nixcell-Session, or ?session= on an EventSource)",
                _json(_ref("Session")),
                requestBody={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _obj({"token": {"type": "string"}})}
                    },
                },
            )
        },
    }


@cache
def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "nixcell job service", "version": "1"},
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }
