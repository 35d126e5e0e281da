"""A job request -> the CellSpec every front makes (``make_spec``), within the server's rules.

Everything in a ``JobRequest`` comes from a client and is untrusted. The spec is built from
named pieces (what to run, packages, env, limits, network, hardening), each checking its own
fields; no field can name a host path, a bind, ``pass_env``, the host network, a store mode or
nixcell's own dirs, because the spec gets those from the server alone. A refusal is a
``JobError`` (400) with one line; the same request always gives the same spec.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from nixcell.errors import NixcellError
from nixcell.jobs.config import ServerConfig
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.requestcheck import (
    check_cidrs,
    check_env,
    check_limits,
    check_text,
    one_line,
    shown,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from nixcell.jobs.profiles import Profile
    from nixcell.spec import CellSpec

JOB_DIR_IN_CELL = "/nixcell-job"  # where the job's own files (the script) appear, read-only
SCRIPT = "script"  # its name there and in the job dir
AUDIT = "audit.jsonl"  # the proxy's audit in the job dir, when the service names none
MAX_PACKAGES = 256
MAX_ARGS = 4096
MAX_SCRIPT = 1 << 20
MAX_CWD = 1024
MAX_RULES = 1000
MAX_HOST = 300  # a DNS name is at most 253, plus a port or brackets
_ATTR_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_'+-]*(\.[A-Za-z0-9_][A-Za-z0-9_'+-]*)*")
_SHELLS = ("bash", "bashInteractive")
# How spec errors name fields: the request's own JSON names, never a field of CellSpec's.
NAMES = {
    "command": "command",
    "packages": "packages",
    "nixpkgs": "nixpkgs",
    "env": "env",
    "cwd": "cwd",
    "hardening_profiles": "hardening",
    "network": "the network fields",
    "network.allow_hosts": "allow_hosts",
    "network.deny_hosts": "deny_hosts",
    "network.allow_cidrs": "allow_cidrs",
    **{f"limits.{k}": k for k in ("memory", "cpus", "pids", "timeout", "disk")},
}


@dataclass(frozen=True)
class Compiled:
    """The spec, and the files the service writes into the job dir before the cell starts."""

    spec: CellSpec
    files: dict[str, bytes]


def compile_request(
    request: JobRequest,
    config: ServerConfig,
    *,
    job_dir: str,
    workspace: str | None,
    cwd: str | None = None,
    credential_policy: str | None,
    audit: str | None,
    extra_packages: tuple[str, ...] = (),
) -> Compiled:
    """The cell of ``request`` (profiles already applied) under ``config``.

    ``job_dir``: a server-owned host dir the cell never writes (``files`` go there; the script
    is bound read-only from it). ``workspace``: a host dir bound read-write at /workspace (None:
    a fresh tmpfs). ``cwd``: the workspace's start dir (``Prepared.cwd``); a relative
    ``request.cwd`` is taken from there. ``credential_policy``: ``config.credential_policy``'s
    file. ``audit``: where the proxy writes its decisions (default ``job_dir``/audit.jsonl).
    ``extra_packages``: the server's own additions (a workspace's flake devShell)."""
    from nixcell.spec import make_spec

    if request.profiles:
        raise JobError("internal: profiles were not applied to the request", status=500)
    check_text(request.model_dump())
    _check_name(request.name)
    check_routing(request)
    packages = [*_packages(request.packages), *extra_packages]
    if not packages:
        raise JobError("packages: name at least one package (a cell holds only what it names)")
    command, files, mounts = _what_to_run(request, packages, job_dir)
    creds = _credentials(request, config)
    env = check_env(request.env, request.secret_env, [c["env"] for c in creds])
    limits = check_limits(request, config)
    backend = _backend(request, config)
    hardening = _hardening(request.hardening, config)
    network = _network(request, config, job_dir, credential_policy, audit)
    try:
        spec = make_spec(
            names=NAMES,
            command=command,
            packages=packages,
            nixpkgs=_nixpkgs(request.nixpkgs, config),
            env=env,
            workdir=workspace,
            cwd=_cwd(request.cwd, cwd),
            mounts=mounts,
            limits=limits,
            hardening_profiles=hardening,
            network=network,
            tty="always" if request.interactive else "never",
            backend=backend,
        )
    except NixcellError as exc:
        raise JobError(one_line(str(exc))) from None
    return Compiled(spec, files)


def check_request(
    request: JobRequest, config: ServerConfig, profiles: Mapping[str, Profile]
) -> Compiled:
    """At submit: apply the request's profiles and compile with placeholder dirs, so a request
    that could never run is refused now (first fault, one line) instead of failing later."""
    from nixcell.jobs.profiles import apply_profiles

    merged = apply_profiles(request, request.profiles, profiles)
    placeholder = os.path.join(config.state_dir, "jobs", "check")
    policy = os.path.join(placeholder, "credentials.toml") if config.credentials else None
    return compile_request(
        merged, config, job_dir=placeholder, workspace=None, credential_policy=policy, audit=None
    )


MAX_RETRY = 10


def check_routing(request: JobRequest) -> None:
    """``on_host`` is a host name as ``[server] host_name`` writes it; ``retry`` a small count."""
    from nixcell.jobs.config import NAME

    if request.on_host is not None and not NAME.fullmatch(request.on_host):
        raise JobError(f"on_host: {shown(request.on_host)} is not a host name")
    retry = request.retry
    if isinstance(retry, bool) or not isinstance(retry, int) or not 0 <= retry <= MAX_RETRY:
        raise JobError(f"retry: a whole number from 0 to {MAX_RETRY}, not {shown(retry)}")


def _check_name(name: str | None) -> None:
    if name is not None and (len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name)):
        raise JobError("name: at most 200 characters, no control characters")


def _packages(names: list[str]) -> list[str]:
    """Attribute paths only: no store path, flake reference or path (they name host files or
    make the server fetch), nothing that is not a plain Nix identifier chain."""
    if len(names) > MAX_PACKAGES:
        raise JobError(f"packages: at most {MAX_PACKAGES}, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or len(name) > 200 or not _ATTR_PATH.fullmatch(name):
            raise JobError(
                f"packages: {shown(name)} is not a package attribute path (like python3 or "
                "python3Packages.requests)"
            )
    return list(dict.fromkeys(names))


def _what_to_run(
    request: JobRequest, packages: list[str], job_dir: str
) -> tuple[list[str], dict[str, bytes], list[dict[str, Any]]]:
    """(argv, job files, mounts): a script is a file in the job dir, bound read-only into the
    cell and run by bash when a package brings it, else by /bin/sh."""
    if request.script is not None and request.command:
        raise JobError("give script or command, not both")
    if request.script is None:
        if not request.command:
            raise JobError("nothing to run: give command (an argv) or script")
        if len(request.command) > MAX_ARGS:
            raise JobError(f"command: at most {MAX_ARGS} arguments")
        if not request.command[0] or any("\0" in a for a in request.command):
            raise JobError("command: the program must be non-empty and no argument may hold NUL")
        if sum(len(a.encode("utf-8", "replace")) for a in request.command) > MAX_SCRIPT:
            raise JobError(f"command: at most {MAX_SCRIPT >> 20} MiB of arguments")
        return list(request.command), {}, []
    data = request.script.encode("utf-8", "surrogateescape")
    if not request.script.strip():
        raise JobError("script: empty")
    if len(data) > MAX_SCRIPT or "\0" in request.script:
        raise JobError(f"script: at most {MAX_SCRIPT >> 20} MiB of text, without NUL bytes")
    if not os.path.isabs(job_dir):
        raise JobError("internal: the job dir must be absolute", status=500)
    shell = "bash" if any(p in _SHELLS for p in packages) else "sh"
    target = f"{JOB_DIR_IN_CELL}/{SCRIPT}"
    mount = {"source": os.path.join(job_dir, SCRIPT), "target": target, "writable": False}
    return [shell, target], {SCRIPT: data}, [mount]


def _credentials(request: JobRequest, config: ServerConfig) -> list[dict[str, Any]]:
    """The server's credentials the request names (with the env name each gives the cell); a
    name the server lacks is refused, and so is a git credential it lacks."""
    from nixcell.net.credsource import parse_credentials

    out = []
    for name in dict.fromkeys(request.credentials):
        table = config.credential(name)
        if table is None:
            raise JobError(f"credentials: no credential {shown(name)} on this server")
        spec = parse_credentials([table], config.source or "server.toml")[0]
        out.append({"name": name, "env": spec.env})
    git = request.workspace.git_credential
    if git is not None and config.credential(git) is None:
        raise JobError(f"workspace.git_credential: no credential {shown(git)} on this server")
    return out


def _backend(request: JobRequest, config: ServerConfig) -> str:
    from nixcell.jobs.config import BACKENDS

    backend = config.default_backend if request.backend is None else request.backend
    if backend not in config.backends or backend not in BACKENDS:
        offered = ", ".join(config.backends)
        raise JobError(f"backend: {shown(backend)} is not offered here (backends: {offered})")
    if request.interactive and backend not in ("bwrap", "auto"):  # a job's pty: bwrap's own
        raise JobError(f"interactive: the {backend} backend gives a job no terminal (use bwrap)")
    return backend


def _hardening(names: list[str], config: ServerConfig) -> list[str]:
    """Hardening profiles weaken a protection: only those the server allows."""
    from nixcell.sandbox.seccomp import check_profiles

    try:
        wanted = list(check_profiles(names))
    except NixcellError as exc:
        raise JobError(f"hardening: {one_line(str(exc))}") from None
    refused = [n for n in wanted if n not in config.hardening]
    if refused:
        allowed = ", ".join(config.hardening) or "none"
        raise JobError(f"hardening: {refused[0]!r} is not allowed here (allowed: {allowed})")
    return wanted


def _network(
    request: JobRequest,
    config: ServerConfig,
    job_dir: str,
    credential_policy: str | None,
    audit: str | None,
) -> dict[str, Any] | None:
    """The proxy's rules: the request's hosts and cidrs, the server's policies by name, its
    credentials by name (their hosts come from server.toml alone); audit always on."""
    wants = request.allow_hosts or request.allow_cidrs or request.policies or request.credentials
    if not wants:
        return None
    files = []
    for name in dict.fromkeys(request.policies):
        path = config.policies.get(name) if isinstance(name, str) else None
        if path is None:
            raise JobError(f"policies: no policy {shown(name)} on this server")
        files.append(path)
    if request.credentials and not (request.allow_hosts or request.allow_cidrs or files):
        raise JobError(
            "credentials need a network: allow the credential's hosts (allow_hosts) or name a "
            "policy that does"
        )
    if (request.credentials or files) and config.credentials:
        if credential_policy is None:
            raise JobError("internal: the server's credential policy was not written", status=500)
        files.append(credential_policy)
    for key in ("allow_hosts", "deny_hosts", "allow_cidrs"):
        values = getattr(request, key)
        if len(values) > MAX_RULES or any(len(v) > MAX_HOST for v in values):
            raise JobError(f"{key}: at most {MAX_RULES} entries of {MAX_HOST} characters")
    check_cidrs(request.allow_cidrs)
    return {
        "allow_hosts": list(request.allow_hosts),
        "deny_hosts": list(request.deny_hosts),
        "allow_cidrs": list(request.allow_cidrs),
        "policy_files": files,
        "credentials": list(dict.fromkeys(request.credentials)),
        "audit": audit or os.path.join(job_dir, AUDIT),
    }


def pin_problem(pin: str, *, local: bool = False) -> str | None:
    """Why ``pin`` cannot be a job's ``nixpkgs`` (None: it can). A client names a channel, a
    commit or ``offline``; a path on the server only the admin may name (``local``)."""
    if not pin or len(pin) > 300 or any(ord(c) < 33 or ord(c) == 127 for c in pin):
        return "a pin is a channel (nixos-24.11), a 40-hex commit or 'offline'"
    base = pin.partition("#")[0]
    if (base.startswith(("/", ".", "~")) or "/" in base) and not local:
        return "a job cannot name a path on the server: use a channel, a 40-hex commit or 'offline'"
    from nixcell.nix.pins import source_for

    try:
        source = source_for(pin)
    except NixcellError as exc:
        return one_line(str(exc))
    if source.kind not in ("offline", "channel", "commit", *(("path",) if local else ())):
        return "a pin is a channel (nixos-24.11), a 40-hex commit or 'offline'"
    return None


def _nixpkgs(pin: str | None, config: ServerConfig) -> str | None:
    if pin is None:
        return config.nixpkgs
    problem = pin_problem(pin) if isinstance(pin, str) else "must be text"
    if problem:
        raise JobError(f"nixpkgs: {shown(pin)}: {problem}")
    return pin


def _cwd(value: str | None, base: str | None) -> str:
    """A cell path: relative ones start at the workspace's dir; no ``..``, NUL or control."""
    start = base or "/workspace"
    if value is None:
        return start
    if not isinstance(value, str) or not value or len(value) > MAX_CWD:
        raise JobError("cwd: a path inside the cell, at most 1024 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value) or ".." in value.split("/"):
        raise JobError(f"cwd: {shown(value)}: no '..' and no control characters")
    return posixpath.normpath(posixpath.join(start, value))
