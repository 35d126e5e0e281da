"""The MCP server's configuration: nix-sandbox-mcp's ``config.toml`` read as-is, plus presets.

``[defaults] timeout_seconds memory_mb pids network allow_hosts policy sessions nixpkgs pool``;
``[project] path mount_point inherit_env.vars``; ``[environments.NAME]`` with ``preset``,
``packages`` or ``flake`` (``ref#attr``), ``interpreter`` and any default overridden;
``[session] idle_timeout_seconds max_lifetime_seconds share_sessions max_client_sessions``.
nix-sandbox-mcp's ``[daemon]``, ``[backends.*]`` and ``use_flake`` are accepted; ``backend``
(in ``[defaults]`` or an environment) takes theirs (``"jail"`` is bwrap, ``"microvm"``) and
nixcell's (bwrap, gvisor, microvm, docker, systemd; auto is resolved when the config is read).
An environment on a backend other than bwrap has no sessions and no pre-started pool (those
cells hold fds and namespaces only bwrap cells take): ``sessions = true`` or a pool there is an
error. Strict otherwise: a misspelt key is an error naming ``file:line`` (``TomlLines`` finds
the line).

A directory of custom environments (one TOML per environment, the file name is its name, the
keys those of an ``[environments.NAME]`` table) is read after the config; a custom environment
replaces a configured or preset one of the same name. No config at all: the three presets and
the current directory as the project.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from nixcell.mcp.configvalues import ConfigError, SettingsReader, mount_problem
from nixcell.net.tomllines import TomlLines

log = logging.getLogger(__name__)

PROGRAMS = {"python": "python3", "bash": "bash", "node": "node"}  # interpreter -> program
_BASE_PACKAGE = {"python": "python3", "bash": "bash", "node": "nodejs"}
_INTERPRETER_NAMES = {
    "python": "python",
    "python3": "python",
    "bash": "bash",
    "sh": "bash",
    "node": "node",
    "nodejs": "node",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SETTINGS = (
    "timeout_seconds",
    "memory_mb",
    "pids",
    "network",
    "allow_hosts",
    "policy",
    "sessions",
    "nixpkgs",
    "backend",
    "pool",
)
_ENV_KEYS = ("preset", "packages", "flake", "interpreter", "description", *_SETTINGS)
_SESSION_KEYS = ("idle_timeout_seconds", "max_lifetime_seconds")
_SESSION_KEYS += ("share_sessions", "max_client_sessions")
_TOP_KEYS = ("daemon", "defaults", "project", "environments", "session", "backends")

DEFAULT_TIMEOUT = 30.0
DEFAULT_MEMORY_MB = 512
DEFAULT_PIDS = 256
DEFAULT_MOUNT_POINT = "/project"
DEFAULT_POOL = 1  # pre-started one-shot cells per environment (each costs RSS: docs/mcp.md)


@dataclass(frozen=True)
class Preset:
    interpreter: str
    packages: tuple[str, ...]
    optional: tuple[str, ...] = ()  # left out, with a note, when the package set lacks them


_SHELL = "bash coreutils gnugrep gnused gawk findutils jq tree diffutils file bc"
PRESETS: dict[str, Preset] = {
    "shell": Preset("bash", tuple(_SHELL.split())),
    "python": Preset(
        "python", ("python3", "python3Packages.pyyaml", "coreutils"), ("python3Packages.pyyaml",)
    ),
    "node": Preset("node", ("nodejs", "coreutils")),
    # numpy (with its BLAS/LAPACK) is the point of this one: required, pyyaml optional. Opt-in
    # (`preset = "python-data"`): with real nixpkgs and no binary cache, numpy is built from source.
    "python-data": Preset(
        "python",
        ("python3", "python3Packages.numpy", "python3Packages.pyyaml", "coreutils"),
        ("python3Packages.pyyaml",),
    ),
}
DEFAULT_PRESETS = ("shell", "python", "node")  # no config: nix-sandbox-mcp's three


@dataclass(frozen=True)
class EnvConfig:
    """One environment the ``run`` tool offers."""

    name: str
    interpreter: str  # python | bash | node
    packages: tuple[str, ...]
    optional: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int | None = DEFAULT_MEMORY_MB
    pids: int | None = DEFAULT_PIDS
    network: dict[str, Any] | None = None  # a CellSpec ``network``: allow_hosts, policy_files
    sessions: bool = True
    nixpkgs: str | None = None
    description: str | None = None
    origin: str = "preset"
    pool: int | None = None  # pre-started one-shot cells (mcp/pool.py); None: the server's
    backend: str = "bwrap"  # what runs its cells (sandbox/backends.py); never "auto" here


@dataclass(frozen=True)
class ServerConfig:
    environments: dict[str, EnvConfig]
    project: str | None  # host directory, mounted read-only at ``mount_point``
    mount_point: str = DEFAULT_MOUNT_POINT
    pass_env: tuple[str, ...] = ()
    idle_timeout: float | None = None
    max_lifetime: float | None = None
    transport: str | None = None
    log_level: str | None = None
    source: str | None = None
    share_sessions: bool | None = None  # every HTTP client sees every session (one trust domain)
    max_client_sessions: int | None = None


def preset_env(name: str, preset: str | None = None) -> EnvConfig:
    p = PRESETS[preset or name]
    return EnvConfig(name, p.interpreter, p.packages, p.optional)


def default_env_dir() -> Path:
    root = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(root) / "nixcell" / "environments"


def load_config(path: str | None = None, env_dir: str | None = None) -> ServerConfig:
    """The server's configuration; every problem is one ``ConfigError`` line."""
    if path is None:
        config = ServerConfig({n: preset_env(n) for n in DEFAULT_PRESETS}, os.getcwd())
        defaults: dict[str, Any] = {}
    else:
        reader = _Reader(path, _read_text(path))
        config, defaults = reader.config()
    directory = Path(env_dir) if env_dir else default_env_dir()
    if env_dir and not directory.is_dir():
        raise ConfigError(f"--env-dir {env_dir}: not a directory")
    envs = dict(config.environments)
    for file in sorted(directory.glob("*.toml")) if directory.is_dir() else ():
        reader = _Reader(str(file), _read_text(str(file)))
        custom = reader.custom_env(file.stem, defaults)
        if custom.name in envs:
            old = envs[custom.name].origin
            what = "the preset" if old == "preset" else f"the one from {old}"
            log.info("environment '%s' from %s replaces %s", custom.name, file, what)
        envs[custom.name] = custom
    return ServerConfig(**{**config.__dict__, "environments": envs})


