"""``server.toml``: what the job daemon listens on, runs, allows, and holds for its clients.

The file is the server admin's word; clients only choose within it (``compile.py``). Strict:
an unknown key, a wrong type, a limit default above its maximum, a policy that does not parse,
a credential without hosts are each one line ``server.toml:LINE: [table] key: why``
(docs/jobs-config.md lists every key). Imports only the stdlib at module level: the client and
``nixcell serve --new-token`` use ``default_socket``/``new_token`` and must start fast.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nixcell.errors import UsageError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
HASH = re.compile(r"sha256:[0-9a-f]{64}")
GROUP = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")
# the engine's backends (sandbox/backends.py NAMES) and auto; a server offers some of them
BACKENDS = ("bwrap", "gvisor", "microvm", "docker", "systemd", "auto")
SCHEMES = ("https", "http", "file")  # what repo_schemes may list
# file:// off by default: a root daemon would clone any repository it can read for any client
DEFAULT_SCHEMES = ("https", "http")
SHUTDOWN = ("cancel", "finish")
DEFAULT_HARDENING = ("debugger", "jit-runtime")  # nested-sandbox only when the admin adds it

SERVER_KEYS = (
    "state_dir", "listen", "socket_group", "admin_group", "concurrency", "per_user",
    "queue_limit", "backends", "default_backend", "profile_dir", "retention", "log_limit",
    "upload_limit", "shutdown", "shutdown_grace", "repo_schemes", "repo_cidrs", "nixpkgs",
    "hardening", "store", "store_key", "host_name", "heartbeat", "host_timeout", "closure_hint",
    "substituters", "trusted_public_keys", "nix_root", "cache_url",
)  # fmt: skip
TABLES = ("server", "defaults", "maxima", "policies", "credentials", "tokens")


_CACHE_URL = re.compile(r"https?://[A-Za-z0-9.:\[\]-]+/nix-cache")


def cache_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a host's cache address (None: it can). No credentials, whitespace,
    quotes or query: nix reads ``substituters`` as a space-separated list."""
    if not _CACHE_URL.fullmatch(url):
        return (
            "must be http(s)://HOST[:PORT]/nix-cache (where the other hosts reach this one's "
            "API; no credentials, query or other path)"
        )
    return None


@dataclass(frozen=True)
class Token:
    """A TCP client's bearer token, kept only as its SHA-256 (tokens are 32 random bytes, so a
    fast hash is enough: there is nothing to brute-force)."""

    name: str
    hash: str  # "sha256:<hex>"
    admin: bool = False

    def verify(self, text: str) -> bool:
        digest = "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(digest, self.hash)


def new_token(name: str = "client") -> tuple[str, str]:
    """(a fresh token, the ``[[tokens]]`` table to paste into server.toml holding its hash)."""
    if not NAME.fullmatch(name):
        raise UsageError(f"token name {name!r}: use letters, digits, '_', '.', '-'")
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    return token, f'[[tokens]]\nname = "{name}"\nhash = "sha256:{digest}"'


def default_state_dir() -> str:
    """``/var/lib/nixcell/server`` as root, else ``$XDG_STATE_HOME/nixcell-server`` (beside,
    not inside, nixcell's own state: a workspace under it could not be bound writable, see
    ``CellSpec._not_over_own_state``); under ``NIXCELL_HOME`` (tests) ``$NIXCELL_HOME/server``."""
    home = os.environ.get("NIXCELL_HOME")
    if home:
        return os.path.join(home, "server")
    if os.geteuid() == 0:
        return "/var/lib/nixcell/server"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "nixcell-server")


def default_host_name() -> str:
    """This host's name in a cluster: the first label of the hostname, as a NAME."""
    import socket

    name = socket.gethostname().split(".")[0]
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).lstrip("._-")[:64]
    return name or "localhost"


def store_problem(text: object) -> str | None:
    """Why ``text`` is not ``sqlite:/ABS/PATH`` or a ``postgresql://`` URI, or None. The URI is
    libpq's to parse; only what would make two readers disagree is refused here."""
    if not isinstance(text, str) or not text:
        return "expected sqlite:/PATH or postgresql://..."
    if any(ord(c) < 33 or ord(c) == 127 for c in text):
        return "no spaces or control characters (percent-encode them)"
    if text.startswith("sqlite:"):
        path = text[len("sqlite:") :]
        if not path.startswith("/"):
            return "sqlite: needs an absolute path"
        return None
    if text.startswith(("postgresql://", "postgres://")):
        return None
    return "expected sqlite:/PATH or postgresql://... (a libpq connection URI)"


