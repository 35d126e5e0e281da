"""The project commands: init, reinit, destroy, presets, hook direnv, status, shell.

Thin: the work is in ``nixcell.project`` (files, presets, direnv, status); here only flags,
questions and output. ``register(cli)`` adds them to the command tree (cli/main.py).
"""

from __future__ import annotations

import os
import sys

import click

from nixcell.errors import UsageError


def _target(directory: str | None) -> str:
    return os.path.abspath(directory or os.getcwd())


def _report(outcome, verb: str) -> None:
    for name in outcome.written:
        click.echo(f"{verb} {name}")
    for line in outcome.backed_up:
        click.echo(f"kept the old {line}")
    for name in outcome.kept:
        click.echo(f"kept {name}")


def _preset_option(f):
    from nixcell.project.presets import DEFAULT, PRESETS

    return click.option(
        "--preset",
        default=DEFAULT,
        show_default=True,
        type=click.Choice(list(PRESETS)),
        help="What the project starts with (see `nixcell presets`).",
    )(f)


@click.command()
@_preset_option
@click.argument("directory", metavar="[DIR]", required=False)
def init(preset: str, directory: str | None) -> int:
    """Make DIR (default: here) a project: nixcell.toml, .envrc, .nixcell/.

    Refuses, writing nothing, when a nixcell.toml or nixcage.toml is already there.
    """
    from nixcell.project import files, presets

    root = _target(directory)
    outer = _outer_project(root)
    outcome = files.write_project(root, presets.get(preset), nested=outer is not None)
    _report(outcome, "wrote")
    if outer:
        click.echo(
            f"note: {root} is inside the project {outer}: nixcell uses this config only when "
            f"named (`--project {root}`, `nixcell shell {root}`; its .envrc runs "
            "`nixcell hook direnv --project .`)",
            err=True,
        )
    if ".envrc" in outcome.written:
        click.echo(f"project {root} ({preset}): `direnv allow` there, then `nixcell shell`")
    else:
        click.echo(f"project {root} ({preset}): `nixcell shell` there")
    return 0


@click.command()
@_preset_option
@click.argument("directory", metavar="[DIR]", required=False)
def reinit(preset: str, directory: str | None) -> int:
    """Write DIR's project files afresh; the old config is kept as nixcell.toml.bak."""
    from nixcell.project import files, presets

    root = _target(directory)
    nested = _outer_project(root) is not None
    outcome = files.write_project(root, presets.get(preset), reinit=True, nested=nested)
    _report(outcome, "wrote")
    return 0


@click.command()
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
@click.argument("directory", metavar="[DIR]", required=False)
def destroy(yes: bool, directory: str | None) -> int:
    """Remove what init wrote in DIR (default: the project here): nixcell.toml, .nixcell/
    (state included) and the .envrc if it is still nixcell's. Backups (*.bak) stay."""
    from nixcell.project import files

    root = _project_root(directory)
    plan = files.planned_removal(root)
    if not yes:
        if not (sys.stdin.isatty() and sys.stderr.isatty()):
            raise UsageError("destroy: no terminal to ask on; pass --yes to remove " + root)
        click.echo(f"in {root} this removes: {', '.join(plan.removed)}", err=True)
        if not click.confirm("remove them?", default=False, err=True):
            click.echo("nothing removed", err=True)
            return 1
    done = files.remove_project(root, plan)
    for name in done.removed:
        click.echo(f"removed {name}")
    for name in done.kept:
        click.echo(f"kept {name}")
    return 0


def _outer_project(root: str) -> str | None:
    """The root of a project around ``root`` (discovery refuses nested configs unnamed)."""
    from nixcell.errors import NixcellError
    from nixcell.project import discover

    parent = os.path.dirname(root)
    if parent == root:
        return None
    try:
        found = discover.find(parent)
    except NixcellError:
        return None
    return found.root if found else None


def _project_root(directory: str | None) -> str:
    """DIR as given, or the root of the project around the current directory."""
    if directory:
        return _target(directory)
    from nixcell.project import discover

    found = discover.find(os.getcwd())
    if found is None:
        raise UsageError("no nixcell.toml here or above: name the project directory")
    return found.root


