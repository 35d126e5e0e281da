"""Credentials: where real secrets come from, the dummies a cell sees, swapping them on the wire.

A cell only ever holds a *dummy*: same length and shape as the real secret (so clients that check
a prefix or a length accept it), random everywhere else. The proxy swaps dummy -> real on requests
to the credential's hosts, and real -> dummy on every response, so a secret neither leaves the host
towards other servers nor enters the cell. Everything here is bytes in, bytes out; the proxy is the
loop around it.

Config (``[[credentials]]`` tables)::

    name   = "github"                       # required
    source = "keyring:github.com/me"        # keyring:SERVICE/ACCOUNT | env:NAME | file:PATH
                                            # | command:ARGV (no shell, 30 s timeout)
    hosts  = ["api.github.com"]             # required: where the real value may go
    header = "Authorization"                # used when a policy rule injects the credential
    format = "Bearer {token}"
    env    = "GITHUB_TOKEN"                 # the cell's variable holding the dummy; "" for none
    body   = false                          # also swap in request bodies (OAuth refresh, forms)
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import shlex
import subprocess
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nixcell.errors import CredentialError, PolicyError
from nixcell.net.hosts import BadHost, HostPattern, normalize_host
from nixcell.net.rewrite import Rewriter, replace_all

Headers = list[tuple[bytes, bytes]]

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
_BASIC = re.compile(rb"(?i)(basic[ \t]+)([A-Za-z0-9+/]+={0,2})([ \t]*)")
_KEYS = frozenset({"name", "source", "hosts", "header", "format", "env", "body"})
_META = frozenset({"_line", "_file"})  # added by the TOML loader, not written by users
_TOKEN_FIELDS = ("access_token", "refresh_token")


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
    return CredentialSpec(name, source, tuple(patterns), header, fmt, env, body, where)


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
        path = Path(ref).expanduser()
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
        try:
            value = _strip_newline(ref.read_bytes().decode("utf-8"))
        except OSError as exc:
            raise CredentialError(f"{what}: cannot read {ref}: {exc.strerror}") from None
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


@dataclass(frozen=True)
class _Swap:
    """One real value and its dummy, bound to the hosts where the real may go."""

    credential: CredentialSpec
    real: bytes
    dummy: bytes


class CellCredentials:
    """The credentials of one cell: its dummies, and the swaps the proxy applies for it.

    Invariant: every dummy has exactly the byte length of its real value, so header values, bodies
    and Content-Length keep their sizes. Not thread-safe: use it from the proxy's event loop.
    Hosts passed in are names or IP literals without a port; anything unparsable matches nothing.
    """

    def __init__(self, loaded: Iterable[tuple[CredentialSpec, str]]) -> None:
        self._specs: dict[str, CredentialSpec] = {}
        self._swaps: list[_Swap] = []
        self._cache: dict[tuple[str, bool], dict[bytes, bytes]] = {}
        for spec, real in loaded:
            self._specs[spec.name] = spec
            self._add(spec, real)

    @classmethod
    def load(
        cls, specs: Iterable[CredentialSpec], environ: Mapping[str, str] | None = None
    ) -> CellCredentials:
        """Load every secret now, so a missing one fails before the cell starts."""
        return cls([(spec, load_secret(spec, environ)) for spec in specs])

    def __repr__(self) -> str:
        return f"CellCredentials({', '.join(self._specs)})"

    def _add(self, spec: CredentialSpec, real: str) -> bytes:
        """Register ``real`` for ``spec`` with a fresh dummy (or the one it already has)."""
        raw = real.encode()
        for swap in self._swaps:
            if swap.real == raw and swap.credential.name == spec.name:
                return swap.dummy
        taken = [s.real for s in self._swaps] + [s.dummy for s in self._swaps] + [raw]
        for _ in range(100):  # a clash needs another value inside the kept prefix: rare
            try:
                dummy = make_dummy(real).encode()
            except CredentialError as exc:
                raise CredentialError(f"credential {spec.name!r}: {exc}") from None
            if not any(dummy in t or t in dummy for t in taken):
                break
        else:
            raise CredentialError(
                f"credential {spec.name!r}: no dummy distinct from the cell's other secrets"
            )
        assert len(dummy) == len(raw)
        self._swaps.append(_Swap(spec, raw, dummy))
        self._cache.clear()
        return dummy

    def _host_pairs(self, host: str, *, body: bool) -> dict[bytes, bytes]:
        """dummy -> real for the credentials allowed to reach ``host``."""
        key = (host, body)
        if key not in self._cache:
            if len(self._cache) > 4096:  # hosts come from the cell: keep the memo bounded
                self._cache.clear()
            try:
                name = normalize_host(host)
            except BadHost:
                name = None
            self._cache[key] = {
                s.dummy: s.real
                for s in self._swaps
                if name is not None
                and s.credential.matches(name)
                and (s.credential.body or not body)
            }
        return self._cache[key]

    def _scrub_pairs(self) -> dict[bytes, bytes]:
        pairs: dict[bytes, bytes] = {}
        for s in self._swaps:
            pairs.setdefault(s.real, s.dummy)
        return pairs

    def applies_to(self, host: str) -> bool:
        """Whether any credential of the cell may go to ``host`` (swaps and OAuth apply there)."""
        return self._spec_for(host) is not None

    # -- what the cell sees --

    def cell_env(self) -> dict[str, str]:
        """Variable -> dummy, for the cell's environment."""
        env: dict[str, str] = {}
        for s in self._swaps:
            if s.credential.env and s.credential.env not in env:
                env[s.credential.env] = s.dummy.decode()
        return env

    # -- requests: dummy -> real, only towards the credential's hosts --

    def rewrite_request_headers(self, host: str, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Swap whole-token dummies in header values for ``host`` (``Basic`` ones decoded)."""
        headers = list(headers)
        pairs = self._host_pairs(host, body=False)
        if not pairs:
            return headers
        return [
            (name, _rewrite_basic(replace_all(v, pairs, bounded=True), pairs))
            for name, v in headers
        ]

    def rewrite_request_target(self, host: str, target: bytes) -> bytes:
        """Swap whole-token dummies in the request target (``?access_token=...`` APIs)."""
        return replace_all(target, self._host_pairs(host, body=False), bounded=True)

    def inject_for(
        self, host: str, headers: Iterable[tuple[bytes, bytes]], credential_name: str
    ) -> Headers:
        """Add ``header: format`` with the real value when a policy rule binds the credential.

        The request's own header wins if present (its dummy is swapped by
        ``rewrite_request_headers``); a host outside the credential's ``hosts`` gets nothing.
        """
        headers = list(headers)
        spec = self._specs.get(credential_name)
        if spec is None:
            raise CredentialError(
                f"no credential named {credential_name!r} is loaded for this cell"
            )
        try:
            allowed = spec.matches(normalize_host(host))
        except BadHost:
            allowed = False
        header = spec.header.lower().encode()
        if not allowed or any(name.lower() == header for name, _ in headers):
            return headers
        real = next(s.real for s in self._swaps if s.credential is spec).decode()
        headers.append((spec.header.encode(), spec.format.format(token=real).encode()))
        return headers

    def request_body_rewriter(self, host: str) -> Rewriter | None:
        """Streaming dummy -> real rewriting of a body sent to ``host``; None if nothing applies."""
        pairs = self._host_pairs(host, body=True)
        return Rewriter(pairs, bounded=True) if pairs else None

    # -- responses: real -> dummy, everywhere --

    def response_scrubber(self) -> Rewriter:
        """A streaming real -> dummy rewriter for any response body (any occurrence, unbounded)."""
        return Rewriter(self._scrub_pairs(), bounded=False)

    def scrub_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        pairs = self._scrub_pairs()
        return [(name, replace_all(value, pairs, bounded=False)) for name, value in headers]

    # -- OAuth: tokens issued by a credential's host are swapped like the credential --

    def wants_token_response(self, host: str, content_type: str) -> bool:
        """Whether the proxy should buffer this response for ``observe_token_response``."""
        return _token_media(content_type) is not None and self._spec_for(host) is not None

    def observe_token_response(self, host: str, body: bytes, content_type: str) -> bytes:
        """Replace ``access_token``/``refresh_token`` values in a complete response with dummies.

        New real tokens are remembered, bound to the issuing credential's hosts and ``body`` flag,
        so later requests carrying their dummies are swapped back. Same length, so the response's
        Content-Length holds. Raises ``CredentialError`` if a token could not be hidden: the proxy
        must then fail the response instead of forwarding it.
        """
        spec = self._spec_for(host)
        media = _token_media(content_type)
        if spec is None or media is None or not body:
            return body
        tokens = _token_values(body, media)
        for real in tokens:
            dummy = self._add(spec, real).decode()
            for enc_real, enc_dummy in _encodings(real, dummy):
                body = body.replace(enc_real, enc_dummy)
        if any(t in tokens for t in _token_values(body, media)):
            raise CredentialError(f"credential {spec.name!r}: cannot hide a token issued by {host}")
        return body

    def _spec_for(self, host: str) -> CredentialSpec | None:
        try:
            name = normalize_host(host)
        except BadHost:
            return None
        return next((s for s in self._specs.values() if s.matches(name)), None)

    # -- for logs and audit --

    def secrets(self) -> list[str]:
        """Every real value this cell's proxy knows (configured and OAuth-issued)."""
        return list(dict.fromkeys(s.real.decode() for s in self._swaps))

    def redact(self, text: str) -> str:
        for real in sorted(self.secrets(), key=len, reverse=True):
            text = text.replace(real, "[REDACTED]")
        return text


