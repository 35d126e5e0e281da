"""``nixcell mcp``: its options; the server itself (and the MCP SDK) is imported only when it
starts (mcp/server.py)."""

from __future__ import annotations

import click


def _listen_address(value: str) -> str:
    """An IP literal (brackets allowed) or ``localhost``: a name is never looked up."""
    import ipaddress

    if value == "localhost":
        return "127.0.0.1"
    try:
        bracketed = value.startswith("[") and value.endswith("]")
        return str(ipaddress.ip_address(value[1:-1] if bracketed else value))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an IP address (e.g. 127.0.0.1 or ::1; names are not looked up)"
        ) from None


@click.command("mcp")
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    help="nix-sandbox-mcp style config.toml (default: the shell, python and node presets, "
    "the current directory read-only at /project).",
)
@click.option(
    "--env-dir",
    metavar="DIR",
    help="Custom environments, one TOML file each "
    "(default: $XDG_CONFIG_HOME/nixcell/environments).",
)
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http"]),
    help="stdio (default) or streamable HTTP at /mcp.",
)
@click.option(
    "--stdio",
    is_flag=True,
    help="Serve over stdio: the default, and nix-sandbox-mcp's flag (drop-in use).",
)
@click.option(
    "--log-level",
    type=click.Choice(["trace", "debug", "info", "warn", "error"]),
    help="stderr log level (default: [daemon] log_level, else info; nix-sandbox-mcp's flag).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=lambda _ctx, _param, value: _listen_address(value),
    help="HTTP: IP address to listen on (or localhost).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="HTTP: port (0 = any free port; the URL is logged).",
)
@click.option(
    "--max-sessions",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Persistent sessions open at once, at most.",
)
@click.option(
    "--max-client-sessions",
    type=click.IntRange(min=1),
    help="Persistent sessions one client (one MCP session) may hold (default: 4 over HTTP, "
    "--max-sessions over stdio).",
)
@click.option(
    "--share-sessions",
    is_flag=True,
    default=None,
    help="HTTP: one session namespace for all clients, which then read, list and close each "
    "other's sessions (default: each MCP session sees only its own).",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="End a session unused this long (default 300).",
)
@click.option(
    "--max-lifetime",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="End a session this long after it started (default 3600).",
)
@click.option(
    "--pool",
    type=click.IntRange(0, 16),
    metavar="N",
    help="Pre-started one-shot cells per environment (default 1, or the environment's "
    "`pool`; 0: none, whatever the config says).",
)
def mcp(stdio: bool, **options: object) -> int:
    """Serve the MCP `run` tool: code runs in cells (stdio, or HTTP on loopback)."""
    from nixcell import leftovers
    from nixcell.platforms import refuse_cells

    refuse_cells()  # its tools run cells
    from nixcell.mcp.server import serve  # imports the MCP SDK (~0.5 s): only here

    if stdio:
        if options["transport"] == "http":
            raise click.UsageError("--stdio and --transport http contradict each other")
        options["transport"] = "stdio"

    leftovers.sweep()  # a killed server's cgroups go at the next start
    with leftovers.RunMarker():
        return serve(**options)  # type: ignore[arg-type]
