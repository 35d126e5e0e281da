"""Request paths, normalised one way before any path pattern sees them.

A path rule is only as strong as the parser in front of it: if the proxy compares ``/repos/..%2e``
while the upstream serves ``/admin``, the rule was decoration. So the path is reduced to one
canonical form first — unreserved escapes decoded, ``.``/``..`` resolved *after* decoding, runs
of ``/`` collapsed — and anything whose meaning depends on the upstream's own parser (control
characters, broken escapes, a backslash, ``..;``, an encoded slash next to a dot segment) is
refused instead of guessed at. ``%2F`` stays encoded: it is data, not a separator.

Patterns are globs (``*`` within a segment, ``**`` across segments) or, in nix-jail's style,
regular expressions; both match the whole normalised path, never a substring.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HEX = "0123456789ABCDEFabcdef"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Regex-only syntax: a path pattern containing any of these is a regular expression.
_REGEX_HINT = re.compile(r"[\\(\[{+?|$]|\.\*")
_ENCODED_SEPARATOR = re.compile(r"%2F|%5C")


def _decode_unreserved(path: str) -> str:
    """Decode escapes of unreserved characters, upper-case the rest; refuse broken escapes."""
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
    """Refuse segments that some upstream parser would turn into a dot segment."""
    if ";" in segment and segment.split(";", 1)[0] in (".", ".."):
        raise ValueError(f"ambiguous path segment {segment!r} (dot segment with parameters)")
    if _ENCODED_SEPARATOR.search(segment):
        pieces = _ENCODED_SEPARATOR.split(segment)
        if any(piece in (".", "..") for piece in pieces):
            raise ValueError(f"ambiguous path segment {segment!r} (encoded slash next to a dot)")


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
    segments = _decode_unreserved(path).split("/")[1:]
    out: list[str] = []
    trailing_slash = False
    for position, segment in enumerate(segments):
        _check_segment(segment)
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

    @classmethod
    def parse(cls, text: str) -> PathPattern:
        """Parse a glob or regex pattern; ``ValueError`` with a short reason when malformed."""
        if text.startswith("re:") or text.startswith("^") or _REGEX_HINT.search(text):
            source = text[3:] if text.startswith("re:") else text
            if not source:
                raise ValueError("empty path regex")
            try:
                compiled = re.compile(source)
            except re.error as exc:
                raise ValueError(f"invalid path regex {source!r}: {exc}") from None
            return cls(text, "regex", compiled)
        if not text.startswith("/"):
            raise ValueError(f"path pattern {text!r} must start with '/'")
        if "#" in text:
            raise ValueError(f"path pattern {text!r} must not contain '#'")
        try:
            glob = normalize_path(text)
        except ValueError as exc:
            raise ValueError(f"invalid path pattern {text!r}: {exc}") from None
        return cls(text, "glob", re.compile(_glob_to_regex(glob)))

    def matches(self, path: str) -> bool:
        """``path`` must already be normalised (``normalize_path``)."""
        return self.regex.fullmatch(path) is not None

    def __str__(self) -> str:
        return self.text
