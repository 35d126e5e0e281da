"""``--learn``: record what a cell asked for, then write the smallest policy that allows it.

Writing a policy by trial and error (run, read the denial, add a flag, run again) is slow, and
people give up and allow ``*``. In learn mode the proxy records every request and this module
turns the record into ``[[rules]]`` a person can review: one allow rule per host (and per
non-web port), exact host names, the methods actually used, and paths widened only to their
first one or two segments. The output is ordinary policy TOML that ``load_policy`` reads back.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from nixcell.net.policy import DEFAULT_PORTS, Request, host_port_text
from nixcell.net.urlpath import PathPattern, decode_path, normalize_path, path_problem

_MAX_PREFIX_SEGMENTS = 2


@dataclass(frozen=True)
class Record:
    """One distinct request (method, URL, status), how often it was seen and when first."""

    request: Request
    status: int | None
    first_seen: dt.datetime
    count: int = 1


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Recorder:
    """Collects requests during a run; identical requests are counted, not stored again, so a
    long session costs memory per distinct request only. Single-threaded (the proxy's loop)."""

    def __init__(self, clock: Callable[[], dt.datetime] = _utc_now) -> None:
        self._clock = clock
        self._seen: dict[tuple[Request, int | None], Record] = {}

    def record(self, req: Request, status: int | None) -> None:
        """Note ``req`` (host and path already normalised); ``status`` None = no response."""
        req = Request(req.method.upper(), req.scheme, req.host, req.port, req.path)
        key = (req, status)
        old = self._seen.get(key)
        if old is None:
            self._seen[key] = Record(req, status, self._clock())
        else:
            self._seen[key] = Record(req, status, old.first_seen, old.count + 1)

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(self._seen.values())

    def __iter__(self) -> Iterator[Record]:
        """So ``render_policy(recorder)`` works as well as ``render_policy(recorder.records)``."""
        return iter(self.records)

    def __len__(self) -> int:
        return len(self._seen)

    def render(self) -> str:
        return render_policy(self.records)


def _toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes are a subset of TOML's)."""
    return json.dumps(text, ensure_ascii=True)


def _is_literal_glob(text: str, encoded: bool) -> bool:
    """True when ``text`` reads as a glob whose only wildcard is a trailing ``/**``."""
    body = text.removesuffix("/**")
    if "*" in body:
        return False
    try:
        parsed = PathPattern.parse(text, allow_encoded=encoded)
        return parsed.kind == "glob" and normalize_path(body) == body
    except ValueError:
        return False


def _literal(path: str, encoded: bool) -> str:
    """What a regex pattern is matched against: the canonical path (``allow_encoded``) or the
    decoded one (net/urlpath.py)."""
    return re.escape(path if encoded else decode_path(path))


def _exact(path: str, encoded: bool) -> str:
    """A pattern matching ``path`` only: the path itself, or an escaped regex if it would read
    as a wildcard or regex (``*``, ``(``, ``+`` …)."""
    if _is_literal_glob(path, encoded):
        return path
    return "re:" + _literal(path, encoded)


def _under(segments: list[str], encoded: bool) -> str:
    """A pattern for the directory ``/seg/seg`` and everything below it."""
    prefix = "/" + "/".join(segments)
    if _is_literal_glob(prefix + "/**", encoded):
        return prefix + "/**"
    return "re:" + _literal(prefix, encoded) + "(?:/.*)?"


def needs_encoded(paths: Iterable[str]) -> bool:
    """True when a strict path rule would refuse one of ``paths`` (``%2F``, ``;`` …): the
    learned rule then says ``allow_encoded = true`` so it lets through what the cell used."""
    return any(path_problem(path) is not None for path in paths)


def path_patterns(paths: Iterable[str]) -> list[str]:
    """Few, narrow patterns covering ``paths``: a path alone under its first segment stays
    exact; several become ``/<common first one or two segments>/**``."""
    paths = list(paths)
    encoded = needs_encoded(paths)
    groups: dict[str, set[str]] = {}
    for path in paths:
        first = path.split("/")[1] if path.startswith("/") else path
        groups.setdefault(first, set()).add(path)
    out: set[str] = set()
    for group in groups.values():
        if len(group) == 1:
            out.add(_exact(next(iter(group)), encoded))
            continue
        split = [p.split("/")[1:] for p in group]
        common: list[str] = []
        for parts in zip(*split, strict=False):
            if len(set(parts)) != 1 or parts[0] == "":
                break
            common.append(parts[0])
        out.add(_under(common[:_MAX_PREFIX_SEGMENTS], encoded))
    return sorted(out)


@dataclass
class _Group:
    host: str
    port: int | None  # None: the default web ports, which a rule without `port` covers
    first_seen: dt.datetime
    count: int = 0
    schemes: set[str] = field(default_factory=set)
    methods: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    statuses: set[str] = field(default_factory=set)


def _groups(records: Iterable[Record]) -> list[_Group]:
    groups: dict[tuple[str, int | None], _Group] = {}
    for rec in records:
        req = rec.request
        port = None if req.port in DEFAULT_PORTS else req.port
        group = groups.setdefault((req.host, port), _Group(req.host, port, rec.first_seen))
        group.count += rec.count
        group.first_seen = min(group.first_seen, rec.first_seen)
        group.schemes.add(f"{req.scheme}:{req.port}")
        group.methods.add(req.method.upper())
        group.paths.add(req.path)
        group.statuses.add("no response" if rec.status is None else str(rec.status))
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], k[1] or 0))]


def render_policy(records: Iterable[Record]) -> str:
    """Policy TOML allowing exactly the recorded requests (paths widened to short prefixes)."""
    groups = _groups(records)
    lines = [
        "# Written by nixcell --learn: one allow rule per host the cell used.",
        "# Review before use; paths are widened to their first one or two segments.",
    ]
    if not groups:
        lines.append("# The cell made no requests: this policy denies everything.")
    for group in groups:
        plural = "request" if group.count == 1 else "requests"
        seen = group.first_seen.isoformat(timespec="seconds")
        schemes, statuses = ", ".join(sorted(group.schemes)), ", ".join(sorted(group.statuses))
        lines += [
            "",
            f"# {host_port_text(group.host, group.port)}: {group.count} {plural}, first seen "
            f"{seen}; {schemes}; status {statuses}",
            "[[rules]]",
            'action = "allow"',
            f"methods = [{', '.join(_toml_str(m) for m in sorted(group.methods))}]",
        ]
        if group.port is not None:
            lines.append(f"port = {group.port}")
        patterns = path_patterns(group.paths)
        lines += [
            "[rules.pattern]",
            f"host = {_toml_str(group.host)}",
            f"path = [{', '.join(_toml_str(p) for p in patterns)}]",
        ]
        if needs_encoded(group.paths):
            lines.append("allow_encoded = true")
    return "\n".join(lines) + "\n"
