"""An independent reader and evaluator of SBPL profiles, for the tests of sandbox/macos.py.

The reader reads s-expressions the way sandbox-exec's Scheme reader does: ``;`` comments to the
end of the line (outside strings), ``"…"`` strings where a backslash takes the next character
as it is, ``#"…"`` regex literals, symbols and numbers. A string comes back as ``Text``.

The evaluator answers "is this operation on this path allowed?" with SBPL's documented rule:
``(deny default)`` first, then the last rule that matches wins. It knows the filters the
profiles use (literal, subpath, the network and name filters); an unknown filter is an error.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Text:
    value: str


@dataclass(frozen=True)
class Regex:
    value: str


class ReadError(ValueError):
    pass


def read(source: str) -> list:
    """Every top-level form of ``source``: lists of symbols (str), ints, Text, Regex, lists."""
    forms: list = []
    stack: list[list] = []
    i = 0
    while i < len(source):
        c = source[i]
        if c in " \t\n\r":
            i += 1
        elif c == ";":
            end = source.find("\n", i)
            i = len(source) if end < 0 else end + 1
        elif c == "(":
            stack.append([])
            i += 1
        elif c == ")":
            if not stack:
                raise ReadError(f"unbalanced ) at {i}")
            done = stack.pop()
            (stack[-1] if stack else forms).append(done)
            i += 1
        elif c == '"' or source.startswith('#"', i):
            regex = c == "#"
            value, i = _string(source, i + (2 if regex else 1))
            (stack[-1] if stack else forms).append(Regex(value) if regex else Text(value))
        else:
            j = i
            while j < len(source) and source[j] not in ' \t\n\r();"':
                j += 1
            token = source[i:j]
            atom: object = int(token) if token.isdigit() else token
            (stack[-1] if stack else forms).append(atom)
            i = j
    if stack:
        raise ReadError("unbalanced (")
    return forms


def _string(source: str, i: int) -> tuple[str, int]:
    out = []
    while i < len(source):
        c = source[i]
        if c == "\\":
            if i + 1 >= len(source):
                raise ReadError("a backslash ends the profile")
            out.append(source[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ReadError("unterminated string")


def texts(form) -> list[str]:
    """Every string literal in a form, depth first."""
    if isinstance(form, Text):
        return [form.value]
    if isinstance(form, list):
        return [t for item in form for t in texts(item)]
    return []


# -- evaluation ---------------------------------------------------------------------------------


def _op_matches(pattern: str, op: str) -> bool:
    if pattern.endswith("*"):
        return op.startswith(pattern[:-1])
    return pattern == op


def _filter_matches(flt: list, target: str) -> bool:
    kind = flt[0]
    if kind == "literal":
        return target == flt[1].value
    if kind == "subpath":
        top = flt[1].value
        return target == top or target.startswith(top.rstrip("/") + "/")
    if kind in ("remote", "local"):  # (remote ip "localhost:3128"), (remote unix-socket (...))
        if flt[1] == "ip":
            return target == f"ip:{flt[2].value}"
        if flt[1] == "unix-socket":
            return target.startswith("unix:") and _filter_matches(flt[2], target[5:])
    if kind in ("global-name", "sysctl-name"):
        return target == flt[1].value
    if kind == "sysctl-name-prefix":
        return target.startswith(flt[1].value)
    if kind == "target":
        return target == "same-sandbox"
    if kind == "socket-domain":
        return target == flt[1]
    raise ValueError(f"unknown filter {flt!r}")


def allowed(profile: list, op: str, target: str = "") -> bool:
    """Whether the profile allows ``op`` on ``target`` (a path; ``ip:HOST:PORT``;
    ``unix:PATH``; a service or sysctl name): the last matching rule decides."""
    if profile[0] != ["version", 1] or profile[1] != ["deny", "default"]:
        raise ValueError("a profile starts (version 1) (deny default)")
    verdict = False
    for rule in profile[2:]:
        action, rest = rule[0], rule[1:]
        ops = [x for x in rest if isinstance(x, str)]
        filters = [x for x in rest if isinstance(x, list)]
        if action not in ("allow", "deny") or not ops:
            raise ValueError(f"not a rule: {rule!r}")
        if not any(_op_matches(p, op) for p in ops):
            continue
        if filters and not any(_filter_matches(f, target) for f in filters):
            continue
        verdict = action == "allow"
    return verdict
