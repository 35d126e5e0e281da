"""The click command tree. Thin: flags -> CellSpec -> runner; output only here."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import click

from nixcell import __version__
from nixcell.cli.jobs_cmd import register as register_job_commands
from nixcell.cli.jobs_cmd import server_options
from nixcell.cli.mcp_cmd import mcp
from nixcell.cli.netflags import network_options, policy
from nixcell.cli.project_cmd import register as register_project_commands
from nixcell.cli.projectrun import (  # (project_spec: the commands that run a project's cell)
    RunCommand,
    project_and_command,
    project_options,
    project_spec,  # noqa: F401 - re-exported: `nixcell shell` and friends call main.project_spec
    project_spec_checked,
)
from nixcell.cli.runflags import (  # noqa: F401 - re-exported: project_cmd and projectrun use them
    _no_packages,
    run_options,
    spec_from_flags,
)
from nixcell.cli.serve_cmd import serve
from nixcell.cli.store_cmd import store


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="nixcell", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full error details.")
def cli(verbose: bool) -> None:
    """Run commands in cells: only the Nix packages they ask for, nothing else of the host."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="nixcell: %(levelname)s %(name)s: %(message)s",
    )


@cli.command(cls=RunCommand, context_settings={"allow_interspersed_args": False})
@run_options
@network_options
@project_options
@click.option("--dry-run", is_flag=True, help="Print the plan instead of running it.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
@click.option(
    "--sbpl",
    is_flag=True,
    help="With --dry-run: the macOS sandbox-exec profile of the plan (docs/security.md, macOS).",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Trace the cell with strace (from outside); then list what it was denied.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    command: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    sbpl: bool,
    **flags: object,
) -> int:
    """Run COMMAND in a fresh cell (put it after `--`).

    In a project (a nixcell.toml or nixcage.toml above): its config, merged with the flags
    (flags win, lists add); no COMMAND runs its [cage] command; `run DIR -- CMD` names it."""
    from nixcell.fsio import open_output_dir
    from nixcell.platforms import refuse_cells

    if as_json and not dry_run:
        raise click.UsageError("--json needs --dry-run: it prints the plan as JSON, not a run")
    if sbpl and (not dry_run or as_json):
        raise click.UsageError("--sbpl needs --dry-run and no --json: it prints a profile")
    if not dry_run:
        refuse_cells()  # before anything slow: no cell can run on this system
    if flags.get("debug") and not dry_run:  # before anything runs: no run without its trace
        from nixcell.sandbox.tracer import strace_path

        strace_path()
    found, command = project_and_command(command, flags, ctx)
    if found is None:
        if not command:
            raise click.UsageError("Missing argument 'COMMAND...'.")
        spec, checked = spec_from_flags(command, **flags), ()
    else:
        if ctx.get_parameter_source("cwd") is click.core.ParameterSource.DEFAULT:
            flags["cwd"] = None
        spec, checked = project_spec_checked(found, command, flags)
    learn_to = flags.get("learn_output")
    # Checked and opened before anything slow runs, and before the cell can touch it: a
    # learned policy is never lost to a bad path (fsio.open_output_dir).
    learn_dir = open_output_dir(str(learn_to)) if learn_to and not dry_run else None
    try:
        if sbpl:
            return _print_profile(spec)
        learn = bool(flags.get("learn"))
        return _run(spec, dry_run, as_json, learn_dir, learn, bool(flags.get("debug")), checked)
    finally:
        if learn_dir is not None:
            os.close(learn_dir[0])


def _print_profile(spec) -> int:
    from nixcell.cli import progress
    from nixcell.runner import prepare
    from nixcell.sandbox.macos import profile

    with progress.reporter() as report:
        plan, _closure = prepare(spec, progress=report)
    click.echo(profile(plan), nl=False)
    return 0


def _run(
    spec,
    dry_run: bool,
    as_json: bool,
    learn_dir: tuple[int, str] | None,
    learn: bool,
    debug: bool = False,
    checked: tuple[tuple[str, str, str], ...] = (),
):
    import dataclasses

    from nixcell.cli import fast, progress
    from nixcell.runner import execute, prepare

    with progress.reporter() as report:
        plan, _closure = prepare(spec, progress=report)
    if checked:  # the project's paths: a cached plan is stale when one changes
        plan = dataclasses.replace(plan, checked=(*plan.checked, *checked))
    if dry_run:
        from nixcell.cli.show import show_plan

        show_plan(plan, as_json=as_json)
        return 0
    from nixcell import leftovers, preflight
    from nixcell.cli.outcome import report

    preflight.check(plan)  # nixcell's own one-line error, before bwrap would give its own
    if plan.backend != "bwrap":  # a backend that refuses the plan: no plan cached for it
        from nixcell.sandbox import backends

        backends.check(plan)
    if spec.backend != "auto":  # (a project's "auto" is probed again each run, as the flag's)
        fast.remember(plan)
    leftovers.sweep_if_due()
    # --learn prints the policy on stdout: the cell's own stdout goes to stderr then.
    stdout = 2 if learn and learn_dir is None else None
    with leftovers.RunMarker():
        result = execute(plan, stdout=stdout, trace=debug)
    return report(result, learn_dir)


@cli.command()
def doctor() -> int:
    """Check what nixcell needs on this host and how to install what is missing."""
    from nixcell.cli.doctor import run_doctor

    return run_doctor()


@cli.command()
@click.option("--jobs", "jobs", is_flag=True, help="Ask the job daemon to apply retention now.")
@server_options
def gc(jobs: bool, server: str | None, token_file: str | None) -> int:
    """Clear every cache and remove what killed nixcell runs left behind.

    With --jobs: ask the job daemon (admins) to remove expired jobs, uploads, workspaces, clones.

    Caches: resolutions, cached plans, seccomp programs, the key that seals them (a new one
    is made on the next run), and the package names shell completion offers (made again on
    the next TAB). Leftovers: cell cgroups (and systemd-backend units, Docker cells'
    containers and host directories) whose owning nixcell is dead. GC roots of
    resolutions stay (the store keeps those packages).
    """
    if jobs:
        from nixcell.cli.jobs_more import gc_jobs

        return gc_jobs(server, token_file)
    from nixcell import leftovers, paths, sealed
    from nixcell.fsio import remove_tree

    found = leftovers.sweep()
    # The key goes first: an entry a concurrent run seals between these steps is then either
    # removed with its directory or sealed under the new key, never left behind unverifiable.
    sealed.forget_key()
    # Every cache, not a list of known ones: a kind left out (the microVM's initramfs and KVM
    # probe, gVisor's runsc version) would be found unverifiable under the new key and warned of.
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(paths.cache_dir()):
            remove_tree(paths.cache_dir() / name)
    units = f"{len(found['units'])} stale systemd unit(s), " if found.get("units") else ""
    click.echo(
        f"removed {units}{len(found['cgroups'])} stale cgroup(s); "
        + (f"{len(found['docker'])} docker leftover(s); " if found.get("docker") else "")
        + (f"{len(found['gvisor'])} gvisor leftover(s); " if found.get("gvisor") else "")
        + (f"{len(found['microvm'])} microVM leftover(s); " if found.get("microvm") else "")
        + "cleared every cache (resolutions, plans, seccomp programs, completion, backend probes)"
    )
    return 0


def _register_offline() -> None:
    try:
        from nixcell.cli.offline_cmd import offline
    except ImportError:  # pragma: no cover - only while the offline set is being built
        return
    cli.add_command(offline)


@cli.command("completion")
@click.argument("shell", metavar="SHELL", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> int:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(nixcell completion bash)"        (e.g. in ~/.bashrc)
    zsh:   eval "$(nixcell completion zsh)"         (in ~/.zshrc, after compinit)
    fish:  nixcell completion fish > ~/.config/fish/completions/nixcell.fish
    """
    from nixcell.cli.completion import script

    click.echo(script(cli, shell), nl=False)
    return 0


_register_offline()
cli.add_command(policy)
cli.add_command(mcp)
cli.add_command(serve)
cli.add_command(store)
register_job_commands(cli)
register_project_commands(cli)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
