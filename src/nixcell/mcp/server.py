"""``nixcell mcp``: the ``run`` tool on the official MCP SDK's low-level server, stdio or HTTP.

The low-level ``Server`` gives the tool a description computed from the environments' state,
results with text, ``structuredContent`` and ``isError`` together, and a ``logging/setLevel``
handler (the state and handlers: ``App`` in mcp/app.py). Environments are prepared in the
background while the server already answers.

Everything the server says goes to the client's pipe or to stderr — never stdout (the SDK points
fd 1 at stderr while it serves stdio). stdin is read by the event loop itself (no worker thread
blocked in ``read``), so on EOF or SIGTERM/SIGINT/SIGHUP the server stops at once: running cells
are cancelled (which kills them), sessions are shut down, and the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel import Server

from nixcell import __version__
from nixcell.mcp import dropin
from nixcell.mcp.app import App
from nixcell.mcp.config import load_config
from nixcell.mcp.stdio import open_std_fds, serve_stdio
from nixcell.mcp.transports import MCP_SESSION_IDLE, serve_http

log = logging.getLogger(__name__)


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
        _exit_if_stuck(SHUTDOWN_LIMIT)
        with anyio.CancelScope(shield=True):
            await app.shutdown()
        for signum in handled:
            loop.remove_signal_handler(signum)


# The client is gone or a signal came: the server ends within this, whatever is stuck (a cell
# that will not die, a helper blocked on a lock a thread held at its fork). A client waits for
# its server to exit; bwrap cells die with the server, and what else is left the next start's
# sweep removes.
SHUTDOWN_LIMIT = 30.0


def _exit_if_stuck(limit: float) -> None:
    import threading

    def stuck() -> None:
        log.error("shutdown did not finish within %g s: exiting anyway", limit)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(limit, stuck)
    timer.daemon = True  # a finished shutdown exits without waiting for it
    timer.start()


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
