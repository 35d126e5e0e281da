"""``nixcell mcp``: the ``run`` tool on the official MCP SDK's low-level server, stdio or HTTP.

The low-level ``Server`` gives the tool a description computed from the environments' state,
results with text, ``structuredContent`` and ``isError`` together, and a ``logging/setLevel``
handler. Environments are prepared in the background while the server already answers.

Everything the server says goes to the client's pipe or to stderr — never stdout (the SDK points
fd 1 at stderr while it serves stdio). stdin is read by the event loop itself (no worker thread
blocked in ``read``), so on EOF or SIGTERM/SIGINT/SIGHUP the server stops at once: running cells
are cancelled (which kills them), sessions are shut down, and the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from nixcell import __version__
from nixcell.mcp import dropin
from nixcell.mcp.config import DEFAULT_POOL, ServerConfig, load_config
from nixcell.mcp.envs import Environments
from nixcell.mcp.pool import CellPool
from nixcell.mcp.stdio import open_std_fds, serve_stdio
from nixcell.mcp.tool import OUTPUT_SCHEMA, RunTool, ToolFailure, input_schema
from nixcell.mcp.transports import MCP_SESSION_IDLE, serve_http

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


def build_server(app: App) -> Server[Any]:
    from nixcell.mcp.instructions import app_instructions

    server: Server[Any] = Server(
        "nixcell", version=__version__, instructions=app_instructions(app),
        on_list_tools=app.list_tools, on_call_tool=app.call_tool,
    )  # fmt: skip
    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, app.set_level)
    return server


async def _main(app: App, transport: str, host: str, port: int) -> None:
    server = build_server(app)
    loop = asyncio.get_running_loop()
    stoppers: list[Callable[[], None]] = []

    def on_signal(signum: int) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop = stoppers.pop(0) if len(stoppers) > 1 else stoppers[0]  # graceful, then hard
        stop()

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    app.envs.start()
    app.pool.start(app.envs)
    try:
        with anyio.CancelScope() as scope:
            stoppers.append(scope.cancel)  # HTTP puts a graceful stop before it
            if transport == "stdio":
                await serve_stdio(server)
            else:
                # An MCP session outlives its idle persistent sessions: expiring it sooner
                # would end them before --idle-timeout says.
                idle = max(MCP_SESSION_IDLE, app.idle_timeout)
                await serve_http(server, host, port, stoppers, idle)
    finally:
        with anyio.CancelScope(shield=True):
            await app.shutdown()
        for signum in handled:
            loop.remove_signal_handler(signum)


def _setup_logging(config_level: str | None) -> None:
    import warnings

    from mcp.shared.exceptions import MCPDeprecationWarning

    # The logging capability is deprecated from protocol 2026-07-28 on; older clients use it.
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="nixcell: %(levelname)s %(name)s: %(message)s")
    ours = logging.getLogger("nixcell")
    if root.level > logging.DEBUG:  # not --verbose
        aliases = {"warn": "WARNING", "trace": "DEBUG"}  # trace: nix-sandbox-mcp's --log-level
        level = aliases.get(config_level or "", (config_level or "info").upper())
        ours.setLevel(level)


def serve(
    *,
    config_file: str | None,
    env_dir: str | None,
    transport: str | None,
    host: str,
    port: int,
    max_sessions: int,
    idle_timeout: float | None,
    max_lifetime: float | None,
    max_client_sessions: int | None = None,
    share_sessions: bool | None = None,
    log_level: str | None = None,
    pool: int | None = None,
) -> int:
    """Run the MCP server until the client goes away or a signal arrives."""
    from nixcell.sandbox.reap import become_subreaper

    open_std_fds()
    config = load_config(config_file, env_dir)
    _setup_logging(log_level or config.log_level)
    config = dropin.apply(config, os.environ, os.getcwd())  # nix-sandbox-mcp's variables
    transport = transport or config.transport or "stdio"
    share = bool(share_sessions if share_sessions is not None else config.share_sessions)
    if share and transport == "http":
        log.warning(
            "sessions are shared: every client of this server can use, list and close every "
            "session, and read what other clients left in them"
        )
    app = App(
        config,
        transport=transport,
        share_sessions=share,
        max_client_sessions=max_client_sessions or config.max_client_sessions,
        max_sessions=max_sessions,
        idle_timeout=idle_timeout or config.idle_timeout or 300.0,
        max_lifetime=max_lifetime or config.max_lifetime or 3600.0,
        pool=pool,
    )
    become_subreaper()  # a cell's orphaned pid-1 comes back to us to be reaped
    source = f"{config.source}" if config.source else "the presets"
    log.info(
        "environments from %s: %s; project %s at %s",
        source,
        ", ".join(config.environments),
        config.project,
        config.mount_point,
    )
    anyio.run(_main, app, transport, host, port)
    return 0
