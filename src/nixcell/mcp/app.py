"""The MCP server's state and its request handlers: ``tools/list``, ``tools/call`` (``run``,
``close_session``, ``list_sessions``) and ``logging/setLevel``, answered by one ``App``.

Whose sessions a request may use is decided here (``App.client``): the stdio client, the HTTP
request's MCP session, or everyone with ``--share-sessions``. The SDK server built around an
``App``, its transports and the ``serve()`` entry are mcp/server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from nixcell.mcp.config import DEFAULT_POOL, ServerConfig
from nixcell.mcp.envs import Environments
from nixcell.mcp.pool import CellPool
from nixcell.mcp.tool import OUTPUT_SCHEMA, RunTool, ToolFailure, input_schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.mcp.sessions import SessionManager

log = logging.getLogger(__name__)
_T = TypeVar("_T")

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
LIST_WAIT = 15.0  # tools/list waits this long for environments still being prepared
HTTP_CLIENT_SESSIONS = 4  # sessions one HTTP client may hold, by default
_SCOPED = "nixcell.sessions.client"  # the connection.state key: its sessions end with it
_LOG_LEVEL = "nixcell.log_level"  # the connection.state key: the level its client asked for


class App:
    """The server's state: environments, the tool, sessions, calls in flight."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        max_sessions: int,
        idle_timeout: float,
        max_lifetime: float,
        transport: str = "stdio",
        share_sessions: bool = False,
        max_client_sessions: int | None = None,
        pool: int | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.share_sessions = share_sessions
        self.envs = Environments(config)
        self.pool = CellPool(DEFAULT_POOL if pool is None else pool)
        self.tool = RunTool(self.envs, self.sessions, self.pool)
        self.client_level = "info"  # for a request whose connection cannot be found
        self.sessions_available = importlib.util.find_spec("nixcell.mcp.sessions") is not None
        if max_client_sessions is None and transport == "http" and not share_sessions:
            max_client_sessions = HTTP_CLIENT_SESSIONS
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self._session_options: dict[str, Any] = {
            "max_sessions": max_sessions,
            "max_client_sessions": max_client_sessions,
            "idle_timeout": idle_timeout,
            "max_lifetime": max_lifetime,
        }
        self._manager: SessionManager | None = None
        self._running: set[asyncio.Task[Any]] = set()

    def sessions(self) -> SessionManager:
        if self._manager is None:
            from nixcell.mcp.sessions import SessionManager

            self._manager = SessionManager(**self._session_options)  # type: ignore[arg-type]
        return self._manager

    def _has_client(self, ctx: Any) -> bool:
        if self.share_sessions or self.transport == "stdio":
            return True
        return bool(getattr(_connection(ctx), "session_id", None))

    def client(self, ctx: Any) -> str:
        """Whose sessions this request may use: the stdio client, the HTTP request's MCP
        session (the SDK routes a request to a session only by its unguessable id, and answers
        an unknown id 404), or everyone when sharing is on. Fails closed: an HTTP request
        without an MCP session (the stateless 2026-07-28 era) has no sessions."""
        from nixcell.mcp.sessions import LOCAL, SHARED

        if self.share_sessions:
            return SHARED
        if self.transport == "stdio":
            return LOCAL
        connection = _connection(ctx)
        session_id = getattr(connection, "session_id", None)
        if connection is None or not isinstance(session_id, str) or not session_id:
            raise ToolFailure(
                "persistent sessions over HTTP belong to an MCP session (a stateful streamable "
                "HTTP connection with an Mcp-Session-Id, opened by the initialize handshake of "
                "protocol 2025-11-25 or older), and this request has none: call without "
                "'session', or ask the operator for --share-sessions"
            )
        client = f"mcp:{session_id}"
        if connection.state.get(_SCOPED) != client:  # once per connection
            connection.state[_SCOPED] = client
            connection.exit_stack.callback(self._client_gone, client)
        return client

    def _client_gone(self, client: str) -> None:
        """The MCP session ended (DELETE, the SDK's idle expiry, shutdown): its cells end."""
        if self._manager is not None:
            self._manager.end_client(client)

    async def isolated(self, coro: Awaitable[_T]) -> _T:
        """Run ``coro`` as a plain asyncio task, so that its clean-up awaits are not re-cancelled
        by anyio's cancel scopes; cancelling the caller cancels it and waits for its teardown."""
        task = asyncio.ensure_future(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        try:
            return await asyncio.shield(task)
        except BaseException:
            task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.wait([task])
            raise

    async def shutdown(self) -> None:
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=30)
        self.envs.cancel()
        await self.pool.close()
        if self._manager is not None:
            await self._manager.shutdown()

    # -- handlers ------------------------------------------------------------------------
    async def list_tools(self, ctx: Any, params: Any) -> types.ListToolsResult:
        await self.envs.settle(LIST_WAIT)
        with_sessions = (
            self.sessions_available
            and any(e.sessions for e in self.config.environments.values())
            and self._has_client(ctx)  # not offered where they would be refused
        )
        tools = [
            types.Tool(
                name="run",
                title="Run code in a sandbox",
                description=self.envs.describe(
                    sessions_available=with_sessions,
                    idle_timeout=self._session_options["idle_timeout"],
                ),
                input_schema=input_schema(self.envs.names),
                output_schema=OUTPUT_SCHEMA,
                annotations=types.ToolAnnotations(
                    title="Run code in a sandbox",
                    read_only_hint=False,
                    destructive_hint=False,
                    idempotent_hint=False,
                    open_world_hint=any(e.network for e in self.config.environments.values()),
                ),
            )
        ]
        if with_sessions:
            tools += _session_tools()
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        args = params.arguments or {}
        try:
            if params.name == "run":
                return await self._run(ctx, args)
            if params.name == "close_session" and self.sessions_available:
                return await self._close_session(ctx, args)
            if params.name == "list_sessions" and self.sessions_available:
                client = self.client(ctx)
                listed = self._manager.list(client=client) if self._manager is not None else []
                text = json.dumps(listed, indent=1, default=str)
                return _result(text, {"sessions": json.loads(text)})
        except ToolFailure as exc:
            await self.log(ctx, "warning", str(exc))
            return _error(str(exc))
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")

    async def _run(self, ctx: Any, args: dict[str, Any]) -> types.CallToolResult:
        name = args.get("env")
        if isinstance(name, str) and name in self.envs.names and self.envs.peek(name) is None:
            await self.log(ctx, "info", f"environment '{name}' is still being prepared; waiting")
        try:
            client = self.client(ctx) if args.get("session") is not None else None
            outcome = await self.isolated(self.tool.call(args, client=client))
        except ToolFailure:
            raise
        except Exception as exc:  # a bug must not take the server down
            log.exception("run failed")
            raise ToolFailure(f"internal error: {type(exc).__name__}: {exc}") from None
        where = f"session '{outcome.session}'" if outcome.session else "a fresh cell"
        await self.log(
            ctx,
            "debug",
            f"{name}: {where} exited {outcome.exit_code} in {outcome.duration_ms:.1f} ms",
        )
        return _result(outcome.text(), outcome.structured(), is_error=outcome.is_error)

    async def _close_session(self, ctx: Any, args: dict[str, Any]) -> types.CallToolResult:
        session = args.get("session")
        if not isinstance(session, str) or not session:
            raise ToolFailure("argument 'session' (the session name) is required")
        client = self.client(ctx)
        closed = self._manager is not None and await self.isolated(
            self.sessions().close(session, client=client)
        )
        if not closed:
            raise ToolFailure(f"no session '{session}'")
        return _result(f"session '{session}' closed")

    async def set_level(self, ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        connection = _connection(ctx)
        if connection is not None:  # one client's level is not another's
            connection.state[_LOG_LEVEL] = params.level
        else:
            self.client_level = params.level
        log.debug("client log level: %s", params.level)
        return types.EmptyResult()

    async def log(self, ctx: Any, level: str, message: str) -> None:
        """A ``notifications/message`` to the client, at or above the level it asked for."""
        modern = ctx.protocol_version in MODERN_PROTOCOL_VERSIONS  # the SDK gates those itself
        connection = _connection(ctx)
        wanted = self.client_level if connection is None else connection.state.get(_LOG_LEVEL)
        if not modern and LEVELS.index(level) < LEVELS.index(wanted or "info"):
            return
        with contextlib.suppress(Exception):
            await ctx.session.send_log_message(  # on the stream of the request it is about
                level, message, logger="nixcell", related_request_id=ctx.request_id
            )


def _connection(ctx: Any) -> Any:
    """The SDK connection a request came on. mcp 2.3 hands the low-level handler a
    ``ServerRequestContext`` whose ``session`` holds it (``Context.connection`` is the public
    spelling, but the low-level runner does not build a ``Context``); None if that changes."""
    from mcp.server.connection import Connection

    connection = getattr(ctx.session, "_connection", None)
    return connection if isinstance(connection, Connection) else None


def _session_tools() -> list[types.Tool]:
    return [
        types.Tool(
            name="close_session",
            description="End a persistent session of the run tool (its processes and files).",
            input_schema={
                "type": "object",
                "properties": {"session": {"type": "string", "description": "Session name."}},
                "required": ["session"],
            },
        ),
        types.Tool(
            name="list_sessions",
            description="List the run tool's persistent sessions.",
            input_schema={"type": "object", "properties": {}},
            output_schema={
                "type": "object",
                "properties": {"sessions": {"type": "array", "items": {"type": "object"}}},
                "required": ["sessions"],
            },
        ),
    ]


def _result(
    text: str, structured: dict[str, Any] | None = None, *, is_error: bool = False
) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=structured,
        is_error=is_error,
    )


def _error(text: str) -> types.CallToolResult:
    return _result(text, is_error=True)