def _read_text(path: str) -> str:
    from nixcell.userfile import read_text

    return read_text(path, "config file", error=ConfigError)


class _Reader(SettingsReader):
    """Validates one TOML document, pointing each error at its line."""

    def __init__(self, name: str, text: str) -> None:
        from nixcell.net.policyfile import _syntax_message

        self.name = name
        self.base = Path(name).resolve().parent
        try:
            self.doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(_syntax_message(name, str(exc), text)) from None
        self.lines = TomlLines(text)

    def fail(self, at: tuple[str | int, ...], message: str) -> NoReturn:
        raise ConfigError(f"{self.name}:{self.lines.line(*at)}: {message}")

    def table(self, at: tuple[str, ...], value: object, allowed: tuple[str, ...] | None) -> dict:
        if not isinstance(value, dict):
            self.fail(at, f"'{'.'.join(at)}' must be a table")
        for key in value if allowed is not None else ():
            if key not in allowed:
                self.fail((*at, key), f"unknown key '{key}' (expected {', '.join(allowed)})")
        return value

    # -- the whole file ----------------------------------------------------------------------
    def config(self) -> tuple[ServerConfig, dict[str, Any]]:
        doc = self.table((), self.doc, _TOP_KEYS)
        daemon = self.table(("daemon",), doc.get("daemon", {}), ("transport", "log_level"))
        transport = daemon.get("transport")
        if transport not in (None, "stdio", "http"):
            self.fail(("daemon", "transport"), 'transport must be "stdio" or "http"')
        log_level = daemon.get("log_level")
        if log_level not in (None, "debug", "info", "warn", "warning", "error"):
            self.fail(("daemon", "log_level"), "log_level must be debug, info, warn or error")
        defaults = self.settings(
            ("defaults",), self.table(("defaults",), doc.get("defaults", {}), _SETTINGS)
        )
        project, mount, pass_env = self.project(doc.get("project"))
        session = self.table(("session",), doc.get("session", {}), _SESSION_KEYS)
        idle = self.number(("session", "idle_timeout_seconds"), session.get("idle_timeout_seconds"))
        life = self.number(("session", "max_lifetime_seconds"), session.get("max_lifetime_seconds"))
        share = session.get("share_sessions")
        if share is not None and not isinstance(share, bool):
            self.fail(("session", "share_sessions"), "share_sessions must be true or false")
        per_client = session.get("max_client_sessions")
        if per_client is not None and (type(per_client) is not int or per_client < 1):
            self.fail(("session", "max_client_sessions"), "max_client_sessions must be ≥ 1")
        if "environments" in doc:
            tables = self.table(("environments",), doc["environments"], None)
            if not tables:
                self.fail(("environments",), "no environments defined")
            envs = {
                n: self.environment(n, t, ("environments", n), defaults) for n, t in tables.items()
            }
        else:
            envs = {n: self.environment(n, {"preset": n}, (), defaults) for n in DEFAULT_PRESETS}
        config = ServerConfig(
            envs,
            project,
            mount,
            pass_env,
            idle,
            life,
            transport,
            log_level,
            self.name,
            share,
            per_client,
        )
        return config, defaults

    def project(self, value: object) -> tuple[str, str, tuple[str, ...]]:
        if value is None:
            return os.getcwd(), DEFAULT_MOUNT_POINT, ()
        allowed = ("path", "mount_point", "use_flake", "inherit_env")
        table = self.table(("project",), value, allowed)
        raw = table.get("path", ".")
        if not isinstance(raw, str) or not raw:
            self.fail(("project", "path"), "path must be a non-empty string")
        path = os.path.abspath(os.path.expanduser(raw))  # relative to the current directory
        if not os.path.isdir(path):
            self.fail(("project", "path"), f"project path {path} is not a directory")
        mount = table.get("mount_point", DEFAULT_MOUNT_POINT)
        self.check_mount(mount, path)
        if table.get("use_flake"):
            log.warning("%s: project.use_flake is not supported by nixcell; ignored", self.name)
        inherit = self.table(("project", "inherit_env"), table.get("inherit_env", {}), ("vars",))
        names = self.strings(("project", "inherit_env", "vars"), inherit.get("vars", []))
        for var in names:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                self.fail(("project", "inherit_env", "vars"), f"invalid variable name {var!r}")
        return path, mount, tuple(names)

    def check_mount(self, mount: object, source: str) -> None:
        problem = mount_problem(mount, source)
        if problem:
            self.fail(("project", "mount_point"), problem)

    # -- environments --------------------------------------------------------------------
    def custom_env(self, name: str, defaults: dict[str, Any]) -> EnvConfig:
        if not _NAME.match(name):
            raise ConfigError(f"{self.name}: '{name}' is not a valid environment name")
        return self.environment(name, self.doc, (), defaults, origin=self.name)

    def environment(
        self,
        name: str,
        value: object,
        at: tuple[str, ...],
        defaults: dict[str, Any],
        origin: str | None = None,
    ) -> EnvConfig:
        if not _NAME.match(name):
            self.fail(at, f"'{name}' is not a valid environment name (letters, digits, _ . -)")
        table = self.table(at, value, _ENV_KEYS)
        preset_name = table.get("preset")
        if preset_name is not None and preset_name not in PRESETS:
            known = ", ".join(PRESETS)
            self.fail((*at, "preset"), f"unknown preset {preset_name!r} (expected {known})")
        preset = PRESETS.get(preset_name) if preset_name else None
        extra = self.strings((*at, "packages"), table.get("packages", []))
        flake = table.get("flake")
        if flake is not None and (not isinstance(flake, str) or not flake.strip()):
            self.fail((*at, "flake"), "flake must be a flake reference like nixpkgs#jq")
        if preset is None and not extra and flake is None:
            self.fail(at, f"environment '{name}' needs preset, packages or flake")
        interpreter = self.interpreter((*at, "interpreter"), table.get("interpreter"))
        interpreter = interpreter or (preset.interpreter if preset else "bash")
        packages = list(preset.packages if preset else ())
        if flake is not None:
            packages.append(self.flake_ref(flake.strip()))
        packages += [p for p in extra if p not in packages]
        if _BASE_PACKAGE[interpreter] not in packages:
            packages.append(_BASE_PACKAGE[interpreter])  # after the others: theirs win collisions
        own = self.settings(at, table)
        settings = {**defaults, **own}
        backend, sessions, pool = self.backend_choice(at, settings, own)
        description = table.get("description")
        if description is not None and not isinstance(description, str):
            self.fail((*at, "description"), "description must be a string")
        return EnvConfig(
            name=name,
            interpreter=interpreter,
            packages=tuple(packages),
            optional=preset.optional if preset else (),
            timeout=settings.get("timeout", DEFAULT_TIMEOUT),
            memory_mb=settings.get("memory_mb", DEFAULT_MEMORY_MB),
            pids=settings.get("pids", DEFAULT_PIDS),
            network=self.network(at, settings),
            sessions=sessions,
            nixpkgs=settings.get("nixpkgs"),
            description=description,
            origin=origin or f"{self.name}:{self.lines.line(*at)}",
            pool=pool,
            backend=backend,
        )

    def backend_choice(
        self, at: tuple[str, ...], settings: dict[str, Any], own: dict[str, Any]
    ) -> tuple[str, bool, int | None]:
        """(backend, sessions, pool): "auto" resolved now; off the bwrap backend, no sessions
        and no pool (the engine refuses their held fds and namespaces there)."""
        backend = settings.get("backend", "bwrap")
        where = at if "backend" in own else ("defaults",)
        if backend == "auto":
            from nixcell.errors import SandboxError
            from nixcell.sandbox.backends import select_auto

            try:
                backend = select_auto()
            except SandboxError as exc:
                self.fail((*where, "backend"), exc.message)
        if backend == "bwrap":
            return backend, settings.get("sessions", True), settings.get("pool")
        for key, off in (("sessions", False), ("pool", 0)):
            if settings.get(key) not in (None, off):
                place = at if key in own else ("defaults",)
                self.fail(
                    (*place, key),
                    f"{key} needs the bwrap backend (this environment runs on {backend}): "
                    f"drop it or set {key} = {str(off).lower()}",
                )
        return backend, False, 0

    def interpreter(self, at: tuple[str, ...], value: object) -> str | None:
        if value is None:
            return None
        words = value.split() if isinstance(value, str) else []
        kind = _INTERPRETER_NAMES.get(os.path.basename(words[0])) if words else None
        if kind is None:
            self.fail(at, f"unknown interpreter {value!r} (nixcell runs python, bash and node)")
        return kind

    def flake_ref(self, flake: str) -> str:
        ref, _, attr = flake.partition("#")
        local = ref.removeprefix("path:")
        if local in (".", "..") or local.startswith(("./", "../")):
            ref = "path:" + str((self.base / local).resolve())
        return f"{ref}#{attr}"
