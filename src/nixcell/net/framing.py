"""Strict checks of HTTP/1.x message heads, on their raw bytes: framing two parsers agree on.

h11 is lenient where real traffic is (RFC 9112 lets it be): it joins obs-folds, reads bare LF
as a line end, lowercases and strips values, merges ``Content-Length: 5, 5``, takes
``Transfer-Encoding: Chunked`` or ``\\tchunked``, lets Transfer-Encoding win over
Content-Length, and accepts control bytes in values and any ``HTTP/x.y``. Each of those is a
spot where an upstream (or the cell) could read the message differently from the proxy: a body
becomes a second, unchecked request (request smuggling). So every head is checked here first,
h11-style (bytes in, verdict out, no I/O), and anything ambiguous is refused — never repaired.

Requests from the cell are held to one canonical form. Responses from upstreams get the checks
that decide where a message ends (real servers are messier elsewhere); a refused response is a
502 to the cell.
"""

from __future__ import annotations

import re

MAX_HEAD = 64 * 1024  # a whole head (h11's receive limit is the same)
MAX_LINE = 8 * 1024  # one request line or header line
MAX_HEADERS = 100
MAX_REQUEST_LENGTH = (1 << 31) - 1  # a larger Content-Length wraps 32-bit parsers: send chunked
MAX_RESPONSE_LENGTH = 1 << 53

_HEAD_END = re.compile(rb"\n\r?\n")  # what h11 takes as the end of a head: the same bytes
_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}")
_REQUEST_LINE = re.compile(rb"([^ ]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")
_CANONICAL_LINE = re.compile(rb"([A-Z][A-Z0-9_-]{0,31}) ([\x21\x22\x24-\x7e]+) HTTP/(1\.[01])")
_STATUS_LINE = re.compile(rb"HTTP/([0-9]\.[0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_REQUEST_VALUE = re.compile(rb"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")  # visible ASCII only
_RESPONSE_BAD = re.compile(rb"[\x00\x0b\x0c]")  # bytes no response header may hold
_DIGITS = re.compile(rb"0|[1-9][0-9]*")
# The same rules over a whole header block in one match (the common case: no Python loop per
# line); the per-line functions below run only to name what a refused block got wrong.
_TCHAR = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_REQUEST_BLOCK = re.compile(
    rb"(?:%s:[ \t]*(?:[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*\r\n)*" % _TCHAR
)
_RESPONSE_BLOCK = re.compile(rb"(?:%s:[^\x00\x0b\x0c\r\n]*\r\n)*" % _TCHAR)
_PROTOCOL = re.compile(
    rb"^(content-length|transfer-encoding|host|expect|upgrade|connection|http2-settings)"
    rb":([^\r]*)\r$",
    re.MULTILINE | re.IGNORECASE,
)
# Headers that decide framing, routing or the protocol: one exact spelling, one space at most
# after the colon, nothing after the value (tab and trailing-space variants are TE.TE tricks).
_STRICT = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"expect", b"upgrade", b"connection"}
)
_SINGLE = frozenset({b"content-length", b"transfer-encoding", b"host", b"expect", b"upgrade"})
_NO_BODY = frozenset({b"GET", b"HEAD", b"TRACE", b"CONNECT"})  # see docs/security.md
_NEVER_HOP = frozenset({b"content-length", b"transfer-encoding", b"host"})


