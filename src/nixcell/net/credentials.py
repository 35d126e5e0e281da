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
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from nixcell.errors import CredentialError
from nixcell.net.credsource import (  # re-exported: the credential API lives here
    KNOWN_PREFIXES,
    CredentialSpec,
    load_secret,
    make_dummy,
    parse_credentials,
)
from nixcell.net.hosts import BadHost, normalize_host
from nixcell.net.rewrite import Rewriter, replace_all

__all__ = [
    "KNOWN_PREFIXES",
    "CellCredentials",
    "CredentialSpec",
    "load_secret",
    "make_dummy",
    "parse_credentials",
]

Headers = list[tuple[bytes, bytes]]
_BASIC = re.compile(rb"(?i)(basic[ \t]+)([A-Za-z0-9+/]+={0,2})([ \t]*)")
_TOKEN_FIELDS = ("access_token", "refresh_token")


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
            for enc_real, enc_dummy in _base64_cores(s.real, s.dummy):
                pairs.setdefault(enc_real, enc_dummy)
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


def _base64_cores(real: bytes, dummy: bytes) -> list[tuple[bytes, bytes]]:
    """A secret inside base64 (a ``Basic`` header echoed back, a token in a JWT-like blob): at
    each of the three byte alignments, the characters that encode only the secret's own bytes.
    The dummy at the same alignment encodes to as many characters, so scrubbing keeps lengths.
    What stays visible is the one or two edge bytes that share a character with their
    neighbours (the leading ones are the kept prefix, e.g. ``ghp_``, the same in both)."""
    pairs = []
    for start in range(3):
        n = (len(real) - start) // 3 * 3
        if n < 6 or real[start : start + n] == dummy[start : start + n]:
            continue
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            pairs.append((encode(real[start : start + n]), encode(dummy[start : start + n])))
    return pairs


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
