"""The job client commands: submit, jobs, show, logs, cancel, artifacts (API.md's client).

Thin: flags -> a JobRequest-shaped dict -> ``jobs.client`` -> output. Nothing here imports
starlette or pydantic (the daemon checks every field). ``attach`` and ``submit -i`` belong to
the interactive part: ``INTERACTIVE_HOOK`` is where it plugs in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from nixcell.cli.runflags import HARDENING_HELP, _env_pairs

# Set by the interactive part: (client, job_id) -> exit code (attaches to the job's terminal).
INTERACTIVE_HOOK: Callable[[Any, int], int] | None = None
_EXIT = {"succeeded": 0, "timed_out": 124, "cancelled": 130, "error": 1}
_PREFIX = {"proxy": "[proxy] ", "system": "[nixcell] "}


def server_options(f):
    f = click.option("--token-file", metavar="FILE", help="Bearer token (else $NIXCELL_TOKEN).")(f)
    return click.option(
        "--server",
        metavar="URL",
        help="unix:/path or http://host:port (else $NIXCELL_SERVER, else the default socket).",
    )(f)


def _client(server: str | None, token_file: str | None, **kw: Any):
    from nixcell.jobs.client import Client

    return Client(server, token_file=token_file, **kw)


def submit_options(f):
    multi = {"multiple": True}
    opts = [
        click.option("-p", "--package", "packages", metavar="PKG", help="Nix package.", **multi),
        click.option("--nixpkgs", metavar="PIN", help="Package set pin (server default if unset)."),
        click.option("-e", "--env", "env", metavar="K=V", help="Set a variable.", **multi),
        click.option("--secret-env", metavar="NAME", help="An -e value never shown back.", **multi),
        click.option("--allow-host", metavar="PATTERN", help="Allow a host (proxy).", **multi),
        click.option("--deny-host", metavar="PATTERN", help="Deny a host.", **multi),
        click.option("--allow-cidr", metavar="CIDR", help="Allow addresses.", **multi),
        click.option("--policy", "policies", metavar="NAME", help="A server policy.", **multi),
        click.option(
            "--credential", "credentials", metavar="NAME", help="A server credential.", **multi
        ),
        click.option("--memory", metavar="SIZE", help="Memory limit, e.g. 256M."),
        click.option("--cpus", metavar="N", help="CPU limit, e.g. 1.5."),
        click.option("--pids", metavar="N", help="Max processes+threads."),
        click.option("--timeout", metavar="DURATION", help="Kill the cell after e.g. 30s."),
        click.option("--disk", metavar="SIZE", help="Size of each writable tmpfs area."),
        click.option("--hardening", metavar="NAME", help=HARDENING_HELP, **multi),
        click.option("--backend", metavar="NAME", help="Cell backend (server's default if unset)."),
        click.option("-s", "--script", type=click.File("r"), help="Run this script (bash)."),
        click.option("--repo", metavar="URL", help="Clone this git repo into /workspace."),
        click.option("--ref", metavar="REF", help="Branch, tag or 40-hex commit of --repo."),
        click.option("--path", "subpath", metavar="DIR", help="Start in this dir of the clone."),
        click.option("--git-credential", metavar="NAME", help="Server credential for the clone."),
        click.option("--upload", metavar="DIR", help="Send DIR (as a tar) as /workspace."),
        click.option("--flake-shell", is_flag=True, help="Add the workspace flake's devShell."),
        click.option("--profile", "profiles", metavar="NAME", help="A server profile.", **multi),
        click.option("--cwd", metavar="DIR", help="Directory inside the cell to start in."),
        click.option("--name", metavar="LABEL", help="A label for listings."),
        click.option("--follow", is_flag=True, help="Stream the logs; exit with the job's code."),
        click.option("--detach", is_flag=True, help="Print the job id alone."),
        click.option("-i", "--interactive", is_flag=True, help="An interactive job; attach."),
        click.option("--on-host", metavar="NAME", help="Run only on this host of a cluster."),
        click.option(
            "--retry",
            type=click.IntRange(0, 10),
            help="Re-runs if its host is lost (idempotent jobs only).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _number(value: str | None) -> Any:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value  # a string: the daemon parses "30s", "256M"


def request_from_flags(command: tuple[str, ...], o: dict[str, Any], upload: str | None) -> dict:
    env = _env_pairs(tuple(o["env"]))
    if o["interactive"] and "TERM" not in env and os.environ.get("TERM"):
        env["TERM"] = os.environ["TERM"]  # the job's pty is read by this terminal
    missing = [n for n in o["secret_env"] if n not in env]
    if missing:
        raise click.UsageError(f"--secret-env {missing[0]}: set it with -e {missing[0]}=VALUE")
    script = o["script"].read() if o["script"] is not None else None
    if script is not None and command:
        raise click.UsageError("-s/--script and a COMMAND exclude each other")
    workspace = {
        "repo": o["repo"],
        "ref": o["ref"],
        "path": o["subpath"],
        "git_credential": o["git_credential"],
        "upload": upload,
        "flake_shell": bool(o["flake_shell"]),
    }
    request: dict[str, Any] = {
        "packages": list(o["packages"]),
        "nixpkgs": o["nixpkgs"],
        "command": list(command),
        "script": script,
        "env": env,
        "secret_env": list(o["secret_env"]),
        "allow_hosts": list(o["allow_host"]),
        "deny_hosts": list(o["deny_host"]),
        "allow_cidrs": list(o["allow_cidr"]),
        "policies": list(o["policies"]),
        "credentials": list(o["credentials"]),
        "memory": o["memory"],
        "cpus": _number(o["cpus"]),
        "pids": _number(o["pids"]),
        "timeout": _number(o["timeout"]),
        "disk": o["disk"],
        "hardening": list(o["hardening"]),
        "backend": o["backend"],
        "workspace": {k: v for k, v in workspace.items() if v not in (None, False)},
        "cwd": o["cwd"],
        "profiles": list(o["profiles"]),
        "interactive": bool(o["interactive"]),
        "name": o["name"],
        "on_host": o["on_host"],
        "retry": o["retry"] or None,
    }
    return {k: v for k, v in request.items() if v not in (None, [], {})}


@click.command(context_settings={"allow_interspersed_args": False})
@submit_options
@server_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit(command: tuple[str, ...], server: str | None, token_file: str | None, **o: Any) -> int:
    """Submit a job to the daemon: COMMAND (after `--`) or -s SCRIPT in a cell it runs."""
    if o["follow"] and o["detach"]:
        raise click.UsageError("--follow and --detach exclude each other")
    client = _client(server, token_file)
    upload = None
    if o["upload"]:
        from nixcell.jobs.tarsend import tar_chunks

        answer = client.open(
            "POST",
            "/api/v1/uploads",
            body=tar_chunks(o["upload"]),
            content_type="application/x-tar",
            timeout=None,
        )
        import json

        upload = json.loads(answer.read())["upload"]
    job = client.call("POST", "/api/v1/jobs", request_from_flags(command, o, upload))["job"]
    if o["detach"]:
        click.echo(job["id"])
        return 0
    if o["interactive"]:
        if INTERACTIVE_HOOK is None:
            raise click.ClickException("interactive attach is not available in this build")
        return INTERACTIVE_HOOK(client, int(job["id"]))
    if not o["follow"]:
        click.echo(f"job {job['id']} {job['state']}: `nixcell logs -f {job['id']}` to follow")
        return 0
    return follow(client, int(job["id"]), streams=None, after=0, tail=None)


def _writer(stream: str) -> tuple[Any, str]:
    out = sys.stdout if stream == "stdout" else sys.stderr
    return out, _PREFIX.get(stream, "")


def write_line(line: dict[str, Any]) -> None:
    """One log line: stdout to stdout, the rest to stderr; escapes neutralised on a terminal."""
    out, prefix = _writer(str(line.get("stream")))
    text = str(line.get("text", ""))
    if out.isatty() and not text.isprintable():
        text = "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in text)
    out.write(f"{prefix}{text}\n")
    out.flush()


def exit_code(state: str | None, code: int | None, reason: str | None) -> int:
    if state == "failed":
        return code if code is not None else 1
    if state == "error" and reason:
        from nixcell.cli.entry import error

        error(f"job error: {reason}")
    return _EXIT.get(str(state), 1)


def follow(client, job_id: int, *, streams, after: int, tail: int | None) -> int:
    """Stream a job's logs until it ends; the job's exit code (API.md)."""
    from nixcell.jobs.client import job_path, query

    path = query(
        job_path(job_id, "/logs"), follow=1, after=after or None, tail=tail, stream=streams
    )
    last = None
    try:
        for kind, _ident, data in client.events(path):
            if kind == "log":
                write_line(data)
            elif kind == "state" and data.get("state") in _EXIT | {"failed": 1}:
                last = data
            elif kind == "error":
                raise click.ClickException(str(data.get("error")))
    except KeyboardInterrupt:
        from nixcell.cli.entry import error

        error(f"job {job_id} goes on (`nixcell cancel {job_id}` stops it)")
        return 130
    job = client.call("GET", job_path(job_id))["job"]
    state = last.get("state") if last else job["state"]
    return exit_code(state, job.get("exit_code"), job.get("reason"))


def register(cli: click.Group) -> None:
    from nixcell.cli import attach_cmd, jobs_more

    cli.add_command(submit)
    attach_cmd.register(cli)  # `attach`, and INTERACTIVE_HOOK for `submit -i`
    for command in jobs_more.COMMANDS:
        cli.add_command(command)
