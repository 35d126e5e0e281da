"""The job client's reading commands: jobs, show, logs, cancel, artifacts (and gc --jobs)."""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from typing import Any

import click

from nixcell.cli.jobs_cmd import _client, follow, server_options, write_line


def _id(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise click.UsageError(f"job id {value!r}: a positive integer")
    return int(value)


def _duration(job: dict[str, Any]) -> str:
    seconds = job.get("duration")
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def _label(job: dict[str, Any]) -> str:
    request = job.get("request") or {}
    text = (
        job.get("name")
        or " ".join(request.get("command") or [])
        or ("script" if request.get("script") else "")
    )
    text = _printable(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _printable(value: object) -> str:
    """Job-derived text for a terminal: control characters (escape sequences) as '?'."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


@click.command("jobs")
@click.option("--status", "states", multiple=True, metavar="STATE", help="Only these states.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The jobs as JSON (id, state, host, ...).")
@click.option("--all-hosts", is_flag=True, help="Every host's jobs (a cluster), not this one's.")
@server_options
def jobs(
    states: tuple[str, ...], limit: int, as_json: bool, all_hosts: bool, server, token_file
) -> int:
    """List jobs, newest first (yours; admins see everyone's)."""
    from nixcell.jobs.client import query

    found = _client(server, token_file).call(
        "GET", query("/api/v1/jobs", state=list(states), limit=limit, all_hosts=all_hosts)
    )["jobs"]
    if as_json:
        click.echo(json.dumps(found, indent=2))
        return 0
    hosts = any(j.get("host") for j in found)  # a cluster's jobs: which host ran each
    rows = [("ID", "STATE", "OWNER", *(("HOST",) if hosts else ()), "DURATION", "NAME/COMMAND")]
    for j in found:
        host = (_printable(j.get("host") or "-"),) if hosts else ()
        rows.append(
            (str(j["id"]), j["state"], _printable(j["owner"]), *host, _duration(j), _label(j))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo("".join(c.ljust(w + 2) for c, w in zip(row, widths, strict=False)) + row[-1])
    return 0


@click.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True)
@server_options
def show(job_id: str, as_json: bool, server, token_file) -> int:
    """A job's fields and its events."""
    from nixcell.jobs.client import job_path

    answer = _client(server, token_file).call("GET", job_path(_id(job_id)))
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return 0
    job = answer["job"]
    job = {**job, "duration": _duration(job) if job.get("duration") is not None else None}
    for key in ("id", "state", "owner", "name", "exit_code", "reason", "duration", "log_lines"):
        if job.get(key) is not None:
            click.echo(f"{key:10} {_printable(job[key])}")
    click.echo(f"{'command':10} {_label(job)}")
    for event in answer.get("events", []):
        stamp = time.strftime("%H:%M:%S", time.localtime(event["time"]))
        what = event.get("state") or event.get("kind")
        detail = f" ({_printable(event['detail'])})" if event.get("detail") else ""
        click.echo(f"  {stamp} {_printable(what)}{detail}")
    return 0


@click.command("logs")
@click.argument("job_id", metavar="ID")
@click.option("-f", "--follow", "following", is_flag=True, help="Go on until the job ends.")
@click.option("--tail", type=click.IntRange(0, 1_000_000), help="Only the last N lines.")
@click.option(
    "--stream", "streams", multiple=True, type=click.Choice(["stdout", "stderr", "proxy", "system"])
)
@server_options
def logs(job_id: str, following: bool, tail, streams, server, token_file) -> int:
    """A job's log: its stdout on stdout, the rest on stderr ([proxy], [nixcell] prefixed)."""
    from nixcell.jobs.client import job_path, query

    ident = _id(job_id)
    client = _client(server, token_file)
    if following:
        code = follow(client, ident, streams=list(streams) or None, after=0, tail=tail)
        return code if code == 130 else 0
    after = 0
    while True:
        path = query(job_path(ident, "/logs"), after=after or None, tail=tail, stream=list(streams))
        lines = client.call("GET", path)["lines"]
        for line in lines:
            write_line(line)
        if tail is not None or not lines:
            return 0
        after = lines[-1]["seq"]


@click.command("cancel")
@click.argument("job_id", metavar="ID")
@server_options
def cancel(job_id: str, server, token_file) -> int:
    """Cancel a queued or running job (yours; admins any)."""
    from nixcell.jobs.client import job_path

    job = _client(server, token_file).call("POST", job_path(_id(job_id), "/cancel"))["job"]
    click.echo(f"job {job['id']} {job['state']}")
    return 0


@click.command("artifacts")
@click.argument("job_id", metavar="ID")
@click.option("-o", "--output", metavar="FILE", help="Write the tar here (else stdout).")
@server_options
def artifacts(job_id: str, output: str | None, server, token_file) -> int:
    """The finished job's /workspace as a tar (to -o FILE, or to stdout when not a terminal)."""
    from nixcell.jobs.client import ClientError, job_path

    if output is None and sys.stdout.isatty():
        raise click.UsageError("the tar would go to a terminal: give -o FILE or redirect stdout")
    response = _client(server, token_file, timeout=None).open(
        "GET", job_path(_id(job_id), "/artifacts")
    )
    target = output + ".part" if output else None
    fd = (
        os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        if target
        else sys.stdout.buffer.fileno()
    )
    done = False
    try:
        while chunk := response.read(1 << 16):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
        done = True
    except (OSError, http.client.HTTPException) as exc:
        raise ClientError(f"the tar broke off: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        if target:
            os.close(fd)
            if done:
                os.replace(target, str(output))
            else:
                os.unlink(target)  # never a partial tar under the asked name
    return 0


def gc_jobs(server: str | None, token_file: str | None) -> int:
    """`nixcell gc --jobs`: ask the daemon to apply retention now (admins)."""
    counts = _client(server, token_file, timeout=None).call("POST", "/api/v1/gc")
    click.echo("removed " + ", ".join(f"{n} {kind}" for kind, n in counts.items()))
    return 0


COMMANDS = (jobs, show, logs, cancel, artifacts)
