"""CellSpec: the one description of "what to run" that every front compiles to.

Flags, project TOML, the job API and MCP all build a CellSpec; the pipeline takes nothing else.
Validation happens here, once, so the plan and the executors can trust their input.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nixcell.errors import SpecError
from nixcell.specmessages import describe_validation_error
from nixcell.units import parse_duration, parse_size

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Cell paths that a user mount may not cover: they are the cell's own machinery.
RESERVED_TARGETS = ("/", "/proc", "/dev", "/nix", "/nix/store", "/etc/passwd", "/etc/group")

# The POSIX shell added to every closure for /bin/sh (nixpkgs and the offline set both have it),
# unless the spec says ``sh=False`` or names a package whose bin/ has a sh of its own.
SH_PACKAGE = "dash"
_HAS_SH = frozenset({"bash", "bashInteractive", "busybox", SH_PACKAGE})
# /usr/bin/env wherever /bin/sh is (``#!/usr/bin/env node``: every npx bin, most pip console
# scripts): busybox's static applet, one store path, linked alone (its other applets stay off
# PATH), unless a package named here brings an env (the resolver also checks env/bin).
ENV_TOOL = "busybox"
_HAS_ENV = frozenset({"coreutils", "coreutils-full", "busybox", "uutils-coreutils"})

MIN_MEMORY = 4 << 20
# --cpus: a CFS quota of 1ms per 100ms period is the kernel's floor; 4096 CPUs is far above any
# machine and keeps quota * period in range. --pids: measured — with 1, bwrap cannot fork its pid
# 1 ("Can't fork for pid 1"); 2 runs a command. PID_MAX_LIMIT (2**22) bounds pids.max usefully.
MIN_CPUS, MAX_CPUS = 0.01, 4096.0
MIN_PIDS, MAX_PIDS = 2, 1 << 22


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: object, flag: str) -> float:
    """A finite number from an int, float or numeric string; never a bool, NaN or inf."""
    if isinstance(value, bool):
        raise ValueError(f"{flag} must be a number, got {_shown(value)}")
    if isinstance(value, int):  # exact, and no OverflowError for 10**400: it is just too big
        return float(value) if abs(value) <= 1 << 53 else float(1 << 53) * (1 if value > 0 else -1)
    try:
        number = float(value) if isinstance(value, float | str) else float("nan")
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"{flag} must be a finite number, got {_shown(value)}")
    return number


def _clean_abs(path: str, what: str) -> str:
    if not path or "\0" in path:
        raise ValueError(f"{what} {path!r} is not a valid path")
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be an absolute path")
    return posixpath.normpath(path).replace("//", "/")


class Mount(BaseModel):
    """A host path made visible in the cell; ``rw`` only where the user asked for it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str
    target: str
    writable: bool = False

    @field_validator("source", "target")
    @classmethod
    def _absolute(cls, value: str, info) -> str:
        return _clean_abs(value, f"mount {info.field_name}")

    @field_validator("target")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        for reserved in RESERVED_TARGETS:
            if value == reserved or (reserved != "/" and value.startswith(reserved + "/")):
                raise ValueError(f"mount target {value!r} would cover the cell's own {reserved}")
        return value