def store_shown(text: str) -> str:
    """The store URI without its password (for logs and errors): in the userinfo and as a
    ``password=`` query parameter (any case, percent-encoded or not)."""
    from urllib.parse import unquote

    text = re.sub(r"(://[^:/@?#]*):[^@/?#]*@", r"\1:***@", text)
    base, sep, query = text.partition("?")
    if not sep:
        return text
    query, hash_, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        key, eq, _ = pair.partition("=")
        secret = unquote(key).strip().lower() in ("password", "passfile_password")
        pairs.append(f"{key}{eq}***" if eq and secret else pair)
    return f"{base}?{'&'.join(pairs)}{hash_}{fragment}"


def default_socket() -> str:
    """The default listener (API.md): ``/run/nixcell/nixcell.sock`` as root, else
    ``$XDG_RUNTIME_DIR/nixcell/nixcell.sock`` (the state dir when there is no runtime dir)."""
    if os.geteuid() == 0:
        return "/run/nixcell/nixcell.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "nixcell", "nixcell.sock")
    return os.path.join(default_state_dir(), "nixcell.sock")


@dataclass(frozen=True)
class ServerConfig:
    """The daemon's settings, checked. Limits are normalised (bytes, CPUs, pids, seconds)."""

    state_dir: str = field(default_factory=default_state_dir)
    listen: tuple[str, ...] = field(default_factory=lambda: (f"unix:{default_socket()}",))
    socket_group: str | None = None
    admin_group: str | None = None
    concurrency: int = 4
    per_user: int | None = None  # max running jobs per owner
    queue_limit: int = 10000
    defaults: dict[str, int | float] = field(default_factory=dict)
    maxima: dict[str, int | float] = field(default_factory=dict)
    backends: tuple[str, ...] = ("bwrap",)
    default_backend: str = "bwrap"
    credentials: tuple[dict[str, Any], ...] = ()  # [[credentials]] tables, policy-file format
    policies: dict[str, str] = field(default_factory=dict)  # name -> absolute policy file
    profile_dir: str | None = None
    retention: float = 7 * 24 * 3600.0  # seconds a terminal job is kept
    log_limit: int = 100_000  # stored log lines per job
    upload_limit: int = 1 << 30  # bytes of one unpacked upload
    tokens: tuple[Token, ...] = ()
    shutdown: str = "cancel"  # what SIGTERM does to running jobs: "cancel" | "finish"
    shutdown_grace: float = 30.0  # "finish" waits this long, then cancels
    repo_schemes: tuple[str, ...] = DEFAULT_SCHEMES
    # loopback/private/metadata addresses a clone may connect to (none: like the proxy's guard)
    repo_cidrs: tuple[str, ...] = ()
    nixpkgs: str | None = None  # the pin of requests that name none
    hardening: tuple[str, ...] = DEFAULT_HARDENING  # hardening profiles clients may ask for
    # scale-out (docs/scale-out.md): None = SQLite in the state dir; or "sqlite:PATH" or a
    # "postgresql://" connection URI (libpq's: put the password in a passfile, not here)
    store: str | None = None
    store_key: str | None = None  # the sealing key every host of one database shares
    host_name: str = field(default_factory=lambda: default_host_name())
    heartbeat: float = 1.0  # seconds between a host's heartbeats (PostgreSQL store)
    host_timeout: float = 10.0  # a host silent this long is lost: its jobs end or re-queue
    closure_hint: float = 2.0  # seconds a job waits for a host that has its closure
    substituters: tuple[str, ...] = ()  # binary caches nix may fetch closures from (signed)
    trusted_public_keys: tuple[str, ...] = ()  # the keys their paths must be signed with
    nix_root: str | None = None  # a Nix store of this host's own (nix/storeroot.py)
    cache_url: str | None = None  # where the other hosts fetch this host's store (hostcache.py)
    source: str | None = None  # the file this came from

    def credential(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.credentials if c.get("name") == name), None)

    def token(self, text: str) -> Token | None:
        """The token ``text`` is, checked against every one (no early exit on a match)."""
        found = None
        for token in self.tokens:
            if token.verify(text) and found is None:
                found = token
        return found


