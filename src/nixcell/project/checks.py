"""Checks of a config's values that need more than their type: limits in range, host patterns
that parse, variable names, a network mode that agrees with the keys beside it. Each failure
names the file, line and key (the loader's ``where``)."""

from __future__ import annotations

import os
import re

from nixcell.errors import NixcellError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.project.load import Config, _Reader

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _limits(config: Config, reader: _Reader) -> None:
    from pydantic import ValidationError

    from nixcell.spec import Limits

    for key in ("cpus", "pids", "memory"):
        value = getattr(config, key)
        if value is None:
            continue
        try:
            Limits(**{key: value})
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise reader.fail("sandbox.resources", key, message) from None


def _network(config: Config, reader: _Reader) -> None:
    from nixcell.net.policy import policy_from_flags

    table = "sandbox.network"
    for slot, key in enumerate(("allow_hosts", "deny_hosts", "allow_cidrs")):
        args: list[list[str]] = [[], [], []]
        args[slot] = list(getattr(config, key))
        try:
            policy_from_flags(*args)
        except NixcellError as exc:
            raise reader.fail(table, key, str(exc)) from None
    narrowed = config.allow_hosts or config.policy or config.allow_cidrs
    if config.mode in ("none", "host") and (narrowed or config.deny_hosts or config.credentials):
        key = next(
            k
            for k in ("allow_hosts", "policy", "allow_cidrs", "deny_hosts", "credentials")
            if getattr(config, k)
        )
        raise reader.fail(
            table, key, f"has no effect with mode = {config.mode!r} (no proxy, no policy)"
        )
    if config.mode == "proxy" and not narrowed:
        raise reader.fail(
            table, "mode", "'proxy' needs allow_hosts, allow_cidrs or policy (or use 'open')"
        )
    if config.credentials and not config.policy:
        raise reader.fail(table, "credentials", "names [[credentials]] of a policy: add policy")
    root = reader.found.root
    for path in config.policy:
        if not os.path.isfile(path):
            raise reader.fail(table, "policy", f"{path}: no such file")
        inside = path.startswith(root.rstrip("/") + "/")
        if (
            inside
            and os.path.dirname(path) != root
            and not path.startswith(os.path.join(root, ".nixcell") + "/")
        ):
            # bound read-only, yet a cell could rename the directory above it and leave a
            # policy of its own (credentials for any host) for the next run: only the root
            # (a mount point cannot be moved) and .nixcell/ (read-only as a whole) are safe
            raise reader.fail(
                table,
                "policy",
                f"{path}: inside the project, a policy file belongs in "
                ".nixcell/ or the project root (a cell could replace the directory above it)",
            )


def _names(config: Config, reader: _Reader) -> None:
    for name in config.passthrough_env:
        if not _ENV_NAME.match(name):
            raise reader.fail("cage", "passthrough_env", f"{name!r} is not a variable name")
    for name, value in config.env.items():
        if not _ENV_NAME.match(name) or "\0" in value:
            raise reader.fail("cage", "env", f"{name!r} is not a variable name")
    if config.command and not config.command[0]:
        raise reader.fail("cage", "command", "the program name is empty")
    for pkg in config.packages:
        if pkg != pkg.strip() or '"' in pkg or "\\" in pkg:
            raise reader.fail("nix", "packages", f"invalid package name {pkg!r}")
    if config.flake is not None and "#" in config.flake:
        raise reader.fail("nix", "flake", "names a flake reference, without '#'")
    if config.flake is not None and config.nixpkgs is not None:
        raise reader.fail("nix", "flake", "and nixpkgs exclude each other: keep one")
    for key in ("ro_bind", "rw_bind", "blacklist"):
        for value in getattr(config, key):
            src = value.split(":", 1)[0] if key != "blacklist" else value
            if not src:
                raise reader.fail("sandbox.filesystem", key, f"{value!r} has no source path")


def check_config(config: Config, reader: _Reader) -> None:
    """Refuse a config whose values cannot make a cell (``UsageError`` naming the line)."""
    _limits(config, reader)
    _network(config, reader)
    _names(config, reader)