@click.command("list-presets")
def list_presets() -> int:
    """List the presets of `nixcell init --preset`."""
    from nixcell.project.presets import DEFAULT, PRESETS

    width = max(len(name) for name in PRESETS)
    for name, preset in PRESETS.items():
        mark = " (default)" if name == DEFAULT else ""
        click.echo(f"{name:<{width}}  {preset.summary}{mark}")
    return 0


@click.group()
def hook() -> None:
    """Shell hooks."""


@hook.command("direnv")
@click.option(
    "--project",
    "directory",
    metavar="DIR",
    help="The project's root (a project inside another is used only when named).",
)
def hook_direnv(directory: str | None) -> int:
    """Print the code a project's .envrc evaluates: eval "$(nixcell hook direnv)"."""
    from nixcell.project.direnv import hook as make_hook

    click.echo(make_hook(os.getcwd(), directory), nl=False)
    return 0


def _load(directory: str | None, no_project: bool = False):
    from nixcell.project import discover
    from nixcell.project.load import load

    if no_project:
        raise UsageError("--no-project: there is no project to use")
    found = discover.find(os.getcwd(), _target(directory) if directory else None)
    if found is None:
        raise UsageError(
            "no nixcell.toml (or nixcage.toml) here or above: `nixcell init` makes one"
        )
    return load(found)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@click.option("--project", "directory", metavar="DIR", help="The project's root directory.")
def status(as_json: bool, directory: str | None) -> int:
    """The project's config, which file it came from, and what this host has for it."""
    from nixcell.project.status import summary

    info = summary(_load(directory))
    if as_json:
        import json

        click.echo(json.dumps(info, indent=2))
        return 0
    _print_status(info)
    ready = all(d["ok"] or not d["required"] for d in info["dependencies"])
    return 0 if ready and not info["problems"] else 1


def _print_status(info: dict) -> None:
    """The status as rows; every line escaped (names, paths and hosts come from files)."""
    net = info["network"]
    rows = [
        ("project", info["root"]),
        ("config", f"{info['config']} ({info['format']})"),
        ("level", info["level"]),
        ("backend", info["backend"]),
        ("packages", " ".join(info["packages"]) or "(none)"),
        ("nixpkgs", info["nixpkgs"] + (f", flake {info['flake']}" if info["flake"] else "")),
        ("store", info["store_mode"]),
        ("network", net["mode"] + _hosts(net)),
        ("command", " ".join(info["command"]) or "(none: give one after --)"),
    ]
    fs = info["filesystem"]
    for key in ("ro_bind", "rw_bind", "blacklist"):
        if fs[key]:
            rows.append((key, " ".join(fs[key])))
    for line in fs["skipped"]:
        rows.append(("skipped", line))
    limits = [f"{k} {v}" for k, v in info["resources"].items() if v is not None]
    if limits:
        rows.append(("limits", ", ".join(limits)))
    cell = info["cell"]
    if cell["home"] is not None:
        project = "read-write" if cell["project_mounted"] else "not mounted (/workspace)"
        rows.append(("cell", f"project {project}, home {cell['home']}"))
    if cell["hidden"]:
        rows.append(("hidden", " ".join(cell["hidden"])))
    for key, value in rows:
        _echo(f"{key:<9} {value}")
    for cred in info["network"]["credential_sources"]:
        if cred.get("set") is False:
            _echo(
                f"warning: credential {cred['name']}: {cred['source'][4:]} is not set here "
                "(runs will refuse to start)",
                fg="yellow",
                err=True,
            )
    for problem in info["problems"]:
        _echo(f"error: {problem}", fg="red", err=True)
    for alert in info["alerts"]:
        _echo(f"WARNING: {alert}", fg="red", bold=True, err=True)
    for warning in info["warnings"]:
        _echo(f"warning: {warning}", fg="yellow", err=True)
    for dep in info["dependencies"]:
        mark = "ok" if dep["ok"] else ("MISSING" if dep["required"] else "missing")
        _echo(f"  {mark:<7} {dep['name']}: {dep['detail']}")


