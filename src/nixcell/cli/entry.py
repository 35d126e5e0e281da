"""Console entry point: the fast path first, then click; every error becomes one line.

This module is what ``nixcell`` imports at start-up, so it imports almost nothing itself.
"""

from __future__ import annotations

import _signal  # not `signal`: its enums cost ~3 ms of start-up
import sys

_SIGHUP, _SIGTERM = 1, 15


class Terminated(BaseException):
    """SIGTERM/SIGHUP, raised so that the cell is torn down like on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def one_line(text: str) -> str:
    """``text`` with control characters (a newline or an escape sequence in a value the user
    gave, or in a file name) written as escapes: an error is one line, and never drives the
    terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def error(message: str) -> None:
    try:  # a closed or full stderr must not turn the cell's exit code into ours
        sys.stderr.write(f"nixcell: {one_line(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass


class _TolerantStream:
    """stderr that drops what cannot be written (``2>/dev/full``, ``2>&-``): nixcell's notes and
    warnings are never worth more than the cell's exit code."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except (OSError, ValueError):
            return len(text)

    def flush(self) -> None:
        try:
            self._inner.flush()
        except (OSError, ValueError):
            return

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _guard_std_fds(args: list[str]) -> None:
    from nixcell.stdfds import reopen_closed

    reopen_closed(discard="mcp" in args[:2])  # mcp: its protocol streams (mcp/stdio.py)
    if not isinstance(sys.stderr, _TolerantStream):
        sys.stderr = _TolerantStream(sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    _guard_std_fds(args)
    for signum in (_SIGTERM, _SIGHUP):
        _signal.signal(signum, _on_signal)
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
    try:
        sys.stdout.flush()
    except OSError as exc:  # stdout full or closed: say so, but keep a cell's own exit code
        error(f"cannot write to stdout: {exc.strerror or exc}")
        code = code or 1
    if argv is None and _ran_warm():
        # Everything of the cell is torn down already (finally blocks): skip the interpreter's
        # finalisation (~1-4 ms of a ~20 ms warm run); nothing on the warm path registers atexit.
        sys.stderr.flush()
        import os

        os._exit(code)
    sys.exit(code)


def _ran_warm() -> bool:
    fast = sys.modules.get("nixcell.cli.fast")
    return bool(fast is not None and fast.ran)


def _dispatch(args: list[str]) -> int:
    import os

    try:
        os.getcwd()
    except FileNotFoundError:
        error("the current directory was deleted: cd to one that exists and run again")
        return 1
    from nixcell.cli.fast import try_fast_run

    fast = try_fast_run(args)
    if fast is not None:
        return fast
    full_site()
    import click

    from nixcell.cli.main import cli

    try:
        result = cli.main(args=args, prog_name="nixcell", standalone_mode=False)
    except _no_args_is_help(click) as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "", err=True)  # type: ignore[attr-defined]
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:  # click's word for Ctrl-C: the same line as the fast path's
        error("interrupted")
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


def full_site() -> None:
    """Under the isolated-mode launcher (cli/launcher.py): the environment's ``site`` now, as
    pip's script would have had it from the start (its .pth files)."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


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
    if isinstance(exc, OSError) and exc.strerror:  # the host refused something: name it
        if verbose:
            import traceback

            traceback.print_exc()
        where = f" ({exc.filename})" if exc.filename else ""
        error(f"{exc.strerror.lower()}{where}")
        return 1
    if verbose:
        import traceback

        traceback.print_exc()
    error(f"internal error: {type(exc).__name__}: {exc} (rerun with --verbose for details)")
    return 70
