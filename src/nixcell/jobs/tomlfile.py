"""Strict reading of the job service's own TOML files (``server.toml``, profiles).

Both are written by the server's admin and decide what clients' cells may do, so both are read
the same careful way: a regular file (no symlink) owned by us or root and not writable by
anyone else, every unknown key an error, every error one line ``file:line: [table] key: why``
(``TomlLines`` finds the line; ``tomllib`` keeps none).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from typing import Any, NoReturn

from nixcell.errors import NixcellError, UsageError
from nixcell.net.tomllines import TomlLines

MAX_FILE = 1 << 20  # a config or a profile is kilobytes
LIMIT_KEYS = ("memory", "cpus", "pids", "timeout", "disk")
_TOML_AT = re.compile(r"\s*\(at line (\d+), column \d+\)")

At = tuple[str | int, ...]


def type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value)) or {list: "an array", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def check_owner(st: os.stat_result, path: str) -> None:
    """Refused unless owned by this server's user or root and not writable by group/others."""
    if st.st_uid not in (os.geteuid(), 0):
        raise UsageError(f"{path}: owned by uid {st.st_uid}, not by this server or root")
    if st.st_mode & 0o022:
        raise UsageError(
            f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"not used; `chmod go-w {path}`"
        )


def read_trusted(path: str, what: str) -> str:
    """The text of ``path``; refused unless a plain file only we (or root) could have written."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: the name is a symlink
            raise UsageError(f"{path}: {what} is a symbolic link: not used") from None
        raise UsageError(f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{path}: {what} is not a regular file")
        check_owner(st, path)
        if st.st_size > MAX_FILE:
            raise UsageError(f"{path}: {what} is over {MAX_FILE >> 20} MiB")
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not valid UTF-8") from None


class TomlFile:
    """One parsed file and the means to point at its lines."""

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        text = read_trusted(path, what)
        self.lines = TomlLines(text)
        try:
            self.doc: dict[str, Any] = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            found = _TOML_AT.search(str(exc))
            at_end = "(at end of document)" in str(exc)
            line = f":{found.group(1)}" if found else f":{self.lines.last_line}" if at_end else ""
            reason = " ".join(
                _TOML_AT.sub("", str(exc)).replace("(at end of document)", "").split()
            )
            raise UsageError(f"{path}{line}: not valid TOML: {reason}") from None

    def where(self, at: At) -> str:
        keys = [k for k in at if isinstance(k, str)]
        array = len(at) > 1 and isinstance(at[1], int)
        if len(keys) >= 2 or (keys and array):
            head = f"[[{keys[0]}]]" if array else f"[{keys[0]}]"
            label = " ".join([head, ".".join(keys[1:])]).strip()
        else:
            label = keys[0] if keys else ""
        line = self.lines.line(*at)
        return f"{self.path}:{line}: {label}" if label else f"{self.path}:{line}"

    def fail(self, at: At, message: str) -> NoReturn:
        raise UsageError(f"{self.where(at)}: {' '.join(message.split())}")

    def unknown(self, table: dict[str, Any], allowed: tuple[str, ...] | dict, at: At) -> None:
        for key in table:
            if key not in allowed:
                self.fail((*at, key), f"unknown key (expected one of {', '.join(allowed)})")

    # -- values ------------------------------------------------------------------------------
    def table(self, at: At, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(at, f"must be a table, got {type_name(value)}")
        return value

    def string(self, at: At, value: object) -> str:
        if value is None:
            self.fail(at, "is required")
        if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
            self.fail(at, f"must be a one-line non-empty string, got {type_name(value)}")
        return value

    def strings(self, at: At, value: object) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.fail(at, f"must be an array of strings, got {type_name(value)}")
        return tuple(self.string(at, v) for v in value)

    def boolean(self, at: At, value: object) -> bool:
        if not isinstance(value, bool):
            self.fail(at, f"must be true or false, got {type_name(value)}")
        return value

    def integer(self, at: At, value: object, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(at, f"must be a whole number from {low} to {high}, got {value!r}")
        return value

    def parsed(self, at: At, value: object, parse) -> Any:
        """A size or duration (``units.py``): ``256M``, ``30s``, or a bare number."""
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(at, f"must be a string like 256M or 30s, got {type_name(value)}")
        try:
            return parse(value, what=str(at[-1]))
        except NixcellError as exc:
            self.fail(at, str(exc))

    def path_value(self, at: At, value: object) -> str:
        """An absolute path, or one relative to this file's directory."""
        text = self.string(at, value)
        base = os.path.dirname(os.path.abspath(self.path))
        return os.path.normpath(os.path.join(base, os.path.expanduser(text)))

    def limits(self, at: At, value: object) -> dict[str, int | float]:
        """``memory cpus pids timeout disk`` checked and normalised as ``nixcell run`` does
        (bytes, CPUs, processes, seconds, bytes)."""
        from pydantic import ValidationError

        from nixcell.spec import Limits
        from nixcell.specmessages import describe_validation_error

        table = self.table(at, value)
        self.unknown(table, LIMIT_KEYS, at)
        out: dict[str, int | float] = {}
        for key, raw in table.items():
            try:
                parsed = getattr(Limits(**{key: raw}), key)
            except ValidationError as exc:
                self.fail((*at, key), describe_validation_error(exc, {}))
            except NixcellError as exc:  # units.py's UsageError passes through pydantic
                self.fail((*at, key), str(exc))
            out[key] = parsed
        return out