class FramingError(Exception):
    """A message head or body two HTTP parsers could read differently: refused, not repaired.

    ``status`` is what the proxy answers (400, 417, 431 for the cell's requests; a refused
    upstream response becomes 502). The reason names the rule, never a header's value."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class Head:
    """A head that passed the checks: the facts the proxy re-serialises from."""

    __slots__ = ("block", "chunked", "fields", "length", "method", "status", "target", "version")

    def __init__(
        self,
        version: bytes,  # b"1.0" | b"1.1"
        block: bytes,  # the header lines, each ending in CRLF
        chunked: bool,
        length: int | None,  # Content-Length, when the body is framed by one
        fields: dict[bytes, bytes],  # the _SINGLE headers present
        method: bytes = b"",
        target: bytes = b"",
        status: int = 0,
    ) -> None:
        self.version, self.block, self.chunked, self.length = version, block, chunked, length
        self.fields, self.method, self.target, self.status = fields, method, target, status

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """(lowercased name, value without OWS) of every header line."""
        out = []
        for line in self.block.split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            out.append((name.lower(), value.strip(b" \t")))
        return out

    def framing_header(self) -> list[tuple[bytes, bytes]]:
        """The one framing header a re-serialised request carries (none: the cell sent none)."""
        if self.chunked:
            return [(b"transfer-encoding", b"chunked")]
        if self.length is not None:
            return [(b"content-length", str(self.length).encode())]
        return []


def head_end(buf: bytes | bytearray, start: int = 0) -> int | None:
    """Where the head at the front of ``buf`` ends, exactly as h11 will cut it; None: not yet.

    ``start`` is where an earlier search of the same buffer gave up (rescanning is avoided)."""
    if buf[:1] == b"\n":
        return 1
    if buf[:2] == b"\r\n":
        return 2
    match = _HEAD_END.search(buf, max(0, start - 2))
    return None if match is None else match.end()


Fields = list[tuple[bytes, bytes, bytes]]  # (lowercased name, stripped value, text after ':')


def _split(raw: bytes, what: str, request: bool) -> tuple[bytes, bytes, Fields]:
    """The start line, the header block and the protocol headers of a head, or FramingError."""
    if raw.endswith(b"\r\n\r\n") and raw != b"\r\n":
        cut = raw.find(b"\r\n")
        first, block = raw[:cut], raw[cut + 2 : -2]
        pattern = _REQUEST_BLOCK if request else _RESPONSE_BLOCK
        if (
            b"\n" not in first
            and b"\r" not in first
            and pattern.fullmatch(block)
            and block.count(b"\n") <= MAX_HEADERS
            and (len(block) <= MAX_LINE or max(map(len, block.split(b"\r\n"))) <= MAX_LINE)
        ):
            fields = [(m[1].lower(), m[2].strip(b" \t"), m[2]) for m in _PROTOCOL.finditer(block)]
            return first, block, fields
    _fields(_lines(raw, what)[1:], request)  # raises naming the fault
    raise FramingError(f"malformed {what} head")  # (the two readings never differ: fail closed)


def _lines(raw: bytes, what: str) -> list[bytes]:
    if raw in (b"\r\n", b"\n"):
        raise FramingError(f"empty line before the {what} line")
    if not raw.endswith(b"\r\n\r\n"):
        raise FramingError(f"bare LF in the {what} head (lines must end in CRLF)")
    lines = raw[:-4].split(b"\r\n")
    for line in lines:
        if b"\n" in line:
            raise FramingError(f"bare LF in the {what} head (lines must end in CRLF)")
        if b"\r" in line:
            raise FramingError(f"bare CR in the {what} head")
    return lines


def _fields(lines: list[bytes], request: bool) -> Fields:
    """(lowercased name, stripped value, raw text after the colon) of each header line."""
    if len(lines) > MAX_HEADERS:
        raise FramingError(f"more than {MAX_HEADERS} header lines", 431)
    out = []
    for line in lines:
        if len(line) > MAX_LINE:
            raise FramingError(f"header line over {MAX_LINE} bytes", 431)
        if line[:1] in (b" ", b"\t"):
            raise FramingError("obsolete line folding (a header line starting with whitespace)")
        name, colon, rest = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise FramingError("malformed header name (not a token, or whitespace before ':')")
        value = rest.strip(b" \t")
        if request:
            if value and not _REQUEST_VALUE.fullmatch(value):
                raise FramingError(
                    f"control or non-ASCII byte in the value of header {name.decode()!r}"
                )
        elif _RESPONSE_BAD.search(rest):
            raise FramingError(f"NUL or vertical whitespace in response header {name.decode()!r}")
        out.append((name.lower(), value, rest))
    return out


def _single(parsed: Fields, strict: bool) -> dict[bytes, bytes]:
    seen: dict[bytes, bytes] = {}
    for name, value, rest in parsed:
        if strict and name in _STRICT and rest not in (value, b" " + value):
            raise FramingError(f"{name.decode()}: at most one space before the value, none after")
        if name in _SINGLE:
            if name in seen:
                raise FramingError(f"more than one {name.decode()} header")
            seen[name] = value
    return seen


def _length(value: bytes, limit: int) -> int:
    if not _DIGITS.fullmatch(value):
        raise FramingError("Content-Length is not one plain decimal number")
    if len(value) > 19 or int(value) > limit:
        raise FramingError(f"Content-Length over {limit} (send the body chunked)")
    return int(value)


def check_request(raw: bytes) -> Head:
    """Check one request head (request line to the blank line, as cut by ``head_end``)."""
    line, block, parsed = _split(raw, "request", request=True)
    match = _CANONICAL_LINE.fullmatch(line)
    if match is None or len(line) > MAX_LINE:
        _request_line_fault(line)
        raise FramingError("malformed request line")  # (never reached: fail closed)
    method, target, version = match.groups()
    fields = _single(parsed, strict=True)
    te, cl = fields.get(b"transfer-encoding"), fields.get(b"content-length")
    if te is not None and cl is not None:
        raise FramingError("both Content-Length and Transfer-Encoding")
    if te is not None and te != b"chunked":
        raise FramingError("Transfer-Encoding other than exactly 'chunked'")
    if te is not None and version == b"1.0":
        raise FramingError("Transfer-Encoding in an HTTP/1.0 request")
    length = None if cl is None else _length(cl, MAX_REQUEST_LENGTH)
    if method in _NO_BODY and (te is not None or length):
        raise FramingError(f"a body on a {method.decode()} request (servers may ignore it)")
    _check_protocol_fields(method, version, parsed, fields)
    return Head(version, block, te is not None, length, fields, method, target)


def _request_line_fault(line: bytes) -> None:
    """Raise the FramingError that names what is wrong with a non-canonical request line."""
    if len(line) > MAX_LINE:
        raise FramingError(f"request line over {MAX_LINE} bytes", 414)
    if line.startswith(b"PRI * HTTP/2"):
        raise FramingError("HTTP/2 (prior-knowledge preface) is not supported; use HTTP/1.1")
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise FramingError("malformed request line (method SP target SP HTTP/1.x)")
    method, target, version = match.groups()
    if not _METHOD.fullmatch(method):
        raise FramingError("method must be an upper-case token")
    if version not in (b"1.0", b"1.1"):
        raise FramingError(f"HTTP/{version.decode()} is not supported; use HTTP/1.1")
    if b"#" in target:
        raise FramingError("a fragment ('#') in the request target")


def _check_protocol_fields(
    method: bytes, version: bytes, parsed: Fields, fields: dict[bytes, bytes]
) -> None:
    """Host, Expect, Upgrade, Connection: the headers that change who reads what next."""
    if version == b"1.1" and b"host" not in fields:
        raise FramingError("no Host header in an HTTP/1.1 request")
    if b"host" in fields and not fields[b"host"]:
        raise FramingError("empty Host header")
    expect = fields.get(b"expect")
    if expect is not None and (expect.lower() != b"100-continue" or version != b"1.1"):
        raise FramingError("Expect other than '100-continue' on HTTP/1.1", 417)
    upgrade = fields.get(b"upgrade")
    if upgrade is not None:
        if upgrade.lower().startswith(b"h2"):
            raise FramingError("HTTP/2 upgrade (h2c) is not supported; use HTTP/1.1")
        if upgrade.lower() != b"websocket" or method != b"GET" or version != b"1.1":
            raise FramingError("Upgrade other than 'websocket' on an HTTP/1.1 GET")
    for name, value, _ in parsed:
        if name == b"http2-settings":
            raise FramingError("HTTP/2 upgrade (HTTP2-Settings) is not supported")
        if name == b"connection":
            tokens = [t.strip(b" \t").lower() for t in value.split(b",")]
            if not all(_TOKEN.fullmatch(t) for t in tokens):
                raise FramingError("Connection must list header names")
            if _NEVER_HOP.intersection(tokens):
                raise FramingError("Connection names a framing or routing header")


def check_response(raw: bytes) -> Head:
    """Check one response head from an upstream: where its body ends must be unambiguous."""
    line, block, parsed = _split(raw, "status", request=False)
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise FramingError("malformed status line")
    version, status = match.group(1), int(match.group(2))
    if version not in (b"1.0", b"1.1"):
        raise FramingError(f"HTTP/{version.decode()} response")
    fields = _single(parsed, strict=False)
    te, cl = fields.get(b"transfer-encoding"), fields.get(b"content-length")
    if te is not None and cl is not None:
        raise FramingError("response with both Content-Length and Transfer-Encoding")
    if te is not None and (te.lower() != b"chunked" or version == b"1.0"):
        raise FramingError("response Transfer-Encoding other than 'chunked' on HTTP/1.1")
    if te is not None and (status < 200 or status == 204):
        raise FramingError(f"Transfer-Encoding on a {status} response")
    length = None if cl is None else _length(cl, MAX_RESPONSE_LENGTH)
    return Head(version, block, te is not None, length, fields, status=status)
