"""The click command tree. Thin: flags -> CellSpec -> runner; output only here."""

from __future__ import annotations

import logging
import os
import sys

import click

from nixcell import __version__
from nixcell.cli.netflags import network_from_flags, network_options, policy
from nixcell.cli.project_cmd import register as register_project_commands
from nixcell.cli.projectrun import (  # (project_spec: the commands that run a project's cell)
    RunCommand,
    project_and_command,
    project_options,
    project_spec,  # noqa: F401 - re-exported: `nixcell shell` and friends call main.project_spec
    project_spec_checked,
)
from nixcell.errors import UsageError

HARDENING_HELP = (
    "Weaken one named protection (repeatable): nested-sandbox = allow user/mount namespaces so "
    "bwrap or chromium can run inside; debugger = allow ptrace, process_vm_*, personality "
    "(ADDR_NO_RANDOMIZE) inside the cell; jit-runtime = accepted for nix-jail compatibility, "
    "changes nothing here (nixcell never restricts executable memory)."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="nixcell", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full error details.")
def cli(verbose: bool) -> None:
    """Run commands in cells: only the Nix packages they ask for, nothing else of the host."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="nixcell: %(levelname)s %(name)s: %(message)s",
    )


def _split_mount(value: str, flag: str) -> tuple[str, str]:
    src, sep, dst = value.partition(":")
    if not src:
        raise click.BadParameter(f"{flag} needs SRC[:DST], got {value!r}")
    src = os.path.abspath(os.path.expanduser(src))
    return src, (dst if sep and dst else src)


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for item in values:
        key, sep, val = item.partition("=")
        if not sep:
            raise click.BadParameter(f"-e needs K=V, got {item!r}")
        env[key] = val
    return env


def _completer(name: str):
    """A shell_complete callback that imports cli/completion.py only when a shell asks."""

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
        from nixcell.cli import completion

        return getattr(completion, name)(ctx, param, incomplete)

    return complete


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


def run_options(f):
    opts = [
        click.option(
            "-p",
            "--package",
            "packages",
            multiple=True,
            metavar="PKG",
            help="Nix package: attribute path, store path or flake#attr (repeatable).",
            shell_complete=_completer("complete_package"),
        ),
        click.option(
            "--nixpkgs",
            metavar="PIN",
            help="Package set: nixos-24.11, nixos-unstable, a 40-hex commit, a path, or 'offline'.",
            shell_complete=_completer("complete_pin"),
        ),
        click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set a variable."),
        click.option(
            "--pass-env",
            multiple=True,
            metavar="NAME",
            help="Pass a host variable through (skipped when unset).",
        ),
        click.option(
            "--workdir",
            metavar="DIR",
            help="Host dir bound read-write at /workspace (default: a fresh tmpfs).",
        ),
        click.option(
            "--cwd",
            default="/workspace",
            show_default=True,
            metavar="DIR",
            help="Directory inside the cell to start in.",
        ),
        click.option("--ro-bind", multiple=True, metavar="SRC[:DST]", help="Read-only mount."),
        click.option("--bind", multiple=True, metavar="SRC[:DST]", help="Read-write mount."),
        click.option(
            "--hide",
            multiple=True,
            metavar="PATH",
            help="Hide a path inside a mount (cell path or host path).",
        ),
        click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 256M (cgroup)."),
        click.option("--cpus", type=float, metavar="N", help="CPU limit, e.g. 1.5 (cgroup)."),
        click.option("--pids", type=int, metavar="N", help="Max processes+threads (cgroup)."),
        click.option(
            "--timeout", metavar="DURATION", help="Kill the cell after e.g. 30s; exit 124."
        ),
        click.option(
            "--disk",
            metavar="SIZE",
            help="Size of each writable tmpfs area (/tmp, home, fresh /workspace).",
        ),
        click.option(
            "--hardening-profile",
            "profiles",
            multiple=True,
            metavar="NAME",
            help=HARDENING_HELP,
            shell_complete=_completer("complete_profile"),
        ),
        click.option(
            "-i",
            "--interactive",
            is_flag=True,
            help="Give the cell its own pseudo-terminal even when stdin or stdout is not one.",
        ),
        click.option(
            "-T",
            "--no-tty",
            is_flag=True,
            help="No pseudo-terminal (default: one when stdin and stdout are terminals).",
        ),
        click.option(
            "--no-sh",
            is_flag=True,
            help="Do not add dash for /bin/sh (it then exists only if the packages bring a sh).",
        ),
        click.option(
            "--store",
            type=click.Choice(["closure", "readonly", "shared", "copy", "isolated"]),
            help="What the cell sees of /nix/store: its closure only (default), the whole store "
            "read-only, that plus the Nix daemon (shared), or a copy of the closure in "
            "--store-dir (copy: refreshed each run; isolated: copied once, then frozen).",
        ),
        click.option(
            "--store-dir",
            metavar="DIR",
            help="Host dir holding the copy of --store copy/isolated.",
        ),
        click.option(
            "--host-network",
            is_flag=True,
            help="Share the host's network namespace: no proxy, no policy (only when asked).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _no_packages(command: tuple[str, ...]) -> UsageError:
    """A run without -p is refused (a cell holds only what it names), with the package of the
    offline set that has the command when there is one."""
    from nixcell.nix.missing import provider_of
    from nixcell.nix.offline import find_set

    found = find_set()
    program = command[0] if command else ""
    provider = provider_of(program, found.packages) if found and program else None
    example = f"-p {provider}" if provider else "-p bash -p coreutils"
    where = f" ({program} is in {provider})" if provider and provider != program else ""
    return UsageError(
        f"no packages: a cell holds only the packages named with -p; add {example}{where}"
    )


def spec_from_flags(command: tuple[str, ...], **o: object):
    from nixcell.spec import make_spec

    if not o["packages"]:
        raise _no_packages(command)

    mounts = []
    for flag, writable in (("ro_bind", False), ("bind", True)):
        for value in o[flag]:  # type: ignore[attr-defined]
            src, dst = _split_mount(str(value), f"--{flag.replace('_', '-')}")
            mounts.append({"source": src, "target": dst, "writable": writable})
    # parents first (a stable sort): --bind D after --ro-bind D/sub would leave D/sub writable
    mounts.sort(key=lambda m: os.path.normpath(m["target"]).count("/"))
    workdir = o["workdir"]
    hides = [
        os.path.abspath(os.path.expanduser(str(h))) if not str(h).startswith("/") else str(h)
        for h in o["hide"]
    ]  # type: ignore[attr-defined]
    if o["interactive"] and o["no_tty"]:
        raise click.UsageError("-i/--interactive and -T/--no-tty exclude each other")
    return make_spec(
        command=list(command),
        packages=list(o["packages"]),  # type: ignore[call-overload]
        nixpkgs=o["nixpkgs"],
        env=_env_pairs(o["env"]),  # type: ignore[arg-type]
        pass_env=list(o["pass_env"]),  # type: ignore[call-overload]
        workdir=os.path.abspath(os.path.expanduser(str(workdir))) if workdir else None,
        cwd=o["cwd"],
        mounts=mounts,
        hide=hides,
        limits={
            "memory": o["memory"],
            "cpus": o["cpus"],
            "pids": o["pids"],
            "timeout": o["timeout"],
            "disk": o["disk"],
        },
        hardening_profiles=list(o["profiles"]),  # type: ignore[call-overload]
        network=network_from_flags(o),
        tty="always" if o["interactive"] else "never" if o["no_tty"] else "auto",
        sh=not o.get("no_sh"),
        store=o.get("store") or "closure",
        store_dir=os.path.abspath(os.path.expanduser(str(o["store_dir"])))
        if o.get("store_dir")
        else None,
        host_network=bool(o.get("host_network")),
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
def gc() -> int:
    """Clear every cache and remove what killed nixcell runs left behind.

    Caches: resolutions, cached plans, seccomp programs, the key that seals them (a new one
    is made on the next run), and the package names shell completion offers (made again on
    the next TAB). Leftovers: cell cgroups whose owning nixcell is dead. GC roots of
    resolutions stay (the store keeps those packages).
    """
    from nixcell import leftovers, paths, sealed
    from nixcell.fsio import remove_tree

    found = leftovers.sweep()
    cleared = []
    for kind in ("resolve", "plans", "seccomp", "completion"):
        path = paths.cache_dir() / kind
        if os.path.lexists(path):
            remove_tree(path)
            cleared.append(kind)
    sealed.forget_key()
    click.echo(
        f"removed {len(found['cgroups'])} stale cgroup(s); "
        "cleared the resolution, plan, seccomp and completion caches"
    )
    return 0


@cli.command("mcp")
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
register_project_commands(cli)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
