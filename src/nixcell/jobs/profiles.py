"""Job profiles (nix-jail's): ``{profile_dir}/NAME.toml``, named presets a request builds on.

``--profile a --profile b`` merges left to right: lists add (in order, without repeats), the
first profile to set a scalar wins, and whatever the request itself sets wins over every
profile. A profile is the admin's file, read as strictly as ``server.toml``; it can only say
what a request could say, so merging never grants a client more than asking directly would
(``compile.py`` checks the merged request against the server's limits either way).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nixcell.errors import NixcellError, UsageError
from nixcell.jobs.config import NAME
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest

log = logging.getLogger(__name__)

MAX_PROFILES = 1000  # files in a profile dir
MAX_APPLIED = 32  # profiles one request may name
LISTS = (
    "packages", "allow_hosts", "deny_hosts", "allow_cidrs", "policies", "credentials",
    "hardening", "secret_env",
)  # fmt: skip
SCALARS = ("nixpkgs", "backend")
_KEYS = ("description", *LISTS, *SCALARS, "script", "command", "env", "limits")
LIMITS = ("memory", "cpus", "pids", "timeout", "disk")


@dataclass(frozen=True)
class Profile:
    """One profile file, checked; empty/None = the profile does not set it."""

    name: str
    description: str = ""
    packages: tuple[str, ...] = ()
    nixpkgs: str | None = None
    script: str | None = None
    command: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    secret_env: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()
    credentials: tuple[str, ...] = ()
    hardening: tuple[str, ...] = ()
    limits: dict[str, int | float] = field(default_factory=dict)
    backend: str | None = None
    source: str = ""


def load_profiles(directory: str | None) -> dict[str, Profile]:
    """Every ``NAME.toml`` in ``directory`` (None: no profiles). The directory and each file
    must be the admin's (no symlink, not writable by others); a bad file is one ``UsageError``
    naming file:line. Other names (dotfiles, ``a b.toml``) are skipped with a log line."""
    if directory is None:
        return {}
    _check_dir(directory)
    profiles: dict[str, Profile] = {}
    for entry in sorted(os.listdir(directory)):
        if not entry.endswith(".toml") or entry.startswith("."):
            continue
        name = entry[: -len(".toml")]
        if not NAME.fullmatch(name):
            log.warning("profile %s skipped: a profile name is letters, digits, _ . -", entry)
            continue
        if len(profiles) >= MAX_PROFILES:
            raise UsageError(f"{directory}: more than {MAX_PROFILES} profiles")
        profiles[name] = read_profile(os.path.join(directory, entry), name)
    return profiles


def _check_dir(directory: str) -> None:
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise UsageError(f"profile dir {directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"profile dir {directory}: not a directory (or a symbolic link)")
    from nixcell.jobs.tomlfile import check_owner

    check_owner(st, f"profile dir {directory}")


def read_profile(path: str, name: str) -> Profile:
    from nixcell.jobs.tomlfile import TomlFile

    f = TomlFile(path, "profile")
    doc = f.doc
    f.unknown(doc, _KEYS, ())
    values: dict[str, Any] = {}
    for key, value in doc.items():
        at = (key,)
        if key in LISTS:
            values[key] = tuple(dict.fromkeys(f.strings(at, value)))
        elif key in (*SCALARS, "description"):
            values[key] = f.string(at, value)
        elif key == "script":
            if not isinstance(value, str) or not value.strip() or "\0" in value:
                f.fail(at, "must be a non-empty string (the script's text)")
            values[key] = value
        elif key == "command":
            values[key] = f.strings(at, value)
            if not values[key]:
                f.fail(at, "needs at least the program")
        elif key == "env":
            table = f.table(at, value)
            for k, v in table.items():
                if not isinstance(v, str):
                    f.fail((key, k), f"must be a string, got {type(v).__name__}")
            values[key] = dict(table)
        elif key == "limits":
            values[key] = f.limits(at, value)
    if "script" in values and "command" in values:
        f.fail(("command",), "a profile sets script or command, not both")
    if values.get("hardening"):
        from nixcell.sandbox.seccomp import check_profiles

        try:
            check_profiles(values["hardening"])
        except NixcellError as exc:
            f.fail(("hardening",), str(exc))
    return Profile(name=name, source=path, **values)


def _shown(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 66 else text[:63] + "..."


def apply_profiles(
    request: JobRequest, names: list[str], profiles: Mapping[str, Profile]
) -> JobRequest:
    """``request`` with the named profiles merged in (rules in the module docstring); its
    ``profiles`` field is then empty (``compile_request`` refuses a request that still has
    some). An unknown name is a ``JobError`` (400)."""
    wanted = list(dict.fromkeys(names))
    if len(wanted) > MAX_APPLIED:
        raise JobError(f"at most {MAX_APPLIED} profiles per job, got {len(wanted)}")
    chosen: list[Profile] = []
    for name in wanted:
        profile = profiles.get(name) if isinstance(name, str) else None
        if profile is None:
            known = ", ".join(sorted(profiles)[:20]) or "none are configured"
            raise JobError(f"unknown profile {_shown(name)} (profiles here: {known})")
        chosen.append(profile)
    data = request.model_dump()
    for key in LISTS:
        merged = [v for p in chosen for v in getattr(p, key)]
        data[key] = list(dict.fromkeys([*merged, *data[key]]))
    for key in SCALARS:
        if data[key] is None:
            data[key] = next((getattr(p, key) for p in chosen if getattr(p, key)), None)
    if not data["command"] and data["script"] is None:
        first = next((p for p in chosen if p.command or p.script is not None), None)
        if first is not None:
            data["command"], data["script"] = list(first.command), first.script
    env: dict[str, str] = {}
    for profile in chosen:
        for key, value in profile.env.items():
            env.setdefault(key, value)
    data["env"] = {**env, **data["env"]}
    for key in LIMITS:
        if data[key] is None:
            data[key] = next((p.limits[key] for p in chosen if key in p.limits), None)
    data["profiles"] = []
    try:
        return JobRequest.model_validate(data)
    except ValueError as exc:  # pydantic's ValidationError: a profile value of the wrong shape
        raise JobError(f"profiles {', '.join(wanted)}: {str(exc).splitlines()[0]}") from None
