"""Credentials: where real secrets come from, the dummies a cell sees, swapping them on the wire.

A cell only ever holds a *dummy*: same length and shape as the real secret (so clients that check
a prefix or a length accept it), random everywhere else. The proxy swaps dummy -> real on requests
to the credential's hosts, and real -> dummy on every response, so a secret neither leaves the host
towards other servers nor enters the cell. Everything here is bytes in, bytes out; the proxy is the
loop around it. The ``[[credentials]]`` config is parsed in net/credsource.py; where in a request
head a dummy is swapped is net/requestswap.py.

Responses are scrubbed of every spelling of every real value (net/spellings.py), from every
host: an allowed host may republish what a credential host stored. Tokens a credential's host
issues (net/issued.py: any secret-named field, any depth, JSON or form, any media type) get
dummies too, up to ``MAX_ISSUED`` per cell.
"""

from __future__ import annotations

import asyncio
import os
import re
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
from nixcell.net.issued import Unhidable, family_of, find_tokens, suspicious
from nixcell.net.logredact import watch
from nixcell.net.requestswap import Headers, rewrite_headers, swap_in_target
from nixcell.net.rewrite import Rewriter, compile_needles
from nixcell.net.spellings import Spellings
from nixcell.net.spellset import Chain, SpellingSet

__all__ = [
    "KNOWN_PREFIXES",
    "CellCredentials",
    "CredentialSpec",
    "PlaintextRefused",
    "load_secret",
    "make_dummy",
    "parse_credentials",
]

MAX_ISSUED = 64  # tokens a cell's credential hosts may issue; every one stays scrubbed