def _echo(text: str, **style: object) -> None:
    """One line on stdout (or ``err=True``), its control characters written as escapes: an
    escape sequence or a newline in a config value never reaches the terminal as such."""
    from nixcell.cli.entry import one_line

    err = bool(style.pop("err", False))
    if style:
        click.secho(one_line(text), err=err, **style)  # type: ignore[arg-type]
    else:
        click.echo(one_line(text), err=err)


def _hosts(net: dict) -> str:
    parts = []
    for key, label in (("allow_hosts", "allow"), ("deny_hosts", "deny"), ("allow_cidrs", "cidr")):
        if net[key]:
            parts.append(f"{label} {' '.join(net[key])}")
    if net["policy"]:
        parts.append(f"policy {' '.join(net['policy'])}")
    if net["credentials"]:
        parts.append(f"credentials {' '.join(net['credentials'])}")
    return f" ({'; '.join(parts)})" if parts else ""


# bash when the packages have it, else the sh every cell has, with a prompt that says where
# you are, or the config's (-e's) PS1. The prompt is written into the script as a quoted literal:
# bash drops an inherited PS1 when it starts non-interactive (as /bin/sh -c here), and dash sets
# one of its own. Starting through sh costs one exec of dash.
_PICK = "if command -v bash >/dev/null 2>&1; then {bash}exec bash -i; fi; {sh}exec sh -i"


def shell_script(prompt: str | None) -> str:
    import shlex

    if prompt is not None:
        own = f"PS1={shlex.quote(prompt)}; export PS1; "
        return _PICK.format(bash=own, sh=own)
    return _PICK.format(
        bash="PS1='(cell) \\w\\$ '; export PS1; ", sh="PS1='(cell) $ '; export PS1; "
    )


def _shell_command(main) -> click.Command:
    """``nixcell shell``: made here with ``run``'s options (cli/main.py owns them)."""

    @click.command(context_settings={"allow_interspersed_args": False})
    @main.run_options
    @main.network_options
    @main.project_options
    @click.option(
        "--debug",
        is_flag=True,
        help="Trace the cell with strace (from outside); after the shell, what it was denied.",
    )
    @click.argument("directory", metavar="[DIR]", required=False)
    @click.pass_context
    def shell(ctx: click.Context, directory: str | None, debug: bool, **flags: object) -> int:
        """An interactive shell in the project's cell (bash if its packages have it, else sh),
        always on a terminal of its own. DIR (or --project DIR): the project's root."""
        from nixcell.project import discover

        if directory and flags.get("project_dir"):
            raise click.UsageError("give the project once: --project DIR or DIR")
        if flags.get("no_tty"):
            raise click.UsageError("-T/--no-tty: a shell always gets a terminal (use run)")
        if flags.get("no_project"):
            raise click.UsageError("--no-project: shell opens a project's cell (use run)")
        from nixcell.platforms import refuse_cells

        refuse_cells()  # before anything slow: no cell can run on this system
        if debug:  # before anything runs: no shell without its trace
            from nixcell.sandbox.tracer import strace_path

            strace_path()
        explicit = directory or flags.get("project_dir")
        found = discover.find(os.getcwd(), explicit=str(explicit) if explicit else None)
        if found is None:
            raise UsageError(
                "no nixcell.toml (or nixcage.toml) here or above: `nixcell init` makes one"
            )
        flags["interactive"] = True
        if ctx.get_parameter_source("cwd") is click.core.ParameterSource.DEFAULT:
            flags["cwd"] = None  # where the user stands, as the level says
        command = ("/bin/sh", "-c", shell_script(None))
        spec, checked = main.project_spec_checked(found, command, flags)
        if "PS1" in spec.env:
            script = shell_script(spec.env["PS1"])
            spec = spec.model_copy(update={"command": ["/bin/sh", "-c", script]})
        return main._run(spec, False, False, None, False, debug, checked)

    return shell


def register(cli: click.Group) -> None:
    """Add the project commands to the command tree (called at the end of cli/main.py, whose
    run options ``shell`` shares)."""
    from nixcell.cli import main

    for command in (init, reinit, destroy, list_presets, hook, status, _shell_command(main)):
        cli.add_command(command)
    cli.add_command(list_presets, "presets")
