"""Request paths: one canonical form for forwarding, one decoded form for matching.

A path rule is only as strong as the parser in front of it: if the proxy compares
``/admin%2Fsecret`` while the upstream serves ``/admin/secret``, the rule was decoration. So:

- ``normalize_path`` turns the request-target into the *canonical* form the proxy forwards:
  escapes of unreserved characters other than ``.`` decoded, every other escape kept with upper
  case hex, ``.``/``..`` resolved, runs of ``/`` collapsed, query and fragment cut off. It
  always refuses what no server reads one way: raw control or non-ASCII bytes, a backslash,
  broken escapes, and any segment that decodes (once or repeatedly, across ``/ \\ ;``) to a dot
  segment (``%2e%2e``, ``..;``, ``..%3B``, ``%252e%252e``).
- ``path_problem`` is asked whenever a *path rule* judges a request: it refuses escapes some
  server decodes into structure (``%2F %5C %2E %3B %3F %23``, ``%25`` i.e. double encoding),
  ``;`` parameters, escaped control bytes, and escaped non-ASCII (overlong UTF-8 such as
  ``%C0%AF`` included). A pattern may opt in with ``allow_encoded``: then only escaped control
  bytes and invalid UTF-8 are refused; an allow pattern matches the canonical form (escapes
  kept, so ``%2F`` is data inside one segment, never a separator), a deny pattern every
  ``readings`` of it (as sent, decoded once or more, ``\\`` as ``/``, ``;`` dropped...).
- ``decode_path`` is what a strict pattern matches: the canonical form fully decoded. What is
  forwarded decodes, in one step, to exactly that string, and what is left encoded can never
  change the path's structure; so whichever decoding an upstream applies, it sees the path that
  was checked.

Patterns are globs (``*`` within a segment, ``**`` across segments) or regular expressions
(``re:`` or, in nix-jail's style, regex syntax); both match the whole path, never a substring.
A *deny* pattern ignores ASCII case (``/admin/**`` also denies ``/ADMIN/x``, for servers on
case-insensitive file systems) and tries every ``readings`` of the path (``/admin./x`` is
``/admin/x`` to Windows); an allow pattern is case-sensitive and literal. Both fail closed.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

_HEX = "0123456789ABCDEFabcdef"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")
# Regex-only syntax: a path pattern containing any of these is a regular expression.
_REGEX_HINT = re.compile(r"[\\(\[{+?|$]|\.\*")
_DOT_PIECE = re.compile(r"[/\\;]")
_DOTS_ONLY = re.compile(r"^(?=.*\.)[. ]+$")  # "..", ". ", "..." — Windows drops the spaces
_ESCAPE = re.compile(r"%([0-9A-F]{2})")
# Escapes that some server decodes into path structure, with the name a user will read.
_STRUCTURAL = {
    "2F": "an encoded '/' (%2F)",
    "5C": "an encoded '\\' (%5C)",
    "2E": "an encoded '.' (%2E)",
    "3B": "an encoded ';' (%3B)",
    "3F": "an encoded '?' (%3F)",
    "23": "an encoded '#' (%23)",
    "25": "an encoded '%' (%25, double encoding)",
}


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters (not ``.``), upper-case the rest; refuse broken
    escapes."""
    out: list[str] = []
    i = 0
    while i < len(path):
        char = path[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        pair = path[i + 1 : i + 3]
        if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
            raise ValueError(f"invalid percent escape {path[i : i + 3]!r} in path")
        decoded = chr(int(pair, 16))
        out.append(decoded if decoded in _UNRESERVED else "%" + pair.upper())
        i += 3
    return "".join(out)


def _check_segment(segment: str) -> None:
    """Refuse a segment that some server turns into a dot segment: decoded once or repeatedly
    (double encoding), split at ``/``, ``\\`` or ``;`` (Tomcat's ``..;``), full-width dots
    folded, or made of dots and spaces (``.. `` is ``..`` to Windows)."""
    if segment in (".", ".."):
        return
    data = segment.encode("ascii")
    for _ in range(4):
        text = data.decode("utf-8", errors="replace")
        for form in (text, unicodedata.normalize("NFKC", text)):
            if any(_DOTS_ONLY.match(piece) for piece in _DOT_PIECE.split(form)):
                raise ValueError(
                    f"ambiguous path segment {segment!r} (a dot segment in disguise)"
                )
        decoded = unquote_to_bytes(data)
        if decoded == data:
            return
        data = decoded
    raise ValueError(f"ambiguous path segment {segment!r} (encoded too many times)")


def normalize_path(target: str) -> str:
    """The canonical form of a request-target's path, or ``ValueError``.

    ``target`` is origin-form (``/a/b?x=1``); query and fragment are dropped because rules match
    paths only. ``*`` (the OPTIONS asterisk-form) is returned as is.
    """
    if target == "*":
        return "*"
    for char in target:
        if ord(char) < 0x21 or ord(char) > 0x7E:
            raise ValueError(f"invalid character {char!r} in path")
    if "\\" in target:
        raise ValueError("backslash in path (some servers read it as '/')")
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return "/"
    if not path.startswith("/"):
        raise ValueError(f"path {target!r} does not start with '/'")
    segments = path.split("/")[1:]
    out: list[str] = []
    trailing_slash = False
    for position, raw in enumerate(segments):
        _check_segment(raw)
        segment = _decode_unreserved(raw)
        last = position == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
            trailing_slash = False
            continue
        trailing_slash = last
    result = "/" + "/".join(out)
    if trailing_slash and out:
        result += "/"
    return result


def path_problem(path: str, allow_encoded: bool = False) -> str | None:
    """Why a path rule cannot judge the canonical ``path`` unambiguously, or None."""
    if path == "*":
        return None
    for found in _ESCAPE.finditer(path):
        value = int(found[1], 16)
        if value < 0x20 or value == 0x7F:
            return f"an encoded control byte (%{found[1]})"
        if not allow_encoded and found[1] in _STRUCTURAL:
            return _STRUCTURAL[found[1]]
    if not allow_encoded and ";" in path:
        return "a ';' parameter (some servers drop what follows it)"
    raw = unquote_to_bytes(path)
    if raw.isascii():
        return None
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid or overlong UTF-8 after decoding"
    return None if allow_encoded else "non-ASCII characters after decoding"


def decode_path(path: str) -> str:
    """The canonical ``path`` fully decoded (for strict patterns; ``path_problem`` said None)."""
    return unquote_to_bytes(path).decode("utf-8", errors="replace")


def _resolve(text: str) -> str:
    """Dot segments resolved and empty segments dropped, as a lenient server would."""
    out: list[str] = []
    for segment in text.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment not in ("", "."):
            out.append(segment)
    return "/" + "/".join(out)


def _windows_name(segment: str) -> str:
    """Windows drops trailing dots and spaces of a name (``admin.`` is ``admin``)."""
    return segment if segment in (".", "..") else segment.rstrip(". ")


def _decode_once(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", errors="replace")


# Each is one thing some server does to a path before routing it; servers chain them in any
# order (IIS decodes, then reads "\" as "/", then drops ";" parameters; Tomcat drops them first).
_SERVER_STEPS = (
    _decode_once,
    lambda t: t.replace("\\", "/"),
    lambda t: "/".join(seg.split(";", 1)[0] for seg in t.split("/")),  # ;parameters
    lambda t: unicodedata.normalize("NFKC", t),  # IIS "best fit": full-width solidus …
    lambda t: "/".join(_windows_name(seg) for seg in t.split("/")),
    lambda t: re.split("[?#]", t, maxsplit=1)[0],  # a decoded ? or # ends the path
    lambda t: t.split("\x00", 1)[0],  # C strings end at NUL
)
READINGS_LIMIT = 4096


def readings(path: str) -> tuple[str, ...] | None:
    """The paths servers may read the canonical ``path`` as, for a deny pattern (it denies when
    any matches): every chain of ``_SERVER_STEPS`` in any order (the closure), dot segments
    resolved. None when there are more than ``READINGS_LIMIT`` — a deny then matches (fails
    closed)."""
    seen = {path}
    frontier = [path]
    while frontier:
        found = []
        for text in frontier:
            for step in _SERVER_STEPS:
                read = step(text)
                if read not in seen:
                    seen.add(read)
                    found.append(read)
        if len(seen) > READINGS_LIMIT:
            return None
        frontier = found
    return tuple(dict.fromkeys([path, *(_resolve(text) for text in seen)]))


def _glob_segment(segment: str) -> str:
    """Regex for one glob segment: ``**`` spans segments, ``*`` stays inside one."""
    parts: list[str] = []
    for index, chunk in enumerate(segment.split("**")):
        if index:
            parts.append(".*")
        parts.append("[^/]*".join(re.escape(piece) for piece in chunk.split("*")))
    return "".join(parts)


def _glob_to_regex(glob: str) -> str:
    """Translate a normalised glob; a whole ``**`` segment may also match no segment at all."""
    regex = ""
    for segment in glob.split("/")[1:]:
        if segment == "**":
            regex += "(?:/.*)?"
        else:
            regex += "/" + _glob_segment(segment)
    return regex or "/"


@dataclass(frozen=True)
class PathPattern:
    """One anchored path pattern; build it with ``PathPattern.parse``."""

    text: str
    kind: str  # "glob" | "regex"
    regex: re.Pattern[str]
    allow_encoded: bool = False
    deny: bool = False  # a deny pattern matches more spellings, never fewer

    @classmethod
    def parse(
        cls, text: str, *, allow_encoded: bool = False, deny: bool = False
    ) -> PathPattern:
        """Parse a glob or regex pattern; ``ValueError`` with a short reason when malformed.

        ``deny``: ASCII letters match either case, and with ``allow_encoded`` every reading of
        the escapes (``readings``) is tried."""
        flags = re.ASCII | (re.IGNORECASE if deny else 0)
        if text.startswith("re:") or text.startswith("^") or _REGEX_HINT.search(text):
            source = text[3:] if text.startswith("re:") else text
            if not source:
                raise ValueError("empty path regex")
            try:
                compiled = re.compile(source, flags)
            except re.error as exc:
                raise ValueError(f"invalid path regex {source!r}: {exc}") from None
            return cls(text, "regex", compiled, allow_encoded, deny)
        if not text.startswith("/"):
            raise ValueError(f"path pattern {text!r} must start with '/'")
        if "#" in text:
            raise ValueError(f"path pattern {text!r} must not contain '#'")
        try:
            glob = normalize_path(text)
        except ValueError as exc:
            raise ValueError(f"invalid path pattern {text!r}: {exc}") from None
        if "%2A" in glob:
            raise ValueError(f"path pattern {text!r}: write a literal '*' as a regex (re:)")
        problem = path_problem(glob, allow_encoded)
        if problem is not None:
            hint = "" if allow_encoded else " (set allow_encoded = true to match escapes)"
            raise ValueError(f"path pattern {text!r} holds {problem}{hint}")
        source = _glob_to_regex(glob if allow_encoded else decode_path(glob))
        return cls(text, "glob", re.compile(source, flags), allow_encoded, deny)

    def problem(self, path: str) -> str | None:
        """Why this pattern cannot judge the canonical ``path``, or None."""
        return path_problem(path, self.allow_encoded)

    def matches(self, path: str) -> bool:
        """``path`` must be canonical (``normalize_path``) and ``problem`` must have said None:
        a strict pattern matches the decoded path, an ``allow_encoded`` one the canonical."""
        if self.deny:  # every reading some server may make of the path
            read = readings(path)
            if read is None:  # too many to judge: a deny errs on the side of denying
                return True
            subjects = (decode_path(path), *read)
            return any(self.regex.fullmatch(subject) for subject in subjects)
        subject = path if self.allow_encoded else decode_path(path)
        return self.regex.fullmatch(subject) is not None

    def __str__(self) -> str:
        return self.text
