"""Line numbers for TOML keys, which ``tomllib`` does not keep.

A policy error is only useful when it points at the line to fix, and ``tomllib`` reports lines
for syntax errors only. ``TomlLines`` scans the raw text once and remembers where each table
header and key appears, addressed the way the parsed data is: ``("rules", 2, "pattern", "host")``
is the ``host`` key of the third ``[[rules]]`` table's ``[rules.pattern]``. It is a locator for
messages, not a parser: it runs after ``tomllib`` accepted the text, and when it cannot place a
key (inside an inline table, say) it answers with the nearest enclosing line it knows.
"""

from __future__ import annotations

import json

Key = tuple[str | int, ...]


def _parse_keys(text: str, terminator: str) -> list[str]:
    """The dotted key at the start of ``text``, up to ``terminator`` outside quotes."""
    keys: list[str] = []
    buf = ""
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':
            end = i + 1
            while end < len(text) and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            raw = text[i + 1 : end]
            try:
                buf += json.loads('"' + raw + '"')
            except ValueError:
                buf += raw
            i = end + 1
            continue
        if char == "'":
            end = text.find("'", i + 1)
            end = len(text) if end < 0 else end
            buf += text[i + 1 : end]
            i = end + 1
            continue
        if char == ".":
            keys.append(buf)
            buf = ""
        elif char == terminator:
            break
        elif not char.isspace():
            buf += char
        i += 1
    keys.append(buf)
    return keys


def _scan_value(text: str, multiline: str | None, depth: int) -> tuple[str | None, int]:
    """Track open multi-line strings and brackets so their inner lines are not read as keys."""
    i = 0
    while i < len(text):
        if multiline is not None:
            end = text.find(multiline, i)
            if end < 0:
                return multiline, depth
            i = end + 3
            while i < len(text) and text[i] == multiline[0]:
                i += 1
            multiline = None
            continue
        char = text[i]
        if char == "#":
            break
        if text.startswith('"""', i) or text.startswith("'''", i):
            multiline = text[i : i + 3]
            i += 3
            continue
        if char == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif char == "'":
            end = text.find("'", i + 1)
            i = len(text) if end < 0 else end
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        i += 1
    return multiline, depth


class TomlLines:
    """Where each table and key of a TOML document starts (1-based line numbers)."""

    def __init__(self, text: str) -> None:
        self._lines: dict[Key, int] = {}
        self._counts: dict[Key, int] = {}
        self.last_line = max(1, len(text.splitlines()))
        current: Key = ()
        multiline: str | None = None
        depth = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            if multiline is not None or depth > 0:
                multiline, depth = _scan_value(raw, multiline, depth)
                continue
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("[["):
                keys = _parse_keys(line[2:], "]")
                path = (*self._concrete(keys[:-1]), keys[-1])
                index = self._counts.get(path, -1) + 1
                self._counts[path] = index
                current = (*path, index)
                self._lines.setdefault(path, lineno)
                self._lines[current] = lineno
            elif line.startswith("["):
                current = self._concrete(_parse_keys(line[1:], "]"))
                self._lines.setdefault(current, lineno)
            else:
                keys = _parse_keys(line, "=")
                for size in range(1, len(keys) + 1):
                    self._lines.setdefault((*current, *keys[:size]), lineno)
                _, _, value = line.partition("=")
                multiline, depth = _scan_value(value, None, 0)

    def _concrete(self, keys: list[str]) -> Key:
        """Resolve a header's dotted key to a path, indexing into arrays of tables seen so far."""
        path: Key = ()
        for key in keys:
            path = (*path, key)
            if path in self._counts:
                path = (*path, self._counts[path])
        return path

    def line(self, *path: str | int) -> int:
        """The line of ``path``, else of its nearest known ancestor, else 1."""
        key: Key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return 1
