"""The ``instructions`` of the initialize result, written from the actual configuration.

Clients put them in the model's context once per connection, so they say what the tool
description does not: how calls and sessions behave, where the project is, when a session is
the better choice. Short (about 200 tokens): the description already lists each environment's
packages and limits.
"""

from __future__ import annotations

from nixcell.mcp.config import ServerConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.mcp.app import App


def app_instructions(app: App) -> str:
    return server_instructions(
        app.config,
        sessions=app.sessions_available,
        idle_timeout=app.idle_timeout,
        max_lifetime=app.max_lifetime,
    )


def server_instructions(
    config: ServerConfig, *, sessions: bool, idle_timeout: float, max_lifetime: float
) -> str:
    envs = config.environments.values()
    listed = ", ".join(
        f"{e.name} ({e.interpreter}{', artifact' if e.origin.startswith('artifact ') else ''})"
        for e in envs
    )
    lines = [
        "nixcell runs code in sandboxed cells with the `run` tool: only the environment's Nix "
        "packages, no network unless the tool description says so, enforced time and memory "
        "limits.",
        f"Environments (env: interpreter): {listed}. The tool description lists their "
        "packages and limits; pick the one whose tools the code needs.",
        "A call without `session` runs in a fresh cell: cwd /workspace starts empty and is "
        "discarded afterwards, so nothing carries over between calls.",
    ]
    with_sessions = [e.name for e in envs if e.sessions]
    if sessions and with_sessions:
        scope = (
            ""
            if len(with_sessions) == len(config.environments)
            else (f" (envs: {', '.join(with_sessions)})")
        )
        lines.append(
            f'Sessions{scope}: pass session="<a name you choose>" to keep variables, imports, '
            "the cwd and files in /workspace between calls. Prefer a session for multi-step "
            "work (load or compute once, then inspect; define, then call); use fresh calls for "
            "independent one-off checks. A session stays in the environment it was created in "
            f"and ends with close_session, after {idle_timeout:g} s unused or {max_lifetime:g} s "
            "after it started; its state is then gone."
        )
    if config.project is not None:
        lines.append(
            f"The user's project is mounted read-only at {config.mount_point}: read it there; "
            "write results to /workspace or print them."
        )
    else:
        lines.append("No project directory is mounted.")
    lines.append("On failure, read stderr and the exit code before retrying.")
    return "\n".join(lines)
