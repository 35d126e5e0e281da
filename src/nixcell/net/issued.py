"""Finding tokens a credential's host issues in a response body, whatever its shape.

A host that holds a cell's credential can hand out more secrets: OAuth ``access_token`` and
``refresh_token``, OIDC ``id_token``, GitHub App ``{"token": "ghs_..."}``, a session key nested
in ``{"data": {...}}``, sent as JSON, form, ``text/plain`` or with no Content-Type at all. Reading
only top-level OAuth fields of JSON/form media missed all but the first two. So the body decides,
not its media type: anything that parses as JSON (objects and arrays at any depth, also JSON held
in a string value, also one document per line) or as ``key=value`` text is searched.

A string is a token when

- its key (or the key of any object or array above it) *names a secret*: lower-cased, with
  everything but letters and digits dropped, it contains ``token``, ``secret``, ``passw``,
  ``passphrase``, ``jwt``, ``credential``, ``session``, ``assertion``, ``cookie``, or ends in
  ``key`` (``key``, ``api_key``, ``accessKey``, ``private_key``; not ``public_key``). Keys that
  only describe a token (ending in ``type``, ``url``, ``uri``, ``endpoint``, ``expires_in``,
  ``expires_at``, ``expiry``, ``supported``, ``hint``, ``count``, ``length``) are not secrets;
- or it looks like the credential's own token family: same prefix family as the configured
  secret (``ghp_`` -> every ``gh?_`` and ``github_pat_``; ``sk-``; ``xox?-``; ``AKIA``/``ASIA``
  ...), then only token characters, wherever it sits in the JSON.

Directly under a canonical name (``access_token``, ``refresh_token``, ``id_token``, ``token``,
``secret``, ``client_secret``, ``password``, ``api_key``) any value is a secret, and one too short
to get a safe dummy (``credsource.make_dummy``: under 8 characters or 8 letters and digits) makes
``Unhidable`` fail the response. Elsewhere a value must also look random (no whitespace; 20
characters, or two of lower case, upper case, digits): a dummy's real value is scrubbed in every
spelling from every later response, so ``"secret_scanning": {"status": "disabled"}`` must not
make every ``disabled`` a dummy.

A body that does not parse but *looks* like it could hold one (JSON-ish or ``key=value`` at
its start, a secret-named JSON key or a family token inside) is ``suspicious``: the proxy
refuses it rather than guess.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator

from nixcell.errors import CredentialError
from nixcell.net.credsource import MIN_SECRET_LENGTH, make_dummy, token_prefix

_WORDS = ("token", "secret", "passw", "passphrase", "jwt", "credential", "session", "assertion",
          "cookie")  # fmt: skip
_NOT_SECRET = ("type", "types", "url", "uri", "endpoint", "expiresin", "expiresat", "expires",
               "expiry", "supported", "hint", "count", "length")  # fmt: skip
_FAMILIES = (
    ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    ("sk-",),
    ("xoxb-", "xoxp-", "xoxa-", "xoxe-", "xoxr-", "xoxs-"),
    ("glpat-", "gloas-", "glrt-", "glptt-", "gldt-", "glsoat-"),
    ("AKIA", "ASIA"),
)
_STRICT = frozenset({"accesstoken", "refreshtoken", "idtoken", "token", "secret",
                     "clientsecret", "password", "apikey"})  # fmt: skip
_TOKEN_TEXT = re.compile(r"[A-Za-z0-9_.~+/=-]+")
_FORM_HEAD = re.compile(rb"[A-Za-z0-9_.~%+\-\[\]]{1,64}=")
_FORM_CHARS = re.compile(rb"[A-Za-z0-9_.~%+\-\[\]]{0,64}")
_XSSI = (b")]}'", b"while(1);", b"for(;;);")  # anti-JSON-hijacking prefixes before JSON
_MAX_DEPTH = 64  # JSON held inside JSON strings: how deep it is unpacked


class Unhidable(ValueError):
    """A canonical token field holds a value too short to swap; the message names the key."""


def _norm(key: str) -> str:
    return "".join(c for c in key.lower() if c.isascii() and c.isalnum())


def _strict(key: str, value: str) -> bool:
    """Whether ``value`` is a secret by its canonical field name alone (``Unhidable`` if it
    cannot be swapped)."""
    if not value or _norm(key) not in _STRICT:
        return False
    if not _dummyable(value):
        raise Unhidable(f"the {key[:64]!r} field is too short to swap safely")
    return True


def names_secret(key: str) -> bool:
    """Whether an object key (or form field) names a secret; see the module docstring."""
    norm = _norm(key)
    if not norm or norm.endswith(_NOT_SECRET):
        return False
    if norm.endswith("key"):
        return not norm.endswith("publickey")
    return any(word in norm for word in _WORDS)


def family_of(real: str) -> tuple[str, ...]:
    """The prefixes of ``real``'s token family (empty if it has no recognisable prefix)."""
    prefix = token_prefix(real)
    if not prefix:
        return ()
    for family in _FAMILIES:
        if any(prefix.startswith(p) for p in family):
            return family
    return (prefix,)


