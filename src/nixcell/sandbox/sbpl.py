"""SBPL (sandbox-exec's profile language) as data: forms built in Python, rendered in one place.

A profile is a list of s-expressions. Every path in one comes from a plan, and a plan's paths come
from configs and flags, so no path is ever pasted into profile text: a path is a ``Str`` atom, and
``render`` alone turns it into a string literal. SBPL reads string literals like Scheme does
(TinyScheme underneath): ``\\`` and ``"`` are escaped with a backslash, anything else between the
quotes is the string itself. Control characters are refused rather than escaped: the reader's
escapes for them are not documented, and a path holding a newline is not worth guessing for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nixcell.errors import SpecError

_SYMBOL = re.compile(r"^[A-Za-z*][A-Za-z0-9_*.-]*$")


@dataclass(frozen=True)
class Str:
    """A string literal: a path, a service name, a sysctl name."""

    text: str


# A form: (symbol, *items); an item is a symbol (str), a Str, an int or another form.
Form = tuple


def quote(text: str) -> str:
    """``text`` as an SBPL string literal that reads back as exactly ``text``."""
    bad = next((c for c in text if _unwritable(c)), None)
    if bad is not None:
        shown = text.encode("unicode_escape", "backslashreplace").decode()
        raise SpecError(
            f"path {shown} cannot be written into a macOS sandbox profile: it holds {bad!r} "
            "(control characters and lone surrogates are refused)"
        )
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unwritable(char: str) -> bool:
    code = ord(char)
    # C0 controls, DEL and C1 controls; lone surrogates cannot even be encoded
    return code < 0x20 or 0x7F <= code < 0xA0 or 0xD800 <= code < 0xE000


def _atom(item: object) -> str:
    if isinstance(item, Str):
        return quote(item.text)
    if isinstance(item, bool):  # (an int to Python)
        raise TypeError("SBPL has no booleans here")
    if isinstance(item, int):
        return str(item)
    if isinstance(item, str):
        if not _SYMBOL.match(item):  # a symbol is code: never made from data
            raise ValueError(f"not an SBPL symbol: {item!r}")
        return item
    raise TypeError(f"not an SBPL atom: {item!r}")


def render(form: Form) -> str:
    """One form as text: on one line, or a rule with its filters one per line."""
    split = next((i for i, x in enumerate(form) if isinstance(x, tuple)), len(form))
    if any(not isinstance(x, tuple) for x in form[split:]):
        raise ValueError("a form's atoms come before its subforms")
    head = [_atom(x) for x in form[:split]]
    inner = [render(sub) for sub in form[split:]]
    if len(inner) <= 1 and "\n" not in "".join(inner) and len(" ".join(head + inner)) < 90:
        return "(" + " ".join(head + inner) + ")"
    lines = "\n".join("  " + line for text in inner for line in text.split("\n"))
    return "(" + " ".join(head) + "\n" + lines + ")"


def comment(text: str) -> str:
    """A comment line; its text is ours (never a path: those are quoted where they appear)."""
    if any(_unwritable(c) for c in text):  # a newline would end the comment
        raise ValueError("a comment is one line without control characters")
    return f"; {text}" if text else ";"