class Limits(BaseModel):
    """Resource limits; each one that is set is enforced or the run is refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    memory: int | None = None  # bytes
    cpus: float | None = None
    pids: int | None = None
    timeout: float | None = None  # seconds
    disk: int | None = None  # bytes, per writable tmpfs area

    @field_validator("memory", "disk", mode="before")
    @classmethod
    def _size(cls, value: object, info) -> int | None:
        if value is None:
            return None
        size = parse_size(value, what=f"--{info.field_name}")  # type: ignore[arg-type]
        if info.field_name == "memory" and size < MIN_MEMORY:
            raise ValueError("--memory must be at least 4M")
        return size

    @field_validator("timeout", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float | None:
        return None if value is None else parse_duration(value, what="--timeout")  # type: ignore[arg-type]

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus(cls, value: object) -> float | None:
        if value is None:
            return None
        number = _number(value, "--cpus")
        if not MIN_CPUS <= number <= MAX_CPUS:  # NaN fails both comparisons
            raise ValueError(
                f"--cpus must be between {MIN_CPUS} and {MAX_CPUS:g}, got {_shown(value)}"
            )
        return number

    @field_validator("pids", mode="before")
    @classmethod
    def _pids(cls, value: object) -> int | None:
        if value is None:
            return None
        number = _number(value, "--pids")
        if not number.is_integer():
            raise ValueError(f"--pids must be a whole number, got {_shown(value)}")
        if number < MIN_PIDS:
            raise ValueError(
                f"--pids must be at least {MIN_PIDS} (the command plus one: a sandbox's own init, "
                "or a process the command starts)"
            )
        if number > MAX_PIDS:
            raise ValueError(f"--pids must be at most {MAX_PIDS} (the kernel's PID_MAX_LIMIT)")
        return int(number)

    @property
    def needs_cgroup(self) -> bool:
        return any(v is not None for v in (self.memory, self.cpus, self.pids))


class Network(BaseModel):
    """What the cell may reach, through the proxy. No ``network`` on the spec = only ``lo``.

    The policy is the flags' rules plus the policy files' rules (order in ``net/policy.py``);
    ``credentials`` names entries of the files' ``[[credentials]]`` tables to use.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allow_hosts: list[str] = Field(default_factory=list)
    deny_hosts: list[str] = Field(default_factory=list)
    allow_cidrs: list[str] = Field(default_factory=list)
    policy_files: list[str] = Field(default_factory=list)
    credentials: list[str] = Field(default_factory=list)
    upstream_ca: list[str] = Field(default_factory=list)
    resolve: dict[str, list[str]] = Field(default_factory=dict)
    audit: str | None = None
    learn: bool = False

    @model_validator(mode="after")
    def _flags_parse(self) -> Network:
        from nixcell.errors import PolicyError
        from nixcell.net.policy import policy_from_flags

        try:
            policy_from_flags(self.allow_hosts, self.deny_hosts, self.allow_cidrs)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        return self

    @field_validator("policy_files", "upstream_ca")
    @classmethod
    def _files(cls, value: list[str], info) -> list[str]:
        return [_clean_abs(p, info.field_name.replace("_", " ")) for p in value]

    @model_validator(mode="after")
    def _something_to_allow(self) -> Network:
        if not (self.allow_hosts or self.allow_cidrs or self.policy_files or self.learn):
            raise ValueError(
                "a network needs --allow-host, --allow-cidr, --policy or --learn "
                "(without one the cell has no network at all)"
            )
        return self


