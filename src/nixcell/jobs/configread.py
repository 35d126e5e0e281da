"""Reading ``server.toml`` into a ``ServerConfig``: one table at a time, each key checked where
its line is known (``tomlfile.TomlFile``). ``config.load_config`` is the entry point."""

from __future__ import annotations

import grp
import os
import re
from typing import Any

from nixcell.errors import NixcellError, UsageError
from nixcell.jobs.config import (
    BACKENDS,
    GROUP,
    HASH,
    NAME,
    SCHEMES,
    SERVER_KEYS,
    SHUTDOWN,
    TABLES,
    ServerConfig,
    Token,
    listen_problem,
    state_dir_problem,
)
from nixcell.jobs.tomlfile import TomlFile


def read_config(path: str) -> ServerConfig:
    f = TomlFile(os.path.abspath(path), "server config")
    doc = f.doc
    f.unknown(doc, TABLES, ())
    for name in ("server", "defaults", "maxima", "policies"):
        if name in doc:
            f.table((name,), doc[name])
    values = _server(f, doc.get("server", {}))
    defaults = f.limits(("defaults",), doc.get("defaults", {}))
    maxima = f.limits(("maxima",), doc.get("maxima", {}))
    for key, value in defaults.items():
        if key in maxima and value > maxima[key]:
            f.fail(("defaults", key), f"the default is above [maxima] {key}")
    credentials = _credentials(f, doc.get("credentials", []))
    policies = _policies(f, doc.get("policies", {}), {c["name"] for c in credentials})
    tokens = _tokens(f, doc.get("tokens", []))
    return ServerConfig(
        **values,
        defaults=defaults,
        maxima=maxima,
        credentials=credentials,
        policies=policies,
        tokens=tokens,
        source=f.path,
    )


def _server(f: TomlFile, table: dict[str, Any]) -> dict[str, Any]:
    from nixcell.sandbox.seccomp import check_profiles
    from nixcell.units import parse_duration, parse_size

    f.unknown(table, SERVER_KEYS, ("server",))
    out: dict[str, Any] = {}

    def at(key: str) -> tuple[str, str]:
        return ("server", key)

    for key, value in table.items():
        if key == "state_dir":
            out[key] = f.path_value(at(key), value)
            problem = state_dir_problem(out[key])
            if problem:
                f.fail(at(key), problem)
        elif key == "listen":
            items = (value,) if isinstance(value, str) else f.strings(at(key), value)
            if not items:
                f.fail(at(key), "needs at least one listener")
            for item in items:
                problem = listen_problem(item)
                if problem:
                    f.fail(at(key), f"{item}: {problem}")
            out[key] = tuple(dict.fromkeys(items))
        elif key in ("socket_group", "admin_group"):
            name = f.string(at(key), value)
            if not GROUP.fullmatch(name):
                f.fail(at(key), f"{name!r} is not a group name")
            try:
                grp.getgrnam(name)
            except KeyError:
                f.fail(at(key), f"no group {name!r} on this host")
            out[key] = name
        elif key in ("concurrency", "per_user"):
            out[key] = f.integer(at(key), value, 1, 4096)
        elif key == "queue_limit":
            out[key] = f.integer(at(key), value, 1, 10_000_000)
        elif key == "log_limit":
            out[key] = f.integer(at(key), value, 10, 100_000_000)
        elif key == "backends":
            items = f.strings(at(key), value)
            bad = [b for b in items if b not in BACKENDS]
            if bad or not items:
                what = repr(bad[0]) if bad else "an empty list"
                f.fail(at(key), f"{what}: the backends here are {', '.join(BACKENDS)}")
            out[key] = tuple(dict.fromkeys(items))
        elif key == "default_backend":
            out[key] = f.string(at(key), value)
        elif key == "profile_dir":
            out[key] = f.path_value(at(key), value)
            if not os.path.isdir(out[key]):
                f.fail(at(key), f"{out[key]} is not a directory")
        elif key in ("retention", "shutdown_grace"):
            out[key] = f.parsed(at(key), value, parse_duration)
        elif key == "upload_limit":
            out[key] = f.parsed(at(key), value, parse_size)
        elif key == "shutdown":
            if value not in SHUTDOWN:
                f.fail(at(key), f"must be one of {', '.join(SHUTDOWN)}, got {value!r}")
            out[key] = value
        elif key == "repo_schemes":
            items = f.strings(at(key), value)
            bad = [s for s in items if s not in SCHEMES]
            if bad:
                f.fail(at(key), f"{bad[0]!r} is not one of {', '.join(SCHEMES)}")
            out[key] = tuple(dict.fromkeys(items))
        elif key == "repo_cidrs":
            from nixcell.net.addresses import canonical_network

            items = f.strings(at(key), value)
            for item in items:
                try:
                    canonical_network(item)
                except ValueError as exc:
                    f.fail(at(key), f"{item!r}: {exc}")
            out[key] = tuple(dict.fromkeys(items))
        elif key == "nixpkgs":
            from nixcell.jobs.compile import pin_problem

            out[key] = f.string(at(key), value)
            problem = pin_problem(out[key], local=True)
            if problem:
                f.fail(at(key), problem)
        elif key == "store":
            from nixcell.jobs.config import store_problem

            out[key] = f.string(at(key), value)
            problem = store_problem(out[key])
            if problem:
                f.fail(at(key), problem)
        elif key in ("store_key", "nix_root"):
            out[key] = f.path_value(at(key), value)
        elif key == "host_name":
            out[key] = f.string(at(key), value)
            if not NAME.fullmatch(out[key]):
                f.fail(at(key), "a host name is letters, digits, '_', '.', '-' (at most 64)")
        elif key == "substituters":
            items = f.strings(at(key), value)
            for item in items:
                if re.fullmatch(r"(file|https?)://[^/@]*@.*", item):
                    f.fail(at(key), "a binary cache URL holds no credentials (nix's netrc-file)")
                elif not re.fullmatch(r"(file|https?)://[^\s'\"\\]+", item):
                    f.fail(at(key), f"{item!r}: a file://, http:// or https:// binary cache URL")
            out[key] = tuple(dict.fromkeys(items))
        elif key == "cache_url":
            from nixcell.jobs.config import cache_url_problem

            out[key] = f.string(at(key), value)
            problem = cache_url_problem(out[key])
            if problem:
                f.fail(at(key), problem)
        elif key == "trusted_public_keys":
            items = f.strings(at(key), value)
            for item in items:
                if not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}:[A-Za-z0-9+/]{43}=", item):
                    f.fail(at(key), f"{item!r}: a nix public key, NAME:BASE64 (nix key convert)")
            out[key] = tuple(dict.fromkeys(items))
        elif key in ("heartbeat", "host_timeout", "closure_hint"):
            out[key] = f.parsed(at(key), value, parse_duration)
        elif key == "hardening":
            try:
                out[key] = check_profiles(f.strings(at(key), value))
            except NixcellError as exc:
                f.fail(at(key), str(exc))
    backends = out.get("backends", ServerConfig.backends)
    default = out.get("default_backend", backends[0])
    if default not in backends:
        f.fail(at("default_backend"), f"{default!r} is not in backends ({', '.join(backends)})")
    out["default_backend"] = default
    if out.get("substituters") and not out.get("trusted_public_keys"):
        f.fail(at("substituters"), "needs trusted_public_keys (nix verifies what it fetches)")
    beat = out.get("heartbeat", ServerConfig.heartbeat)
    if not 0.05 <= beat <= 60:
        f.fail(at("heartbeat"), "must be between 50ms and 60s")
    if out.get("host_timeout", ServerConfig.host_timeout) < max(3 * beat, 3.0):
        f.fail(
            at("host_timeout" if "host_timeout" in out else "heartbeat"),
            "host_timeout must be at least 3s and three heartbeats",
        )
    return out