def load_config(path: str | None, *, overrides: Mapping[str, Any] | None = None) -> ServerConfig:
    """The config in ``path`` (None: the defaults) with ``serve``'s ``--listen``/``--state-dir``
    ``overrides`` applied; ``UsageError`` one-liners."""
    from nixcell.jobs.configread import read_config

    config = ServerConfig() if path is None else read_config(path)
    extra = dict(overrides or {})
    unknown = sorted(set(extra) - {"listen", "state_dir", "store", "host_name"})
    if unknown:
        raise UsageError(f"unknown server override(s): {', '.join(unknown)}")
    if extra.get("listen"):
        listen = extra["listen"]
        listen = (listen,) if isinstance(listen, str) else tuple(listen)
        for item in listen:
            problem = listen_problem(item)
            if problem:
                raise UsageError(f"--listen {item}: {problem}")
        config = replace(config, listen=listen)
    if extra.get("state_dir"):
        state = os.path.abspath(os.path.expanduser(str(extra["state_dir"])))
        problem = state_dir_problem(state)
        if problem:
            raise UsageError(f"--state-dir {state}: {problem}")
        config = replace(config, state_dir=state)
    if extra.get("store"):
        problem = store_problem(extra["store"])
        if problem:
            raise UsageError(f"--store {store_shown(str(extra['store']))}: {problem}")
        config = replace(config, store=str(extra["store"]))
    if extra.get("host_name"):
        if not NAME.fullmatch(str(extra["host_name"])):
            raise UsageError(
                f"--host-name {extra['host_name']!r}: letters, digits, '_', '.', '-' (at most 64)"
            )
        config = replace(config, host_name=str(extra["host_name"]))
    if is_postgres(config.store) and not config.store_key:
        raise UsageError(
            "a postgresql store needs [server] store_key: the sealing key file every host of "
            "the database shares (made on first use; copy it to the other hosts)"
        )
    return config


def is_postgres(store: str | None) -> bool:
    return bool(store) and str(store).startswith(("postgresql://", "postgres://"))


def listen_problem(text: object) -> str | None:
    """Why ``text`` is not ``unix:/ABS/PATH`` or ``HOST:PORT`` (``[v6]:PORT``), or None."""
    if not isinstance(text, str) or not text or any(ord(c) < 33 for c in text):
        return "expected unix:/PATH or HOST:PORT"
    if text.startswith("unix:"):
        sock = text[5:]
        if not sock.startswith("/") or len(sock.encode()) > 107:
            return "a unix socket needs an absolute path of at most 107 bytes"
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        return "expected unix:/PATH or HOST:PORT (port 0-65535)"
    if host.startswith("["):
        if not host.endswith("]") or ":" not in host:
            return "an IPv6 address is written [ADDR]:PORT"
    elif ":" in host:
        return "an IPv6 address is written [ADDR]:PORT"
    return None


def state_dir_problem(path: str) -> str | None:
    """A state dir inside (or holding) nixcell's own dirs would put workspaces where a cell may
    not write: refused up front rather than failing every job."""
    from nixcell import paths

    real = os.path.realpath(path)
    for own in (paths.state_root(), paths.cache_root(), paths.offline_root()):
        mine = os.path.realpath(own)
        if real == mine or real.startswith(mine + "/") or mine.startswith(real + "/"):
            return f"it would hold or be inside nixcell's own state ({mine})"
    return None


def credential_policy(config: ServerConfig, directory: str) -> str | None:
    """Write the ``[[credentials]]`` tables as a policy file (no rules) in ``directory`` — a
    server-owned dir no cell sees — atomically and 0600; its path, or None when there are none.
    The cell's proxy reads it through ``Network.policy_files``."""
    if not config.credentials:
        return None
    from nixcell.fsio import private_dir, write_atomic

    private_dir(directory)
    path = os.path.join(directory, "credentials.toml")
    write_atomic(path, credentials_toml(config.credentials), mode=0o600, durable=True)
    return path


def credentials_toml(tables: tuple[dict[str, Any], ...]) -> str:
    """TOML for ``[[credentials]]`` tables of strings, booleans and string lists."""
    out = ["# written by nixcell serve from its server.toml: do not edit"]
    for table in tables:
        out.append("\n[[credentials]]")
        for key, value in table.items():
            out.append(f"{key} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise UsageError(f"cannot write {type(value).__name__} to a policy file")


def toml_string(text: str) -> str:
    """A TOML basic string: quote, backslash and every control character escaped."""
    parts = ['"']
    for char in text:
        if char in '"\\':
            parts.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(char)
    parts.append('"')
    return "".join(parts)