class PlaintextRefused(CredentialError):
    """A real value would go to a server over cleartext HTTP; the message names the credential."""

    def __init__(self, name: str, host: str) -> None:
        super().__init__(
            f"credential {name!r} is not sent to {host} over cleartext http:// "
            f"(use https, or set allow_plaintext = true on the credential)"
        )


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
        self._groups: list[Spellings] = []  # compiled once each, never rebuilt (net/spellset.py)
        self._pending: list[_Swap] = []  # swaps whose spellings are not compiled yet
        self._issued = 0
        for spec, real in loaded:
            self._specs[spec.name] = spec
            self._add(spec, real)
        self.spellings()  # the configured secrets: one group, compiled before the cell starts
        watch(self)  # the proxy's logs are redacted while this cell lives

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
        swap = _Swap(spec, raw, dummy)
        self._swaps.append(swap)
        self._pending.append(swap)
        self._cache.clear()
        return dummy

    def _host_pairs(self, host: str, *, body: bool, plain: bool = False) -> dict[bytes, bytes]:
        """dummy -> real for the credentials allowed to reach ``host`` (over cleartext http
        when ``plain``: only those with ``allow_plaintext``)."""
        pairs = self._host_pairs_any(host, body=body)
        if not plain:
            return pairs
        return {d: r for d, r in pairs.items() if self._owner(d).credential.allow_plaintext}

    def _owner(self, dummy: bytes) -> _Swap:
        return next(s for s in self._swaps if s.dummy == dummy)

    def _host_pairs_any(self, host: str, *, body: bool) -> dict[bytes, bytes]:
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

    def spellings(self) -> SpellingSet:
        """Every spelling of every real value, swapping to its dummy's: the one source for
        scrubbing, OAuth mapping and redaction. Compiles what ``settle`` has not yet, here."""
        if self._pending:
            self._groups.append(_compile(self._pending))
            self._pending = []
        return SpellingSet(self._groups)

    async def settle(self) -> None:
        """Compile the spellings of newly added secrets in a worker thread: tens of ms per
        secret, which on the proxy's loop would stall every cell of the process."""
        while self._pending:
            batch = list(self._pending)
            group = await asyncio.to_thread(_compile, batch)
            if self._pending[: len(batch)] == batch:  # else compiled meanwhile by spellings()
                self._groups.append(group)
                del self._pending[: len(batch)]

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

    def prepare_request(
        self,
        scheme: str,
        host: str,
        headers: Iterable[tuple[bytes, bytes]],
        target: bytes,
        credential: str | None,
    ) -> tuple[Headers, bytes, Rewriter | None]:
        """Headers, target and body rewriter of a request to ``host``: dummies swapped for the
        real values that may go there, a rule's credential injected. Over cleartext http a
        credential without ``allow_plaintext`` would go out: ``PlaintextRefused`` instead (a body
        carrying its dummy raises it from the rewriter, mid-body)."""
        plain = scheme == "http"
        headers = list(headers)
        if plain:
            held = {
                d: r
                for d, r in self._host_pairs(host, body=False).items()
                if not self._owner(d).credential.allow_plaintext
            }
            for dummy in held:
                one = {dummy: held[dummy]}
                swapped = swap_in_target(target, one) != target
                if swapped or rewrite_headers(headers, one) != headers:
                    raise PlaintextRefused(self._owner(dummy).credential.name, host)
        headers = self.rewrite_request_headers(host, headers, plain=plain)
        if credential:
            spec = self._specs.get(credential)
            injected = self.inject_for(host, headers, credential)
            if plain and spec is not None and not spec.allow_plaintext and injected != headers:
                raise PlaintextRefused(credential, host)
            headers = injected
        target = swap_in_target(target, self._host_pairs(host, body=False, plain=plain))
        return headers, target, self.request_body_rewriter(host, plain=plain)

    def rewrite_request_headers(
        self, host: str, headers: Iterable[tuple[bytes, bytes]], *, plain: bool = False
    ) -> Headers:
        """Swap whole-token dummies in header values for ``host`` (``Basic`` ones decoded)."""
        headers = list(headers)
        pairs = self._host_pairs(host, body=False, plain=plain)
        if not pairs:
            return headers
        return rewrite_headers(headers, pairs)

    def rewrite_request_target(self, host: str, target: bytes) -> bytes:
        """Swap whole-token dummies in the request target (``?access_token=...`` APIs)."""
        return swap_in_target(target, self._host_pairs(host, body=False))

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

    def request_body_rewriter(self, host: str, *, plain: bool = False) -> Rewriter | None:
        """Streaming dummy -> real rewriting of a body sent to ``host``; None if nothing applies.
        Over cleartext (``plain``) the dummy of a credential without ``allow_plaintext`` raises
        ``PlaintextRefused`` instead of being swapped."""
        pairs = self._host_pairs(host, body=True)
        if not pairs:
            return None
        if not plain:
            return Rewriter(pairs, bounded=True)

        def edit(buf: bytearray, m: re.Match[bytes]) -> None:
            owner = self._owner(bytes(m.group()))
            if not owner.credential.allow_plaintext:
                raise PlaintextRefused(owner.credential.name, host)
            buf[m.start() : m.end()] = owner.real

        width = max(map(len, pairs)) + 1  # bounded: one byte past the needle decides
        return Rewriter.matching(compile_needles(list(pairs), bounded=True), edit, width)

    # -- responses: real -> dummy, everywhere --

    def response_scrubber(self) -> Rewriter | Chain:
        """A streaming real -> dummy rewriter for any response body: every spelling of every
        real value, wherever it starts (also across chunk boundaries)."""
        return self.spellings().rewriter()

    def scrub_headers(self, headers: Iterable[tuple[bytes, bytes]]) -> Headers:
        """Names and values (trailers too), every spelling."""
        spelled = self.spellings()
        return [(spelled.scrub(name), spelled.scrub(value)) for name, value in headers]

    def scrub(self, data: bytes) -> bytes:
        """One complete buffer (a WebSocket control frame, a token response)."""
        return self.spellings().scrub(data)

    # -- tokens issued by a credential's host are swapped like the credential --

    def wants_token_response(self, host: str, content_type: str = "") -> bool:
        """Whether the proxy should look at this response for issued tokens: any response of a
        credential's host, whatever its media type (``content_type`` is not trusted)."""
        return self._spec_for(host) is not None

    def observe_token_response(self, host: str, body: bytes, content_type: str = "") -> bytes:
        """``body`` with every token it issues replaced by a dummy (net/issued.py), and
        scrubbed. Synchronous; the proxy uses ``issue_tokens``, ``settle``, ``hide_tokens``."""
        tokens = self.issue_tokens(host, body)
        return self.hide_tokens(host, body, tokens)

    def issue_tokens(self, host: str, body: bytes) -> list[str]:
        """Register the tokens in a complete response of ``host`` (bound to the issuing
        credential's hosts and ``body`` flag, so their dummies are swapped back later).
        ``CredentialError`` if the body may carry a token that cannot be found or kept (it does
        not parse, or the cell reached ``MAX_ISSUED``): the response must then be refused."""
        spec = self._spec_for(host)
        if spec is None or not body:
            return []
        family = family_of(next(s.real for s in self._swaps if s.credential is spec).decode())
        try:
            tokens = find_tokens(body, family)
        except Unhidable as exc:
            why = f"credential {spec.name!r}: {host} issued a token: {exc}"
            raise CredentialError(why) from None
        if tokens is None:
            if suspicious(body, family):
                raise CredentialError(
                    f"credential {spec.name!r}: a response of {host} may carry a token but "
                    f"does not parse"
                )
            return []
        known = {s.real for s in self._swaps} | {s.dummy for s in self._swaps}
        new = [t for t in tokens if t.encode() not in known]
        if self._issued + len(new) > MAX_ISSUED:
            raise CredentialError(
                f"credential {spec.name!r}: this cell reached the cap of {MAX_ISSUED} tokens "
                f"issued by its credential hosts; further token responses are refused"
            )
        for real in new:
            self._add(spec, real)
            self._issued += 1
        return [t for t in tokens if t.encode() not in {s.dummy for s in self._swaps}]

    def hide_tokens(self, host: str, body: bytes, tokens: list[str]) -> bytes:
        """``body`` scrubbed (the same spellings as every other response), checked: a token
        still there raises ``CredentialError``. Same length, so Content-Length holds."""
        body = self.spellings().scrub(body)
        if tokens:
            spec = self._spec_for(host)
            family = family_of(next(s.real for s in self._swaps if s.credential is spec).decode())
            try:
                left = find_tokens(body, family) or []
            except Unhidable:
                left = tokens
            if any(t in tokens for t in left) or any(t.encode() in body for t in tokens):
                name = spec.name if spec else "?"
                raise CredentialError(f"credential {name!r}: cannot hide a token issued by {host}")
        return body

    def _spec_for(self, host: str) -> CredentialSpec | None:
        try:
            name = normalize_host(host)
        except BadHost:
            return None
        return next((s for s in self._specs.values() if s.matches(name)), None)

    # -- for logs and audit --

    def source_files(self) -> list[tuple[str, str]]:
        """(name, path) of each credential read from a ``file:`` source: a cell that can see
        the file would read the real value there."""
        found = []
        for spec in self._specs.values():
            kind, _, ref = spec.source.partition(":")
            if kind == "file":
                found.append((spec.name, os.path.expanduser(ref)))
        return found

    def secrets(self) -> list[str]:
        """Every real value this cell's proxy knows (configured and OAuth-issued)."""
        return list(dict.fromkeys(s.real.decode() for s in self._swaps))

    def redact(self, text: str) -> str:
        """``text`` with every spelling of every real value replaced (logs, audit, errors)."""
        return self.spellings().redact(text)

    def exposes(self, text: str) -> bool:
        """Whether ``text`` holds a real value in any spelling (what may not enter a cell)."""
        return self.spellings().found(text.encode("utf-8", "surrogateescape"))


def _compile(swaps: list[_Swap]) -> Spellings:
    return Spellings((s.real.decode(), s.dummy.decode()) for s in swaps)