def _credentials(f: TomlFile, tables: object) -> tuple[dict[str, Any], ...]:
    from nixcell.net.credsource import parse_credentials

    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        f.fail(("credentials",), "must be an array of tables ([[credentials]])")
    located = [
        {**t, "_line": f.lines.line("credentials", i), "_file": f.path}
        for i, t in enumerate(tables)
    ]
    try:
        parse_credentials(located, f.path)
    except NixcellError as exc:
        raise UsageError(str(exc)) from None
    return tuple(dict(t) for t in tables)


def _policies(f: TomlFile, table: dict[str, Any], credentials: set[str]) -> dict[str, str]:
    """Each named policy file exists, is the admin's, parses, and defines no credential that
    ``[[credentials]]`` also defines (the proxy would refuse the pair at every job)."""
    from nixcell.jobs.tomlfile import read_trusted
    from nixcell.net.policyfile import parse_policy

    out: dict[str, str] = {}
    for name, value in table.items():
        at = ("policies", name)
        if not NAME.fullmatch(name):
            f.fail(at, "a policy name is letters, digits, '_', '.', '-' (at most 64)")
        path = f.path_value(at, value)
        try:
            policy = parse_policy(read_trusted(path, "policy file"), path)
        except NixcellError as exc:
            f.fail(at, str(exc))
        for cred in policy.credentials:
            if cred.get("name") in credentials:
                f.fail(at, f"credential {cred.get('name')!r} is also defined in [[credentials]]")
        out[name] = path
    return out


def _tokens(f: TomlFile, tables: object) -> tuple[Token, ...]:
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        f.fail(("tokens",), "must be an array of tables ([[tokens]])")
    tokens: list[Token] = []
    for i, table in enumerate(tables):
        at = ("tokens", i)
        f.unknown(table, ("name", "hash", "admin"), at)
        name = f.string((*at, "name"), table.get("name"))
        if not NAME.fullmatch(name):
            f.fail((*at, "name"), "a token name is letters, digits, '_', '.', '-' (at most 64)")
        if any(t.name == name for t in tokens):
            f.fail((*at, "name"), f"token {name!r} is defined twice")
        digest = table.get("hash")
        if not isinstance(digest, str) or not HASH.fullmatch(digest):
            f.fail((*at, "hash"), "must be sha256:<64 lower-case hex> (nixcell serve --new-token)")
        if any(t.hash == digest for t in tokens):
            f.fail((*at, "hash"), "two tokens have the same hash")
        admin = f.boolean((*at, "admin"), table.get("admin", False))
        tokens.append(Token(name, digest, admin))
    return tuple(tokens)
