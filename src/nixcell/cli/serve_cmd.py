"""``nixcell serve``: the job daemon (jobs/serve.py), or a fresh API token."""

from __future__ import annotations

import click


@click.command()
@click.option("--config", "config_path", metavar="FILE", help="server.toml (default: defaults).")
@click.option(
    "--listen",
    "listens",
    multiple=True,
    metavar="unix:PATH|HOST:PORT",
    help="Listen here (repeatable; replaces the config's listen). Default: the unix socket.",
)
@click.option("--state-dir", metavar="DIR", help="Jobs, logs and workspaces (replaces config's).")
@click.option(
    "--store",
    metavar="sqlite:PATH|postgresql://...",
    help="The job store (default: SQLite in the state dir); PostgreSQL for many hosts.",
)
@click.option("--host-name", metavar="NAME", help="This host's name in a cluster (else hostname).")
@click.option("--new-token", is_flag=True, help="Print a new API token and its [[tokens]] entry.")
@click.option("--token-name", default="client", show_default=True, help="With --new-token.")
def serve(config_path, listens, state_dir, store, host_name, new_token, token_name) -> int:
    """Run the job daemon: jobs submitted over its socket run in cells (docs/jobs-api.md)."""
    import logging

    if new_token:
        return _print_token(token_name)
    logging.basicConfig(
        level=logging.INFO, format="nixcell serve: %(levelname)s %(message)s", force=True
    )
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    from nixcell.jobs.serve import serve as run

    return run(config_path, tuple(listens), state_dir, store=store, host_name=host_name)


def _print_token(name: str) -> int:
    from nixcell.jobs.config import new_token

    token, table = new_token(name)
    click.echo(token)
    click.echo(f"\n# in server.toml (only the hash is kept):\n{table}")
    return 0
