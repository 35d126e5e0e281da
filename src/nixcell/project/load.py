"""``load(found) -> Project``: a project's config read, checked and normalised.

``nixcell.toml`` is strict (an unknown table or key is an error); ``nixcage.toml`` is read the
way nixcage 0.x reads it (unknown keys are warnings, nixcage's defaults apply). Every error is
one line naming the file, the line and the key: ``nixcell.toml:7: [sandbox.resources] memory:
...``. Values are checked here, where the line is known, so compiling a spec later only fails
for reasons the host gives (a missing bind source, say).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass, field

from nixcell.errors import NixcellError, UsageError
from nixcell.net.tomllines import TomlLines
from nixcell.project import schema
from nixcell.project.discover import Found, check_trusted

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)")  # tomllib's place, in its message
MAX_CONFIG = 1 << 20  # a config is a few hundred bytes: a bigger file is not one
# nixcage's own defaults (its spec, §4.2), used for nixcage.toml only
NIXCAGE_PACKAGES = ("nodejs_22",)


@dataclass(frozen=True)
class Config:
    """The values of a config file, normalised; None = not set (a level's default applies)."""

    level: str = "standard"
    backend: str = "bwrap"
    ro_bind: tuple[str, ...] = ()
    rw_bind: tuple[str, ...] = ()
    blacklist: tuple[str, ...] = ()
    mode: str | None = None
    allow: bool | None = None
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    allow_cidrs: tuple[str, ...] = ()
    policy: tuple[str, ...] = ()  # absolute paths
    credentials: tuple[str, ...] = ()
    audit: str | None = None  # absolute path
    cpus: float | None = None
    memory: int | None = None
    pids: int | None = None
    timeout: float | None = None
    disk: int | None = None
    packages: tuple[str, ...] = ()
    nixpkgs: str | None = None
    flake: str | None = None
    pure: bool = True
    store_mode: str = "closure"
    command: tuple[str, ...] = ()
    passthrough_env: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    """A loaded project: where it was found, its config, and what the loader warned about."""

    found: Found
    config: Config
    warnings: tuple[str, ...] = ()
    lines: TomlLines | None = field(default=None, compare=False, repr=False)

    def where(self, table: str, key: str) -> str:
        """``file:line: [table] key``: how messages name a key of this config."""
        line = self.lines.line(*table.split("."), key) if self.lines is not None else 1
        return f"{display_path(self.found.path)}:{line}: [{table}] {key}"

    @property
    def root(self) -> str:
        return self.found.root

    @property
    def level(self) -> str:
        return self.config.level

    @property
    def kind(self) -> str:
        return self.found.kind


def display_path(path: str) -> str:
    """How errors name a file: relative to the current directory when it is below it."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def read_config(path: str) -> str:
    """The config's text, opened without following a link and checked again on the fd."""
    check_trusted(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{display_path(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_CONFIG:
            raise UsageError(f"{display_path(path)}: not a config file (too big or not regular)")
        data = os.read(fd, MAX_CONFIG + 1)
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UsageError(f"{display_path(path)}: not UTF-8 text") from None


class _Reader:
    """Walks the parsed document once, table by table, keeping line numbers for messages."""

    def __init__(self, found: Found, text: str) -> None:
        self.found = found
        self.name = display_path(found.path)
        self.lines = TomlLines(text)
        self.strict = found.kind == "nixcell"
        self.warnings: list[str] = []

    def where(self, table: str, key: str | None = None) -> str:
        path = [*(table.split(".") if table else []), *([key] if key else [])]
        label = f"[{table}]" if not key else f"[{table}] {key}" if table else key
        return f"{self.name}:{self.lines.line(*path)}: {label}"

    def fail(self, table: str, key: str | None, message: str) -> UsageError:
        return UsageError(f"{self.where(table, key)}: {message}")

    def unknown(self, table: str, key: str | None, what: str) -> None:
        message = f"{self.where(table, key)}: unknown {what}"
        if self.strict:
            raise UsageError(message)
        self.warnings.append(message + " (ignored)")

    def values(self, doc: dict) -> dict[tuple[str, str], object]:
        out: dict[tuple[str, str], object] = {}
        self._walk(doc, "", out)
        return out

    def _walk(self, node: dict, prefix: str, out: dict) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if name in schema.TABLES:
                if not isinstance(value, dict):
                    raise self.fail(name, None, f"must be a table, got {schema._type_name(value)}")
                self._walk(value, name, out)
                continue
            if not prefix:
                if isinstance(value, dict):
                    self.unknown(name, None, "table")
                else:
                    self.unknown("", name, "key outside any table")
                continue
            spec = schema.KEYS.get((prefix, key))
            if spec is None or (not self.strict and not spec[1]):
                label = "key" if spec is None else "key (a nixcell.toml key, not nixcage's)"
                self.unknown(prefix, key, label)
                continue
            try:
                out[(prefix, key)] = schema.check(spec[0], value)
            except schema.BadValue as exc:
                raise self.fail(prefix, key, str(exc)) from None


def load(found: Found) -> Project:
    """Read and check the config ``found`` names (``UsageError`` one-liners)."""
    text = read_config(found.path)
    reader = _Reader(found, text)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = _TOML_AT.search(str(exc))
        line = f":{where.group(1)}" if where else ""
        reason = _TOML_AT.sub("", str(exc)).strip()
        raise UsageError(f"{reader.name}{line}: not valid TOML: {reason}") from None
    values = reader.values(doc)
    config = _config(reader, values, found)
    from nixcell.project.checks import check_config

    check_config(config, reader)
    return Project(found, config, tuple(reader.warnings), reader.lines)


def _config(reader: _Reader, values: dict, found: Found) -> Config:
    from nixcell.units import parse_duration, parse_size

    def get(table: str, key: str, default: object = None) -> object:
        return values.get((table, key), default)

    def parsed(table: str, key: str, parse) -> object:
        value = get(table, key)
        if value is None:
            return None
        try:
            return parse(value, what=key)
        except NixcellError as exc:
            raise reader.fail(table, key, str(exc)) from None

    def root_path(table: str, key: str, value: str) -> str:
        path = os.path.expanduser(value)
        if path.startswith("~"):
            raise reader.fail(table, key, f"cannot expand {value!r}")
        return os.path.normpath(os.path.join(found.root, path))

    policy = tuple(
        root_path("sandbox.network", "policy", p) for p in get("sandbox.network", "policy", ())
    )
    audit = get("sandbox.network", "audit")
    packages = get("nix", "packages")
    if packages is None and found.kind == "nixcage":
        packages = list(NIXCAGE_PACKAGES)
    if get("nix", "pure") is False:
        reader.warnings.append(
            f"{reader.where('nix', 'pure')}: false has no effect: a cell's environment is "
            "always clean (name what it needs in [cage] passthrough_env)"
        )
    for name in get("cage", "passthrough_env", ()):
        if _SECRET_NAME.search(name):
            reader.warnings.append(
                f"{reader.where('cage', 'passthrough_env')}: {name}: its real value enters the "
                "cell; a [[credentials]] entry of a policy keeps it outside (the proxy sends it)"
            )
    return Config(
        level=get("sandbox", "level", "standard"),
        backend=get("sandbox", "backend", "bwrap"),
        ro_bind=tuple(get("sandbox.filesystem", "ro_bind", ())),
        rw_bind=tuple(get("sandbox.filesystem", "rw_bind", ())),
        blacklist=tuple(get("sandbox.filesystem", "blacklist", ())),
        mode=get("sandbox.network", "mode"),
        allow=get("sandbox.network", "allow"),
        allow_hosts=tuple(get("sandbox.network", "allow_hosts", ())),
        deny_hosts=tuple(get("sandbox.network", "deny_hosts", ())),
        allow_cidrs=tuple(get("sandbox.network", "allow_cidrs", ())),
        policy=policy,
        credentials=tuple(get("sandbox.network", "credentials", ())),
        audit=root_path("sandbox.network", "audit", audit) if audit else None,
        cpus=get("sandbox.resources", "cpus"),
        memory=parsed("sandbox.resources", "memory", parse_size),
        pids=get("sandbox.resources", "pids"),
        timeout=parsed("sandbox.resources", "timeout", parse_duration),
        disk=parsed("sandbox.resources", "disk", parse_size),
        packages=tuple(packages or ()),
        nixpkgs=get("nix", "nixpkgs"),
        flake=get("nix", "flake"),
        pure=get("nix", "pure", True),
        store_mode=get("nix", "store_mode", "closure"),
        command=tuple(get("cage", "command", ())),
        passthrough_env=tuple(get("cage", "passthrough_env", ())),
        env=get("cage", "env", {}),
    )