def _dummyable(value: str) -> bool:
    if len(value) < MIN_SECRET_LENGTH:
        return False
    try:
        make_dummy(value)
    except CredentialError:
        return False
    return True


def _random_looking(value: str) -> bool:
    if any(c.isspace() for c in value) or not _dummyable(value):
        return False
    classes = sum(any(test(c) for c in value) for test in (str.islower, str.isupper, str.isdigit))
    return len(value) >= 20 or classes >= 2


def _in_family(value: str, family: tuple[str, ...]) -> bool:
    return any(value.startswith(p) and len(value) > len(p) for p in family) and bool(
        _TOKEN_TEXT.fullmatch(value)
    )


def _strip(body: bytes) -> bytes:
    text = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    for guard in _XSSI:
        if text.startswith(guard):
            return text[len(guard) :].lstrip(b" \t\r\n")
    return text


def shape(body: bytes) -> str | None:
    """What the start of a body says: ``"json"`` (``{``/``[``), ``"form"`` (``key=``),
    ``"other"``, or None while too little has arrived to tell."""
    text = _strip(body)
    if not text or any(g.startswith(text) for g in _XSSI):
        return None
    if text[:1] in b"{[":
        return "json"
    if _FORM_HEAD.match(text):
        return "form"
    return None if _FORM_CHARS.fullmatch(text) else "other"


def _json_docs(body: bytes) -> list[object] | None:
    text = _strip(body)
    try:
        return [json.loads(text)]
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    docs = []
    try:  # newline-delimited JSON: every non-empty line a document
        for line in text.splitlines():
            if line.strip():
                docs.append(json.loads(line))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return docs


def _walk(doc: object, family: tuple[str, ...]) -> Iterator[str]:
    """Secret strings of one JSON document, iteratively (depth is the sender's choice)."""
    stack: list[tuple[object, bool, int]] = [(doc, False, 0)]
    while stack:
        node, secret, depth = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and _strict(str(key), value):
                    yield value
                    continue
                stack.append((value, secret or names_secret(str(key)), depth))
        elif isinstance(node, list):
            stack.extend((item, secret, depth) for item in node)
        elif isinstance(node, str):
            if (secret or _in_family(node, family)) and _random_looking(node):
                yield node
            if node[:1] in "{[" and depth < _MAX_DEPTH:  # JSON inside a string
                for inner in _json_docs(node.encode()) or ():
                    stack.append((inner, secret, depth + 1))


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    text = _strip(body).decode("utf-8", "replace").replace("\r\n", "&").replace("\n", "&")
    return urllib.parse.parse_qsl(text, keep_blank_values=True)


def find_tokens(body: bytes, family: tuple[str, ...]) -> list[str] | None:
    """Every token in ``body`` (first seen first), [] if it holds none, None if it is JSON-ish
    but does not parse (the caller decides with ``suspicious``); ``Unhidable`` if a canonical
    token field cannot be swapped."""
    kind = shape(body)
    found: dict[str, None] = {}
    docs = _json_docs(body) if kind == "json" else None
    if docs is not None:
        for doc in docs:
            found.update(dict.fromkeys(_walk(doc, family)))
        return list(found)
    if kind == "json":
        return None
    if kind == "form" or (kind is None and _strip(body)):
        for key, value in _form_pairs(body):
            if _strict(key, value) or (
                (names_secret(key) or _in_family(value, family)) and _random_looking(value)
            ):
                found[value] = None
    return list(found)


_SECRET_KEY = re.compile(rb'"([^"\\]{1,64})"\s*:')


def suspicious(body: bytes, family: tuple[str, ...]) -> bool:
    """An unparsable body that may still carry a token: a secret-named JSON key, or text in
    the credential's token family."""
    for m in _SECRET_KEY.finditer(body):
        if names_secret(m.group(1).decode("latin-1")):
            return True
    return any(p.encode() in body for p in family)
