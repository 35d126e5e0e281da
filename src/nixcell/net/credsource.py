"""Credential config and secrets: where real values come from, and the dummies cells see.

``[[credentials]]`` tables are parsed into ``CredentialSpec``; ``load_secret`` reads the real
value from its source (keyring, env, file, command) with errors that never contain it;
``make_dummy`` makes a same-length, same-shape stand-in for the cell. ``credentials.py`` does the
swapping on the wire.

Config (``[[credentials]]`` tables)::

    name   = "github"                       # required
    source = "keyring:github.com/me"        # keyring:SERVICE/ACCOUNT | env:NAME | file:PATH
                                            # | command:ARGV (no shell, 30 s timeout)
    hosts  = ["api.github.com"]             # required: where the real value may go
    header = "Authorization"                # used when a policy rule injects the credential
    format = "Bearer {token}"
    env    = "GITHUB_TOKEN"                 # the cell's variable holding the dummy; "" for none
    body   = false                          # also swap in request bodies (OAuth refresh, forms)
    allow_plaintext = false                 # the real value may go over cleartext http://
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixcell.errors import CredentialError, PolicyError
from nixcell.net.hosts import HostPattern

COMMAND_TIMEOUT = 30.0
MIN_SECRET_LENGTH = 8  # shorter dummies could turn up in ordinary text and get swapped
MIN_RANDOM_CHARS = 8  # letters/digits a dummy must randomise besides its kept prefix
KNOWN_PREFIXES = (
    "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "sk-ant-api03-", "sk-ant-",
    "sk-proj-", "sk-", "xoxb-", "xoxp-", "glpat-", "AKIA", "hf_", "npm_",
)  # fmt: skip
_GENERIC_PREFIX = re.compile(r"[a-z]{1,11}[_-]|[A-Z]{1,11}[_-]")
_HEXISH = re.compile(r"[0-9A-Fa-f_-]+")  # UUIDs and hex keys: their first group is secret
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_KEYS = frozenset(
    {"name", "source", "hosts", "header", "format", "env", "body", "allow_plaintext"}
)
_META = frozenset({"_line", "_file"})  # added by the TOML loader, not written by users


@dataclass(frozen=True)
class CredentialSpec:
    """One configured credential, validated; ``origin`` ("file:line") locates it in messages."""

    name: str
    source: str
    hosts: tuple[HostPattern, ...]
    header: str = "Authorization"
    format: str = "Bearer {token}"
    env: str = ""
    body: bool = False
    origin: str = ""
    allow_plaintext: bool = False  # the real value may go over cleartext http://

    def matches(self, host: str) -> bool:
        """``host`` must already be normalised."""
        return any(p.matches(host) for p in self.hosts)


# -- config --------------------------------------------------------------------------------------


def parse_credentials(tables: Sequence[Mapping[str, Any]], file: str) -> list[CredentialSpec]:
    """Validate ``[[credentials]]`` tables; ``PolicyError`` "file:line: ..." on the first fault."""
    specs: list[CredentialSpec] = []
    names: set[str] = set()
    envs: dict[str, str] = {}
    for table in tables:
        spec = _parse_one(table, file)
        if spec.name in names:
            raise PolicyError(f"{spec.origin}: credential {spec.name!r} is defined twice")
        if spec.env and spec.env in envs:
            raise PolicyError(
                f"{spec.origin}: credential {spec.name!r}: env {spec.env} is already used by "
                f"credential {envs[spec.env]!r}"
            )
        names.add(spec.name)
        if spec.env:
            envs[spec.env] = spec.name
        specs.append(spec)
    return specs


def _parse_one(table: Mapping[str, Any], file: str) -> CredentialSpec:
    if not isinstance(table, Mapping):
        raise PolicyError(f"{file}: each [[credentials]] entry must be a table")
    line, file = table.get("_line"), str(table.get("_file") or file)
    where = f"{file}:{line}" if isinstance(line, int) else file
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PolicyError(f"{where}: credential needs a name of letters, digits, '_', '.', '-'")

    def fail(reason: str) -> PolicyError:
        return PolicyError(f"{where}: credential {name!r}: {reason}")

    unknown = sorted(set(table) - _KEYS - _META)
    if unknown:
        raise fail("unknown key(s) " + ", ".join(repr(k) for k in unknown))
    source = table.get("source")
    if not isinstance(source, str):
        raise fail("source is required (keyring:, env:, file: or command:)")
    try:
        _split_source(source)
    except ValueError as exc:
        raise fail(str(exc)) from None
    hosts = table.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise fail("hosts must be a non-empty list of host patterns")
    patterns: list[HostPattern] = []
    for text in hosts:
        try:
            pattern = HostPattern.parse(text)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if pattern.kind == "any":
            raise fail("hosts = ['*'] would send the real secret to any server")
        patterns.append(pattern)
    header = table.get("header", "Authorization")
    if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
        raise fail("header must be an HTTP header name")
    fmt = table.get("format", "Bearer {token}")
    if not isinstance(fmt, str) or "{token}" not in fmt or any(c in fmt for c in "\r\n\0"):
        raise fail("format must be a one-line string containing {token}")
    try:
        fmt.format(token="x")
    except (KeyError, IndexError, ValueError):
        raise fail("format may use no placeholder other than {token}") from None
    env = table.get("env", _default_env(name))
    if not isinstance(env, str) or (env and not _ENV_NAME.fullmatch(env)):
        raise fail('env must be an environment variable name (or "" for none)')
    body = table.get("body", False)
    if not isinstance(body, bool):
        raise fail("body must be true or false")
    plaintext = table.get("allow_plaintext", False)
    if not isinstance(plaintext, bool):
        raise fail("allow_plaintext must be true or false")
    return CredentialSpec(name, source, tuple(patterns), header, fmt, env, body, where, plaintext)


def _default_env(name: str) -> str:
    """``github`` -> ``GITHUB_TOKEN``; ``anthropic-api-key`` -> ``ANTHROPIC_API_KEY``."""
    base = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper() or "CREDENTIAL"
    if base[0].isdigit():
        base = "_" + base
    return base if base.endswith(("_TOKEN", "_KEY")) else base + "_TOKEN"


def _split_source(source: str) -> tuple[str, Any]:
    """(kind, reference); ``ValueError`` with the reason when malformed."""
    kind, sep, ref = source.partition(":")
    if not sep or kind not in ("keyring", "env", "file", "command"):
        raise ValueError("source must start with keyring:, env:, file: or command:")
    if kind == "keyring":
        service, _, account = ref.rpartition("/")
        if not service or not account:
            raise ValueError("source keyring: needs SERVICE/ACCOUNT")
        return kind, (service, account)
    if kind == "env":
        if not _ENV_NAME.fullmatch(ref):
            raise ValueError("source env: needs a variable name")
        return kind, ref
    if kind == "file":
        try:
            path = Path(ref).expanduser()
        except RuntimeError:  # ~user of a user that does not exist
            raise ValueError("source file: ~user names no user here") from None
        if not path.is_absolute():
            raise ValueError("source file: needs an absolute path (or ~/...)")
        return kind, path
    try:
        argv = shlex.split(ref)
    except ValueError as exc:
        raise ValueError(f"source command: {exc}") from None
    if not argv:
        raise ValueError("source command: needs a command")
    return kind, argv


# -- loading -------------------------------------------------------------------------------------


def load_secret(spec: CredentialSpec, environ: Mapping[str, str] | None = None) -> str:
    """The real value; ``CredentialError`` whose message never contains it (nor command output)."""
    kind, ref = _split_source(spec.source)
    what = f"credential {spec.name!r}"
    value: str | None
    if kind == "keyring":
        value = _from_keyring(what, *ref)
    elif kind == "env":
        value = (os.environ if environ is None else environ).get(ref)
        if value is None:
            raise CredentialError(f"{what}: environment variable {ref} is not set")
    elif kind == "file":
        from nixcell.userfile import read_input

        data = read_input(ref, f"{what}: cannot read", error=CredentialError, limit=64 << 10)
        try:
            value = _strip_newline(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise CredentialError(f"{what}: {ref} is not UTF-8 text") from None
    else:
        value = _from_command(what, ref)
    if not value:
        raise CredentialError(f"{what}: the secret from {kind}: is empty")
    if any(c in value for c in "\r\n\0"):
        raise CredentialError(f"{what}: the secret from {kind}: contains a line break or NUL")
    return value


def _from_keyring(what: str, service: str, account: str) -> str:
    import keyring  # imported late: backend discovery is slow and often unneeded

    try:
        value = keyring.get_password(service, account)
    except Exception as exc:  # backends raise all sorts (D-Bus, locked keychain)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CredentialError(
            f"{what}: keyring lookup of {service}/{account} failed: {type(exc).__name__} {reason}"
        ) from None
    if value is None:
        raise CredentialError(f"{what}: no keyring entry for {service}/{account}")
    return value


def _from_command(what: str, argv: list[str]) -> str:
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=COMMAND_TIMEOUT
        )
    except FileNotFoundError:
        raise CredentialError(f"{what}: command not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise CredentialError(
            f"{what}: command {argv[0]} timed out after {COMMAND_TIMEOUT:g} s"
        ) from None
    except OSError as exc:
        raise CredentialError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from None
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip()[-500:]  # stdout may be the secret
        raise CredentialError(
            f"{what}: command {argv[0]} exited with status {proc.returncode}", detail=tail or None
        )
    try:
        return _strip_newline(proc.stdout.decode("utf-8"))
    except UnicodeDecodeError:
        raise CredentialError(f"{what}: command {argv[0]} printed non-UTF-8 output") from None


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


# -- dummies -------------------------------------------------------------------------------------


def make_dummy(real: str) -> str:
    """A random stand-in of the same length and shape; it neither equals nor contains ``real``.

    A recognisable prefix (``ghp_``, ``sk-ant-api03-`` ...) is kept so clients that sniff the token
    type still work; every other letter/digit is redrawn within its class (hex stays hex). An
    unknown prefix is kept only when it looks like a word (one-case letters then ``_``/``-``), so
    the first group of a UUID or of a random base64url token is not handed to the cell.
    """
    if len(real) < MIN_SECRET_LENGTH:
        raise CredentialError(
            f"the secret is too short to swap safely ({len(real)} characters, "
            f"at least {MIN_SECRET_LENGTH} needed)"
        )
    prefix = _prefix(real)
    if sum(c.isascii() and c.isalnum() for c in real[len(prefix) :]) < MIN_RANDOM_CHARS:
        prefix = ""
        if sum(c.isascii() and c.isalnum() for c in real) < MIN_RANDOM_CHARS:
            raise CredentialError("the secret has too few letters and digits to swap safely")
    body = real[len(prefix) :]
    lower = [c for c in body if "a" <= c <= "z"]
    upper = [c for c in body if "A" <= c <= "Z"]
    alphabets = {
        "0": "0123456789",
        "a": "abcdef" if lower and all(c <= "f" for c in lower) else "abcdefghijklmnopqrstuvwxyz",
        "A": "ABCDEF" if upper and all(c <= "F" for c in upper) else "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    }
    while True:  # same length, so "contains" can only mean "equals"
        dummy = prefix + "".join(
            secrets.choice(alphabets[cls]) if (cls := _char_class(c)) else c for c in body
        )
        if dummy != real:
            return dummy


def token_prefix(real: str) -> str:
    """The prefix ``make_dummy`` keeps (``ghp_``, ``sk-ant-api03-``, ``xyz_``), or ""."""
    prefix = _prefix(real)
    rest = real[len(prefix) :]
    return prefix if sum(c.isascii() and c.isalnum() for c in rest) >= MIN_RANDOM_CHARS else ""


def _prefix(real: str) -> str:
    for prefix in sorted(KNOWN_PREFIXES, key=len, reverse=True):
        if real.startswith(prefix):
            return prefix
    m = _GENERIC_PREFIX.match(real)
    return m.group() if m and not _HEXISH.fullmatch(real) else ""


def _char_class(c: str) -> str:
    if "0" <= c <= "9":
        return "0"
    if "a" <= c <= "z":
        return "a"
    if "A" <= c <= "Z":
        return "A"
    return ""


# -- the per-cell swapper ------------------------------------------------------------------------