def _rewrite_basic(value: bytes, pairs: Mapping[bytes, bytes]) -> bytes:
    """``Basic base64(user:dummy)`` -> the same with the real value; base64 length is unchanged."""
    m = _BASIC.fullmatch(value)
    if m is None:
        return value
    try:
        decoded = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        return value
    swapped = replace_all(decoded, pairs, bounded=True)
    if swapped == decoded:
        return value
    return m.group(1) + base64.b64encode(swapped) + m.group(3)


def _token_media(content_type: str) -> str | None:
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return "json"
    if media == "application/x-www-form-urlencoded":
        return "form"
    return None


def _token_values(body: bytes, media: str) -> list[str]:
    """Top-level string ``access_token``/``refresh_token`` values, in field order."""
    if media == "json":
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return []
        if not isinstance(doc, dict):
            return []
        values = [doc.get(k) for k in _TOKEN_FIELDS]
    else:
        fields = dict(urllib.parse.parse_qsl(body.decode("latin-1")))
        values = [fields.get(k) for k in _TOKEN_FIELDS]
    return [v for v in values if isinstance(v, str) and v]


def _encodings(real: str, dummy: str) -> list[tuple[bytes, bytes]]:
    """The raw spellings a token may have in a body: as is, JSON ``\\/``, percent-encoded.

    Dummies differ from reals only in letters and digits, which none of these encodings touch,
    so each encoded pair keeps equal lengths.
    """
    pairs = {
        (real.encode(), dummy.encode()),
        (real.replace("/", "\\/").encode(), dummy.replace("/", "\\/").encode()),
        (urllib.parse.quote(real, safe="").encode(), urllib.parse.quote(dummy, safe="").encode()),
        (urllib.parse.quote_plus(real).encode(), urllib.parse.quote_plus(dummy).encode()),
    }
    assert all(len(r) == len(d) for r, d in pairs)
    return sorted(pairs, key=lambda p: -len(p[0]))
