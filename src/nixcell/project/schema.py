"""The keys of ``nixcell.toml`` and ``nixcage.toml``: one table, so both loaders agree.

Each key has a kind that says how its value is checked and normalised. ``nixcage.toml`` (nixcage
0.x) has a subset of the keys: the others are unknown there (a warning), as are keys nixcell
does not know at all (an error in ``nixcell.toml``). See docs/project.md for what each means.
"""

from __future__ import annotations

import shlex

LEVELS = ("strict", "standard", "relaxed")
# sandbox/backends.py NAMES, and auto (not imported: the CLI's warm path reads this module)
BACKENDS = ("bwrap", "gvisor", "microvm", "docker", "systemd", "auto")
NETWORK_MODES = ("none", "proxy", "open", "host")
STORE_MODES = ("closure", "readonly", "shared", "copy", "isolated")

# (table, key) -> (kind, in nixcage.toml too)
KEYS: dict[tuple[str, str], tuple[str, bool]] = {
    ("sandbox", "level"): ("level", True),
    ("sandbox", "backend"): ("backend", False),
    ("sandbox.filesystem", "ro_bind"): ("strings", True),
    ("sandbox.filesystem", "rw_bind"): ("strings", True),
    ("sandbox.filesystem", "blacklist"): ("strings", True),
    ("sandbox.network", "mode"): ("mode", False),
    ("sandbox.network", "allow"): ("bool", True),
    ("sandbox.network", "allow_hosts"): ("strings", False),
    ("sandbox.network", "deny_hosts"): ("strings", False),
    ("sandbox.network", "allow_cidrs"): ("strings", False),
    ("sandbox.network", "policy"): ("strings_or_one", False),
    ("sandbox.network", "credentials"): ("strings", False),
    ("sandbox.network", "audit"): ("string", False),
    ("sandbox.resources", "cpus"): ("number", True),
    ("sandbox.resources", "memory"): ("size", True),
    ("sandbox.resources", "pids"): ("integer", False),
    ("sandbox.resources", "timeout"): ("duration", False),
    ("sandbox.resources", "disk"): ("size", False),
    ("nix", "packages"): ("strings", True),
    ("nix", "nixpkgs"): ("string", False),
    ("nix", "flake"): ("string", False),
    ("nix", "pure"): ("bool", True),
    ("nix", "store_mode"): ("store", True),
    ("cage", "command"): ("command", True),
    ("cage", "passthrough_env"): ("strings", True),
    ("cage", "env"): ("env", True),
}
TABLES = ("sandbox", "sandbox.filesystem", "sandbox.network", "sandbox.resources", "nix", "cage")
CHOICES = {
    "level": LEVELS,
    "backend": BACKENDS,
    "mode": NETWORK_MODES,
    "store": STORE_MODES,
}


class BadValue(ValueError):
    """A value of the wrong kind; the loader adds file, line and key."""


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _strings(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadValue(f"must be an array of strings, got {_type_name(value)}")
    if any(not v or "\0" in v for v in value):
        raise BadValue("must not hold empty strings or NUL bytes")
    return list(value)


def check(kind: str, value: object) -> object:
    """The normalised value, or ``BadValue`` saying what is wrong with it."""
    if kind in CHOICES:
        if not isinstance(value, str):
            raise BadValue(f"must be a string, got {_type_name(value)}")
        if value not in CHOICES[kind]:
            raise BadValue(f"{value!r} is not one of {', '.join(CHOICES[kind])}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise BadValue(f"must be true or false, got {_type_name(value)}")
        return value
    if kind == "string":
        if not isinstance(value, str) or not value or "\0" in value:
            raise BadValue(f"must be a non-empty string, got {_type_name(value)}")
        return value
    if kind == "strings":
        return _strings(value)
    if kind == "strings_or_one":
        return _strings([value] if isinstance(value, str) else value)
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadValue(f"must be a number, got {_type_name(value)}")
        if kind == "integer" and not isinstance(value, int):
            raise BadValue(f"must be a whole number, got {value!r}")
        return value
    if kind in ("size", "duration"):
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadValue(f"must be a string like {'4G' if kind == 'size' else '1h'}")
        return value  # parsed (and bounded) by the loader with units.py
    if kind == "command":
        if isinstance(value, str):
            try:
                return shlex.split(value)
            except ValueError as exc:
                raise BadValue(f"cannot be split like a shell would: {exc}") from None
        return _strings(value)
    if kind == "env":
        if not isinstance(value, dict):
            raise BadValue(f"must be a table of strings, got {_type_name(value)}")
        bad = [k for k, v in value.items() if not isinstance(v, str)]
        if bad:
            raise BadValue(f"{bad[0]} must be a string, got {_type_name(value[bad[0]])}")
        return dict(value)
    raise AssertionError(kind)
