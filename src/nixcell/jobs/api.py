"""The HTTP API (``/api/v1``, API.md): a thin starlette app over the ``Service`` contract.

Every request is checked here for shape only — ids, query values, body size, JSON, the
``JobRequest`` model — and every answer is JSON, errors one line (``{"error": ...}``, 4xx). What
a caller may see or do is the service's to decide (``Caller.may_see``), so a job of another
user is the same 404 as a job that does not exist. ``gate.Gate`` runs first (who is calling).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from nixcell.errors import NixcellError
from nixcell.jobs import auth, params
from nixcell.jobs.contract import JobError, Service
from nixcell.jobs.gate import CALLER, Gate, one_line
from nixcell.jobs.model import STATES, STREAMS, TERMINAL, Caller, Event
from nixcell.jobs.openapi import MAX_ID
from nixcell.jobs.params import job_id  # noqa: F401 - attach_api imports it from here
from nixcell.jobs.sse import event_json, event_stream, line_json

log = logging.getLogger("nixcell.jobs.api")
JSON_LIMIT = 4 << 20  # a request body (a script rides in it)
DEFAULT_UPLOAD_LIMIT = 256 << 20
_SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def caller_of(conn: HTTPConnection) -> Caller:
    """The authenticated caller (``gate.Gate`` set it; None here is a bug: refuse)."""
    caller = conn.scope.get(CALLER)
    if not isinstance(caller, Caller):
        raise JobError("a token is required", status=401)
    return caller


def _body(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, at most ``limit`` bytes (a Content-Length over it: refused now)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise JobError(f"request body over the limit of {limit} bytes", status=413)
    return _chunks(request, limit)


async def _chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise JobError(f"request body over the limit of {limit} bytes", status=413)
        if chunk:
            yield chunk


def _content_type(request: Request, expected: str) -> None:
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != expected:
        raise JobError(f"Content-Type must be {expected}", status=415)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def json_body(request: Request) -> dict[str, Any]:
    return parse_json(await raw_json(request))


async def raw_json(request: Request) -> bytes:
    _content_type(request, "application/json")
    return b"".join([chunk async for chunk in _body(request, JSON_LIMIT)])


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JobError(f"bad JSON: {one_line(reason[:200])}") from None
    if not isinstance(data, dict):
        raise JobError("the body must be a JSON object")
    return data


def job_request(raw: bytes) -> Any:
    """The body as a ``JobRequest``, strictly (JSON types as they are: no "yes" for true)."""
    from pydantic import ValidationError

    from nixcell.jobs.model import JobRequest

    parse_json(raw)  # syntax, an object, no NaN: one-line errors of its own
    try:
        return JobRequest.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise JobError(one_line(f"{where[:200]}: {first['msg']}{more}")) from None


class Api:
    """The route handlers, holding the service, the config getter and the web sessions."""

    def __init__(self, service: Service, config: Callable[[], Any], sessions: auth.Sessions):
        self.service = service
        self.config = config
        self.sessions = sessions
        self.closing = asyncio.Event()  # set at shutdown: every stream ends

    def shown(self, caller: Caller, job: Any) -> dict[str, Any]:
        return self.service.shown(caller, job)

    def exit_code_of(self, caller: Caller) -> Callable[[Event], int | None]:
        def find(event: Event) -> int | None:
            if getattr(event, "exit_code", None) is not None:
                return event.exit_code  # type: ignore[attr-defined]
            if event.kind != "state" or event.state not in TERMINAL:
                return None
            try:
                return self.service.get(caller, event.job_id).exit_code
            except JobError:
                return None

        return find

    async def openapi(self, request: Request) -> Response:
        from nixcell.jobs.openapi import document

        return JSONResponse(document())

    async def whoami(self, request: Request) -> Response:
        caller = caller_of(request)
        return JSONResponse({"caller": caller.name, "key": caller.key, "admin": caller.admin})

    async def upload(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        _content_type(request, "application/x-tar")
        limit = int(getattr(self.config(), "upload_limit", None) or DEFAULT_UPLOAD_LIMIT)
        upload_id = await self.service.upload(caller, _body(request, limit))
        return JSONResponse({"upload": upload_id}, status_code=201)

    async def jobs(self, request: Request) -> Response:
        return await (self.submit if request.method == "POST" else self.list)(request)

    async def submit(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        job = await self.service.submit(caller, job_request(await raw_json(request)))
        return JSONResponse({"job": self.shown(caller, job)}, status_code=201)

    async def list(self, request: Request) -> Response:
        caller = caller_of(request)
        query = params.query(request, {"state", "limit", "all", "all_hosts"})
        states = params.choices(query, "state", STATES)
        limit = params.integer(query, "limit", 100, 1, 1000)
        every = params.flag(query, "all")
        hosts = params.flag(query, "all_hosts")
        jobs = await run_in_threadpool(  # off the loop: a cluster's store is a remote database
            self.service.list,
            caller,
            states=states,
            limit=limit,
            all_users=True if every is None else every,
            all_hosts=bool(hosts),
        )
        return JSONResponse({"jobs": [self.shown(caller, job) for job in jobs]})

    async def show(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        job = await run_in_threadpool(self.service.get, caller, params.job_id(request))
        events = await run_in_threadpool(self._events, caller, job.id)
        code = self.exit_code_of(caller)
        return JSONResponse(
            {"job": self.shown(caller, job), "events": [event_json(e, code(e)) for e in events]}
        )

    def _events(self, caller: Caller, ident: int) -> list[Event]:
        own = getattr(self.service, "job_events", None)
        if own is not None:
            return list(own(caller, ident))
        store = getattr(self.service, "store", None)  # the service checked the caller in get()
        return list(store.events(ident)) if store is not None else []

    async def cancel(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        job = await self.service.cancel(caller, params.job_id(request))
        return JSONResponse({"job": self.shown(caller, job)})

    async def logs(self, request: Request) -> Response:
        caller = caller_of(request)
        query = params.query(request, {"after", "tail", "stream", "follow"})
        ident = params.job_id(request)
        after = params.integer(query, "after", 0, 0, MAX_ID)
        tail = params.integer(query, "tail", None, 0, 1_000_000)
        streams = params.choices(query, "stream", STREAMS)
        follow = bool(params.flag(query, "follow"))
        job = await run_in_threadpool(self.service.get, caller, ident)  # 404 before a stream
        if not follow:
            lines = await run_in_threadpool(
                functools.partial(
                    self.service.logs, caller, ident, after=after, tail=tail, streams=streams
                )
            )
            return JSONResponse(
                {"lines": [line_json(x) for x in lines], "truncated": job.log_truncated}
            )
        resume = request.headers.get("last-event-id")
        if resume is not None:
            if not re.fullmatch(r"[0-9]{1,19}", resume):
                raise JobError("Last-Event-ID must be a log line's seq")
            after = max(after, int(resume))
        if tail is not None:  # start from the last N lines, then follow
            last = await run_in_threadpool(
                functools.partial(self.service.logs, caller, ident, tail=tail, streams=streams)
            )
            after = max(after, last[0].seq - 1) if last else after
        items = self.service.follow(caller, ident, after=after, streams=streams)
        stream = event_stream(items, self.closing, self.exit_code_of(caller))
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)

    async def events(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        items = self.service.events(caller, None)
        stream = event_stream(items, self.closing, self.exit_code_of(caller))
        return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)

    async def audit(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        decisions = await run_in_threadpool(self.service.audit, caller, params.job_id(request))
        return JSONResponse({"decisions": list(decisions)})

    async def artifacts(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        source = await run_in_threadpool(self.service.artifacts, caller, params.job_id(request))
        if hasattr(source, "read"):
            chunks = iter(lambda: source.read(1 << 16), b"")
        else:
            chunks = iter(source)
        return StreamingResponse(iterate_in_threadpool(chunks), media_type="application/x-tar")

    async def gc(self, request: Request) -> Response:
        caller = caller_of(request)
        params.query(request, set())
        if not caller.admin:
            raise JobError("gc is for admins", status=403)
        return JSONResponse(await self.service.gc(caller))

    async def session(self, request: Request) -> Response:
        peer = request.scope.get(auth.PEER)
        if not isinstance(peer, auth.Peer) or peer.family != "tcp":
            raise JobError("web sessions are for TCP listeners (a unix socket knows its peer)")
        data = await json_body(request)
        token = data.get("token")
        if set(data) != {"token"} or not isinstance(token, str):
            raise JobError('the body must be {"token": "..."}')
        caller = auth.token_caller(self.config(), token)
        if caller is None:
            raise JobError("a token is required", status=401)
        cookie = self.sessions.create(caller, token=token)
        response = JSONResponse(
            {"caller": caller.name, "key": caller.key, "admin": caller.admin,
             "proof": self.sessions.proof_of_last}
        )  # fmt: skip
        response.set_cookie(auth.COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return response

    async def metrics(self, request: Request) -> Response:
        caller_of(request)
        params.query(request, set())
        text = await run_in_threadpool(self.service.metrics)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    def routes(self) -> list[BaseRoute]:
        v1 = "/api/v1"
        return [
            Route(f"{v1}/openapi.json", self.openapi, methods=["GET"]),
            Route(f"{v1}/whoami", self.whoami, methods=["GET"]),
            Route(f"{v1}/uploads", self.upload, methods=["POST"]),
            Route(f"{v1}/jobs", self.jobs, methods=["GET", "POST"]),  # one route: one Allow
            Route(f"{v1}/jobs/{{id}}", self.show, methods=["GET"]),
            Route(f"{v1}/jobs/{{id}}/cancel", self.cancel, methods=["POST"]),
            Route(f"{v1}/jobs/{{id}}/logs", self.logs, methods=["GET"]),
            Route(f"{v1}/jobs/{{id}}/audit", self.audit, methods=["GET"]),
            Route(f"{v1}/jobs/{{id}}/artifacts", self.artifacts, methods=["GET"]),
            Route(f"{v1}/events", self.events, methods=["GET"]),
            Route(f"{v1}/gc", self.gc, methods=["POST"]),
            Route(f"{v1}/session", self.session, methods=["POST"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]


def _cache_routes(service: Service) -> list[BaseRoute]:
    """This host's store as the cluster's binary cache (answered while it has a ``cache_url``:
    a SIGHUP may add or drop it)."""
    cache = getattr(service, "host_cache", None)
    return cache.routes() if cache is not None else []


def _plugged(service: Service) -> list[BaseRoute]:
    """Routes of the parts that plug in when present: the web page, interactive attach."""
    routes: list[BaseRoute] = []
    try:
        from nixcell.jobs.attach_api import websocket_route
    except ImportError:
        pass
    else:
        routes.append(websocket_route(service))
    try:
        from nixcell.jobs.web import web_routes
    except ImportError:
        pass
    else:
        routes.extend(web_routes())
    return routes


async def _error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, JobError):
        return JSONResponse({"error": one_line(exc.message)}, status_code=exc.status)
    if type(exc).__name__ == "StoreUnavailable":  # a cluster's database is away: not the caller's
        return JSONResponse(
            {"error": one_line(exc.message)}, status_code=503, headers={"Retry-After": "1"}
        )
    if isinstance(exc, NixcellError):  # a check deeper down refused the request
        return JSONResponse({"error": one_line(exc.message)}, status_code=400)
    if isinstance(exc, HTTPException):
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {one_line(request.url.path[:200])}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {one_line(request.url.path[:200])}"
        else:
            message = one_line(str(exc.detail))
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal error"}, status_code=500)


def create_app(
    service: Service,
    config: Callable[[], Any] | Any,
    *,
    sessions: auth.Sessions | None = None,
) -> Starlette:
    """The ASGI app; ``config`` is the ServerConfig or a getter of the current one (SIGHUP)."""
    getter = config if callable(config) else (lambda: config)
    api = Api(service, getter, sessions or auth.Sessions())
    app = Starlette(
        routes=[*api.routes(), *_plugged(service), *_cache_routes(service)],
        middleware=[Middleware(Gate, config=getter, sessions=api.sessions)],
        exception_handlers={Exception: _error, HTTPException: _error, NixcellError: _error},
    )
    app.state.api = api
    return app
