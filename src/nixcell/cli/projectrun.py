"""``nixcell run`` in a project: its options (``--project``, ``--no-project``, ``--network``),
which project and command a run names (``run DIR -- CMD``), and the project's spec from its
config and the flags (``project_spec``, shared by the commands that run a project's cell)."""

from __future__ import annotations

import os

import click

from nixcell.cli.netflags import network_from_flags
from nixcell.errors import UsageError


def project_options(f):
    opts = [
        click.option(
            "--project",
            "project_dir",
            metavar="DIR",
            help="The project root (its nixcell.toml or nixcage.toml); default: the nearest "
            "one above the current directory.",
        ),
        click.option("--no-project", is_flag=True, help="Ignore project configs."),
        click.option(
            "--network",
            type=click.Choice(["none", "proxy", "open", "host"]),
            help="In a project: override the network mode.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


class RunCommand(click.Command):
    """``run``: notes the word before the first ``--`` (``run DIR -- CMD`` names a project; in
    ``run -- DIR -- CMD`` DIR is the command, and click's parsing alone cannot tell them apart)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else -1
        ctx.meta["before_dashes"] = args[cut - 1] if cut > 0 else None
        return super().parse_args(ctx, args)


def project_and_command(command: tuple[str, ...], flags: dict[str, object], ctx=None):
    """(the project or None, the command): ``run DIR -- CMD`` names the project by its dir."""
    from nixcell.project.discover import find

    explicit = flags.get("project_dir")
    before = ctx.meta.get("before_dashes") if ctx is not None else None
    dir_form = len(command) >= 2 and command[1] == "--" and before == command[0]
    if dir_form and os.path.isdir(command[0]):
        if explicit is not None:
            raise click.UsageError("give the project once: --project DIR or DIR -- CMD")
        explicit, command = command[0], command[2:]
    if flags.get("no_project") and explicit is not None:
        raise click.UsageError("--no-project and a project directory exclude each other")
    found = find(os.getcwd(), explicit=explicit, ignore=bool(flags.get("no_project")))
    if found is None and flags.get("network"):
        raise click.UsageError("--network MODE is for projects (outside one: --allow-host ...)")
    return found, command


def project_spec(found, command: tuple[str, ...], flags: dict[str, object], warn=None):
    """The spec of a project's cell: the project loaded, its state dirs made, its config
    compiled with the flags (the commands that run a project's cell share this)."""
    return project_spec_checked(found, command, flags, warn)[0]


def project_spec_checked(found, command: tuple[str, ...], flags: dict[str, object], warn=None):
    """``project_spec`` and the host paths the spec was made for, as plan ``checked`` entries:
    give them to ``_run`` when the plan may be cached (it is stale when one changes)."""
    from nixcell.plancheck import link_kind
    from nixcell.project.compile import compile_spec, draft
    from nixcell.project.load import load
    from nixcell.project.state import ensure_state

    project = load(found)
    for line in project.warnings:
        (warn or _warn)(line)
    ensure_state(project)
    made = draft(project, os.getcwd())
    for line in made.skipped:
        (warn or _warn)(line)
    if not project.config.packages and not flags.get("packages"):
        from nixcell.cli.runflags import _no_packages

        hint = str(_no_packages(tuple(command) or project.config.command))
        raise UsageError(f"{found.path}: [nix] packages is empty: {hint.split(': ', 1)[1]}")
    net = network_from_flags(flags)
    spec = compile_spec(project, command, {**flags, "net": net}, os.getcwd())
    checked = tuple(("project", p, link_kind(p)) for p in dict.fromkeys(made.considered))
    return spec, checked


def _warn(line: str) -> None:
    from nixcell.cli.entry import one_line

    click.echo(f"nixcell: warning: {one_line(line)}", err=True)  # config values: escaped
