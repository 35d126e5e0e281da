"""Checks of the values in the MCP configuration, shared by ``[defaults]``, environments and
the nix-sandbox-mcp environment variables: limits, seconds, hosts, policy files, mount points.

``SettingsReader`` is the half of the config reader that knows values, not tables; the reader
supplies ``fail`` (which points at a file:line) and ``base`` (the config file's directory).
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Any, NoReturn

from nixcell.errors import UsageError

# nix-sandbox-mcp's "jail" and "microvm", and nixcell's own (sandbox/backends.py)
BACKEND_NAMES = {
    "jail": "bwrap",
    "bwrap": "bwrap",
    "gvisor": "gvisor",
    "microvm": "microvm",
    "docker": "docker",
    "systemd": "systemd",
    "auto": "auto",
}
MAX_POOL = 16  # pre-started one-shot cells per environment, at most (mcp/pool.py)

_PRIVATE = ("/workspace", "/tmp", "/home/cell")  # the cell's own writable areas


class ConfigError(UsageError):
    """The MCP configuration is wrong; the message names file:line (or the variable)."""


def mount_problem(mount: object, source: str, name: str = "mount_point") -> str | None:
    """Why ``mount`` cannot be the project's mount point, or None (also for PROJECT_MOUNT)."""
    from pydantic import ValidationError

    from nixcell.spec import Mount, describe_validation_error

    if not isinstance(mount, str) or posixpath.normpath(mount) in _PRIVATE:
        return f"{name} must be an absolute path outside /workspace, /tmp, home"
    try:
        Mount(source=source, target=mount)
    except ValidationError as exc:
        return describe_validation_error(exc)
    return None


class SettingsReader:
    """Value checks; ``fail`` and ``base`` come from the reader of one file."""

    base: Path

    def fail(self, at: tuple[str | int, ...], message: str) -> NoReturn:
        raise NotImplementedError

    # -- settings shared by [defaults] and environments ------------------------------------
    def settings(self, at: tuple[str, ...], table: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "timeout_seconds" in table:
            out["timeout"] = self.number((*at, "timeout_seconds"), table["timeout_seconds"])
        for key, minimum in (("memory_mb", 4), ("pids", 1)):
            if key in table:
                value = table[key]
                if isinstance(value, bool) or not isinstance(value, int) or 0 < value < minimum:
                    self.fail((*at, key), f"{key} must be a whole number ≥ {minimum} (0: no limit)")
                out[key] = value or None
        for key in ("network", "sessions"):
            if key in table:
                if not isinstance(table[key], bool):
                    self.fail((*at, key), f"{key} must be true or false")
                out[key] = table[key]
        if "allow_hosts" in table:
            out["allow_hosts"] = self.hosts((*at, "allow_hosts"), table["allow_hosts"])
        if "policy" in table:
            out["policy"] = self.policy((*at, "policy"), table["policy"])
        if "nixpkgs" in table:
            if not isinstance(table["nixpkgs"], str) or not table["nixpkgs"]:
                self.fail((*at, "nixpkgs"), "nixpkgs must be a pin like nixos-24.11 or offline")
            out["nixpkgs"] = table["nixpkgs"]
        if "pool" in table:
            value = table["pool"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_POOL:
                self.fail((*at, "pool"), f"pool must be a whole number from 0 to {MAX_POOL}")
            out["pool"] = value
        if "backend" in table:
            out["backend"] = self.backend((*at, "backend"), table["backend"])
        return out

    def backend(self, at: tuple[str, ...], value: object) -> str:
        """nixcell's backend names, and nix-sandbox-mcp's ("jail" is bubblewrap)."""
        name = BACKEND_NAMES.get(value) if isinstance(value, str) else None
        if name is None:
            known = ", ".join(f'"{n}"' for n in BACKEND_NAMES)
            self.fail(at, f"unknown backend {value!r} (expected {known})")
        return name

    def network(self, at: tuple[str, ...], settings: dict[str, Any]) -> dict[str, Any] | None:
        hosts, policy = settings.get("allow_hosts", []), settings.get("policy")
        if settings.get("network") is False or not (hosts or policy):
            if settings.get("network"):
                self.fail((*at, "network"), "network = true needs allow_hosts or policy")
            return None
        return {"allow_hosts": list(hosts), "policy_files": [policy] if policy else []}

    def number(self, at: tuple[str | int, ...], value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
            self.fail(at, f"{at[-1]} must be a number of seconds between 0 and 86400")
        return float(value)

    def strings(self, at: tuple[str, ...], value: object) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(at, f"{at[-1]} must be a list of non-empty strings")
        return list(value)

    def hosts(self, at: tuple[str, ...], value: object) -> list[str]:
        from nixcell.errors import PolicyError
        from nixcell.net.policy import policy_from_flags

        hosts = self.strings(at, value)
        try:
            policy_from_flags(hosts, [], [])
        except PolicyError as exc:
            message = str(exc)  # "--allow-host X: why" speaks of the flag; here it is a key
            self.fail(at, f"allow_hosts: {message.split(': ', 1)[-1]}")
        return hosts

    def policy(self, at: tuple[str, ...], value: object) -> str:
        from nixcell.errors import PolicyError
        from nixcell.net.policyfile import load_policy

        if not isinstance(value, str) or not value:
            self.fail(at, "policy must be the path of a policy TOML file")
        path = str((self.base / os.path.expanduser(value)).resolve())
        try:
            load_policy(path)
        except PolicyError as exc:
            self.fail(at, f"policy: {exc}")
        return path
