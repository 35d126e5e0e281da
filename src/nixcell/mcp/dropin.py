"""nix-sandbox-mcp's environment variables, so that its users only change the command.

``PROJECT_DIR`` ``PROJECT_MOUNT`` ``NIX_SANDBOX_DIR`` ``NIX_SANDBOX_ENVS``
``SESSION_IDLE_TIMEOUT`` ``SESSION_MAX_LIFETIME``. Precedence: a command-line flag, then the
variable, then nixcell's ``--config`` file, then the default (nix-sandbox-mcp let its TOML
``[session]`` win over the session variables; here the variable set for this run wins, like
every other). A bad value stops the server with one line naming the variable; an empty
``PROJECT_DIR``, ``NIX_SANDBOX_DIR`` or ``NIX_SANDBOX_ENVS`` means none (no project mounted, no
directory scanned, nothing built).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from nixcell.mcp.config import ServerConfig
from nixcell.mcp.configvalues import ConfigError, mount_problem

log = logging.getLogger(__name__)

VARIABLES = (
    "PROJECT_DIR",
    "PROJECT_MOUNT",
    "NIX_SANDBOX_DIR",
    "NIX_SANDBOX_ENVS",
    "SESSION_IDLE_TIMEOUT",
    "SESSION_MAX_LIFETIME",
)
MAX_SECONDS = 86400.0


def default_sandbox_dir() -> Path:
    return Path.home() / ".config" / "nix-sandbox-mcp" / "sandboxes"


def apply(config: ServerConfig, environ: Mapping[str, str], cwd: str) -> ServerConfig:
    """``config`` with the variables of ``environ`` applied (and the artifacts they name)."""
    from nixcell.mcp import artifacts, flakebuild

    changes: dict[str, object] = {}
    project = config.project
    if "PROJECT_DIR" in environ:
        project = project_dir(environ["PROJECT_DIR"], cwd)
        changes["project"] = project
    if "PROJECT_MOUNT" in environ:
        mount = environ["PROJECT_MOUNT"]
        problem = mount_problem(mount, project or "/", name="PROJECT_MOUNT")
        if problem:
            raise ConfigError(f"PROJECT_MOUNT={mount!r}: {problem.removeprefix('PROJECT_MOUNT ')}")
        changes["mount_point"] = mount
    for name, field in (
        ("SESSION_IDLE_TIMEOUT", "idle_timeout"),
        ("SESSION_MAX_LIFETIME", "max_lifetime"),
    ):
        if name in environ:
            changes[field] = seconds(name, environ[name])
    found: list[artifacts.Artifact] = []
    directory = sandbox_dir(environ, cwd)
    if directory is not None:
        found += artifacts.scan_dir(directory)
    refs = flakebuild.parse_refs(environ.get("NIX_SANDBOX_ENVS", ""))
    impure = environ.get(flakebuild.IMPURE_VARIABLE, "") == "1"
    for ref, path in zip(refs, flakebuild.build_all(refs, cwd, impure), strict=True):
        found.append(artifacts.read_artifact(path, f"NIX_SANDBOX_ENVS ({ref})"))
    if found:
        changes["environments"] = artifacts.merge(config.environments, found)
    if changes:
        log.debug("from nix-sandbox-mcp's variables: %s", ", ".join(changes))
    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def project_dir(value: str, cwd: str) -> str | None:
    if value == "":
        return None  # explicitly no project
    path = os.path.abspath(os.path.join(cwd, os.path.expanduser(value)))
    if not os.path.isdir(path):
        reason = "does not exist" if not os.path.lexists(path) else "is not a directory"
        raise ConfigError(f"PROJECT_DIR={value!r}: {path} {reason}")
    return path


def seconds(name: str, value: str) -> float:
    try:
        number = float(value.strip())
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not 0 < number <= MAX_SECONDS:
        raise ConfigError(f"{name}={value!r}: must be a number of seconds between 0 and 86400")
    return number


def sandbox_dir(environ: Mapping[str, str], cwd: str) -> str | None:
    """The artifact directory to scan: the variable's (which must be a directory), else the
    default when it exists."""
    if "NIX_SANDBOX_DIR" not in environ:
        default = default_sandbox_dir()
        return str(default) if default.is_dir() else None
    value = environ["NIX_SANDBOX_DIR"]
    if value == "":
        return None
    path = os.path.abspath(os.path.join(cwd, os.path.expanduser(value)))
    if not os.path.isdir(path):
        reason = "does not exist" if not os.path.lexists(path) else "is not a directory"
        raise ConfigError(f"NIX_SANDBOX_DIR={value!r}: {path} {reason}")
    return path
