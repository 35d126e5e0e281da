"""Where a dummy is swapped for its real value in a request head: whole tokens in header values,
``Basic`` credentials decoded, and only the values of known token query parameters.

Pure bytes in, bytes out; ``credentials.py`` chooses the pairs (dummy -> real) allowed for a
host and calls these.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Mapping

from nixcell.net.rewrite import replace_all

Headers = list[tuple[bytes, bytes]]
_BASIC = re.compile(rb"(?i)(basic[ \t]+)([A-Za-z0-9+/]+={0,2})([ \t]*)")


def rewrite_headers(headers: Headers, pairs: Mapping[bytes, bytes]) -> Headers:
    """Whole-token dummies in every header value swapped (``Basic`` ones decoded first)."""
    return [
        (name, _rewrite_basic(replace_all(v, pairs, bounded=True), pairs)) for name, v in headers
    ]


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


# Query parameters that carry a credential (``?access_token=…`` APIs). Only their values are
# swapped: a dummy anywhere else in the target — a path segment, another parameter — goes out
# as the dummy, so a cell cannot make the credential's host store the real value under a name
# of the cell's choosing (``PUT /repos/me/public/contents/<dummy>``) and read it back later.
TOKEN_PARAMS = frozenset(
    {
        b"access_token",
        b"token",
        b"private_token",
        b"oauth_token",
        b"auth_token",
        b"api_key",
        b"apikey",
        b"key",
        b"client_secret",
    }
)


def swap_in_target(target: bytes, pairs: Mapping[bytes, bytes]) -> bytes:
    """The target with dummies swapped in the values of ``TOKEN_PARAMS`` parameters only."""
    if not pairs or b"?" not in target:
        return target
    path, _, query = target.partition(b"?")
    parts = []
    for item in query.split(b"&"):
        name, eq, value = item.partition(b"=")
        if eq and urllib.parse.unquote_to_bytes(name).lower() in TOKEN_PARAMS:
            value = replace_all(value, pairs, bounded=True)
        parts.append(name + eq + value)
    return path + b"?" + b"&".join(parts)
