"""Console entry point: the fast path first, then click; every error becomes one line.

This module is what ``nixcell`` imports at start-up, so it imports almost nothing itself.
"""

from __future__ import annotations

import signal
import sys


class Terminated(BaseException):
    """SIGTERM/SIGHUP, raised so that the cell is torn down like on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def error(message: str) -> None:
    sys.stderr.write(f"nixcell: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    if "run" in args[:2] or "doctor" in args[:2]:
        from nixcell.sandbox.reap import become_subreaper

        become_subreaper()  # cells' orphans come back to us to be reaped (sandbox/reap.py)
    verbose = "-v" in args[:1] or "--verbose" in args[: args.index("--") if "--" in args else None]
    try:
        code = _dispatch(args)
    except KeyboardInterrupt:
        error("interrupted")
        code = 130
    except Terminated as exc:
        error("terminated")
        code = 128 + exc.signum
    except BrokenPipeError:
        code = 141
    except Exception as exc:
        code = _report(exc, verbose)
    sys.stdout.flush()
    sys.exit(code)


def _dispatch(args: list[str]) -> int:
    from nixcell.cli.fast import try_fast_run

    fast = try_fast_run(args)
    if fast is not None:
        return fast
    import click

    from nixcell.cli.main import cli

    try:
        result = cli.main(args=args, prog_name="nixcell", standalone_mode=False)
    except _no_args_is_help(click) as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)  # type: ignore[attr-defined]
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        error("aborted")
        return 130
    except click.UsageError as exc:
        # click's parser raises some (a missing option value) before any context is made
        cmd = exc.ctx.command_path if exc.ctx else _command_path(cli, args)
        message = " ".join(exc.format_message().split())  # click may wrap ("Choose from:\n\t…")
        error(f"{message} (see `{cmd} --help`)")
        return 2
    except click.ClickException as exc:
        error(exc.format_message())
        return exc.exit_code
    return result if isinstance(result, int) else 0


def _command_path(group, args: list[str]) -> str:
    """``nixcell mcp`` for ``mcp --transport``: the subcommands named before ``--``, so a
    usage error points at the help that explains it."""
    path, cmd = ["nixcell"], group
    for arg in args:
        if arg == "--" or not hasattr(cmd, "commands"):
            break
        sub = cmd.commands.get(arg)
        if sub is not None:
            path.append(arg)
            cmd = sub
    return " ".join(path)


def _no_args_is_help(click) -> type[BaseException]:
    """click 8.2 renamed NoArgsIsHelp to NoArgsIsHelpError."""
    exc = click.exceptions
    return getattr(exc, "NoArgsIsHelpError", None) or getattr(exc, "NoArgsIsHelp", exc.Exit)


def _report(exc: Exception, verbose: bool) -> int:
    from nixcell.errors import NixcellError

    if isinstance(exc, NixcellError):
        error(exc.message)
        if verbose and exc.detail:
            sys.stderr.write(exc.detail.rstrip("\n") + "\n")
        return exc.exit_code
    if verbose:
        import traceback

        traceback.print_exc()
    error(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for details)")
    return 70