class CellSpec(BaseModel):
    """Everything that decides what a cell is. Paths are absolute: fronts resolve them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command: Annotated[list[str], Field(min_length=1)]
    packages: Annotated[list[str], Field(min_length=1)]
    nixpkgs: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    pass_env: list[str] = Field(default_factory=list)
    workdir: str | None = None  # host dir bound read-write at /workspace; None = fresh tmpfs
    cwd: str = "/workspace"
    mounts: list[Mount] = Field(default_factory=list)
    hide: list[str] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    hardening_profiles: list[str] = Field(default_factory=list)
    network: Network | None = None
    # a pseudo-terminal for the cell (ttymode.py): "auto" when stdin and stdout are terminals
    # (the CLI's default), "always" (-i), "never" (-T; the default of the API and MCP)
    tty: Literal["auto", "always", "never"] = "never"
    sh: bool = True  # /bin/sh in the cell (--no-sh: only what the packages bring)
    # What the cell sees of /nix/store: "closure" (its runtime closure only, the default),
    # "readonly" (the whole store, read-only), "shared" (readonly plus the Nix daemon socket),
    # "copy" (the closure copied into ``store_dir``, refreshed each run) or "isolated" (copied
    # once into ``store_dir``, then frozen). ``store_dir`` is a host directory the cell never
    # writes (a project's .nixcell/store).
    store: Literal["closure", "readonly", "shared", "copy", "isolated"] = "closure"
    store_dir: str | None = None
    # The host's own network namespace (no proxy, no policy): only when asked for explicitly.
    host_network: bool = False
    # Which backend runs the cell (sandbox/backends.py): "auto" picks the first this host can
    # run (bwrap, then gvisor, then docker). A backend that cannot enforce part of the plan
    # refuses the run; nixcell never runs a cell weaker than asked.
    backend: Literal["bwrap", "gvisor", "microvm", "docker", "systemd", "auto"] = "bwrap"

    def closure_packages(self) -> list[str]:
        """What the closure is resolved from: the packages, plus dash for /bin/sh (``system()``,
        ``shell=True``, ``execSync`` and git all run /bin/sh) unless ``sh`` is off or a package
        named here brings a sh of its own."""
        if not self.sh or _HAS_SH.intersection(self.packages):
            return list(self.packages)
        return [*self.packages, SH_PACKAGE]

    def closure_tools(self) -> dict[str, str]:
        """Programs the cell gets from a package outside its env (program -> package):
        ``env`` for /usr/bin/env, unless ``sh`` is off or a package named here has one."""
        if not self.sh or _HAS_ENV.intersection(self.packages):
            return {}
        return {"env": ENV_TOOL}

    @field_validator("command")
    @classmethod
    def _command(cls, value: list[str]) -> list[str]:
        if not value[0] or any("\0" in arg for arg in value):
            raise ValueError("command must be a non-empty program name without NUL bytes")
        return value

    @field_validator("packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for pkg in value:
            if not pkg or pkg != pkg.strip() or "\0" in pkg or '"' in pkg or "\\" in pkg:
                raise ValueError(f"invalid package name {pkg!r}")
        return list(dict.fromkeys(value))

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not _ENV_NAME.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
            if "\0" in val:
                raise ValueError(f"environment variable {key} contains a NUL byte")
        return value

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, value: list[str]) -> list[str]:
        for key in value:
            if not _ENV_NAME.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
        return value

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, value: str | None) -> str | None:
        return None if value is None else _clean_abs(value, "--workdir")

    @field_validator("cwd")
    @classmethod
    def _cwd(cls, value: str) -> str:
        return _clean_abs(value, "--cwd")

    @field_validator("hide")
    @classmethod
    def _hide(cls, value: list[str]) -> list[str]:
        paths = [_clean_abs(p, "--hide") for p in value]
        for path in paths:  # hiding these leaves no working cell (no /proc, no store, no user)
            covered = [r for r in RESERVED_TARGETS if _within(r, path)]
            if covered:
                raise ValueError(f"--hide {path} would hide the cell's own {covered[0]}")
        return paths

    @field_validator("hardening_profiles")
    @classmethod
    def _profiles(cls, value: list[str]) -> list[str]:
        from nixcell.sandbox.seccomp import check_profiles

        return list(check_profiles(value))

    @model_validator(mode="after")
    def _not_over_own_state(self) -> CellSpec:
        """A writable bind holding nixcell's own state would let the cell rewrite it (caches,
        keys, GC roots, the offline set): refused unless those paths are ``--hide``-den."""
        import os

        from nixcell import paths

        dirs = (paths.state_dir(), paths.cache_dir(), paths.data_dir(), paths.offline_dir())
        own = {os.path.realpath(p) for p in dirs}
        hidden = [os.path.realpath(h) for h in self.hide]
        writable = [m.source for m in self.mounts if m.writable]
        if self.workdir is not None:
            writable.append(self.workdir)
        for source in writable:
            real = os.path.realpath(source)
            for mine in sorted(own):
                holds = _within(mine, real) and not any(_within(mine, h) for h in hidden)
                if holds or _within(real, mine):
                    raise ValueError(
                        f"{source} holds nixcell's own state ({mine}): a cell with write access "
                        f"could rewrite it; bind a subdirectory, or add --hide {mine}"
                    )
        return self

    @field_validator("store_dir")
    @classmethod
    def _store_dir(cls, value: str | None) -> str | None:
        return None if value is None else _clean_abs(value, "store dir")

    @model_validator(mode="after")
    def _store_and_network(self) -> CellSpec:
        copies = self.store in ("copy", "isolated")
        if copies and self.store_dir is None:
            raise ValueError(f"store mode {self.store!r} needs a directory for the copy")
        if not copies and self.store_dir is not None:
            raise ValueError(f"store mode {self.store!r} takes no store directory")
        if self.host_network and self.network is not None:
            raise ValueError(
                "the host network and a proxy network exclude each other (host mode has no "
                "policy: drop the network flags, or the host mode)"
            )
        return self

    @model_validator(mode="after")
    def _unique_targets(self) -> CellSpec:
        seen = {"/workspace"}
        for mount in self.mounts:
            if mount.target in seen:
                raise ValueError(f"two mounts target {mount.target}")
            seen.add(mount.target)
        return self


def _within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def make_spec(*, names: dict[str, str] | None = None, **fields: object) -> CellSpec:
    """Build a CellSpec, turning pydantic's report into one SpecError line.

    ``names``: how the front calls each field (default: the ``nixcell run`` flags)."""
    try:
        return CellSpec(**fields)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SpecError(describe_validation_error(exc, names, fields)) from None
