"""Reading nix-jail policy TOML (plus nixcell's extensions) into a ``Policy``.

Strict on purpose: an unknown key, a misspelt action or a pattern that does not compile is an
error naming ``file:line``, because a typo in a security policy must not silently widen or narrow
it. ``tomllib`` keeps no positions for values, so ``TomlLines`` finds the line of each key.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from nixcell.errors import PolicyError
from nixcell.net.addresses import canonical_network
from nixcell.net.hosts import BadHost, HostPattern, normalize_host
from nixcell.net.policy import TOKEN, IPNetwork, Policy, Rule, numbered
from nixcell.net.tomllines import TomlLines
from nixcell.net.urlpath import PathPattern

_T = TypeVar("_T")
_RULE_KEYS = ("action", "credential", "methods", "port", "pattern")
_PATTERN_KEYS = ("host", "cidr", "path", "allow_encoded", "methods", "port")


def _methods(value: object) -> frozenset[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError("methods must be a non-empty list of strings")
    for item in items:
        if not isinstance(item, str) or not TOKEN.fullmatch(item):
            raise ValueError(f"invalid method {item!r}")
    return frozenset(item.upper() for item in items)


def _ports(value: object) -> frozenset[int]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("port must be a number or a non-empty list of numbers")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not 0 < item < 65536:
            raise ValueError(f"invalid port {item!r} (expected 1-65535)")
    return frozenset(items)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read a policy TOML file; every problem is a one-line ``PolicyError`` naming file:line."""
    from nixcell.userfile import read_text

    name = os.fspath(path)
    return parse_policy(read_text(name, "policy file", error=PolicyError), name)


def parse_policy(text: str, name: str) -> Policy:
    """Parse policy TOML held in memory; ``name`` is used in messages and rule origins."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(_syntax_message(name, str(exc), text)) from None
    return _Reader(name, text).read(doc)


def _syntax_message(name: str, message: str, text: str) -> str:
    """tomllib's ``Reason (at line X, column Y)`` as ``file:X: reason (column Y)``."""
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message, re.DOTALL)
    if found:
        reason, line, column = found.groups()
        return f"{name}:{line}: {reason[:1].lower()}{reason[1:]} (column {column})"
    found = re.fullmatch(r"(.*) \(at end of document\)", message, re.DOTALL)
    if found:
        line = max(1, len(text.splitlines()))
        return f"{name}:{line}: {found.group(1)[:1].lower()}{found.group(1)[1:]} (at end of file)"
    return f"{name}: {' '.join(message.split())}"


class _Reader:
    """Validates a parsed policy document, pointing each error at its line."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.lines = TomlLines(text)

    def fail(self, at: tuple[str | int, ...], message: str) -> NoReturn:
        line = self.lines.line(*at)
        raise PolicyError(f"{self.name}:{line}: {' '.join(message.splitlines())}")

    def unknown(self, table: dict[str, Any], allowed: tuple[str, ...], at: tuple) -> None:
        for key in table:
            if key not in allowed:
                self.fail((*at, key), f"unknown key '{key}' (expected {', '.join(allowed)})")

    def read(self, doc: dict[str, Any]) -> Policy:
        self.unknown(doc, ("rules", "resolve", "credentials"), ())
        rules = doc.get("rules", [])
        if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
            self.fail(("rules",), "'rules' must be an array of tables ([[rules]])")
        parsed = [self.rule(i, table) for i, table in enumerate(rules)]
        resolve = self.resolve(doc.get("resolve", {}))
        credentials = doc.get("credentials", [])
        if not isinstance(credentials, list) or not all(isinstance(c, dict) for c in credentials):
            self.fail(("credentials",), "'credentials' must be an array of tables")
        creds = tuple(
            {**c, "_line": self.lines.line("credentials", i), "_file": self.name}
            for i, c in enumerate(credentials)
        )
        from nixcell.net.credsource import parse_credentials

        parse_credentials(creds, self.name)  # every table, used by --credential or not
        return Policy(numbered(parsed), resolve, creds, self.name)

    def rule(self, i: int, table: dict[str, Any]) -> Rule:
        at: tuple[str | int, ...] = ("rules", i)
        self.unknown(table, _RULE_KEYS, at)
        action = table.get("action")
        if action is None:
            self.fail(at, f"rule {i + 1} has no action")
        if action not in ("allow", "deny"):
            self.fail((*at, "action"), f'unknown action {action!r} (expected "allow" or "deny")')
        pattern = table.get("pattern")
        if pattern is None:
            self.fail(at, f"rule {i + 1} has no [rules.pattern] table")
        if not isinstance(pattern, dict):
            self.fail((*at, "pattern"), "'pattern' must be a table")
        pat: tuple[str | int, ...] = (*at, "pattern")
        self.unknown(pattern, _PATTERN_KEYS, pat)
        for key in ("methods", "port"):
            if key in table and key in pattern:
                self.fail((*pat, key), f"'{key}' given both in the rule and in its pattern")
        host = cidr = None
        if ("host" in pattern) == ("cidr" in pattern):
            self.fail(pat, "a pattern needs exactly one of 'host' and 'cidr'")
        if "host" in pattern:
            host = self.value((*pat, "host"), pattern["host"], _host_pattern)
        else:
            cidr = self.value((*pat, "cidr"), pattern["cidr"], _cidr)
        paths = None
        encoded = pattern.get("allow_encoded", False)
        if not isinstance(encoded, bool):
            self.fail((*pat, "allow_encoded"), "allow_encoded must be true or false")
        if encoded and "path" not in pattern:
            self.fail((*pat, "allow_encoded"), "allow_encoded needs a 'path' in the same pattern")
        if "path" in pattern:
            paths = self.value(
                (*pat, "path"),
                pattern["path"],
                lambda raw: _paths(raw, allow_encoded=encoded, deny=action == "deny"),
            )
        methods = ports = None
        for where in (table, pattern):
            key_at = at if where is table else pat
            if "methods" in where:
                methods = self.value((*key_at, "methods"), where["methods"], _methods)
            if "port" in where:
                ports = self.value((*key_at, "port"), where["port"], _ports)
        credential = table.get("credential")
        if credential is not None:
            if not isinstance(credential, str) or not credential:
                self.fail((*at, "credential"), "credential must be a non-empty string")
            if action == "deny":
                self.fail((*at, "credential"), "a deny rule cannot carry a credential")
        origin = f"{self.name}:{self.lines.line(*at)}"
        return Rule(action, host, cidr, ports, methods, paths, credential, origin)

    def value(self, at: tuple[str | int, ...], raw: object, parse: Callable[[object], _T]) -> _T:
        try:
            return parse(raw)
        except ValueError as exc:
            self.fail(at, str(exc))

    def resolve(self, table: object) -> dict[str, tuple[str, ...]]:
        if not isinstance(table, dict):
            self.fail(("resolve",), "'resolve' must be a table of host = address(es)")
        out: dict[str, tuple[str, ...]] = {}
        for raw_host, value in table.items():
            at = ("resolve", raw_host)
            try:
                host = normalize_host(raw_host)
            except BadHost as exc:
                self.fail(at, str(exc))
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not items:
                self.fail(at, f"{raw_host}: expected an IP address or a list of them")
            addresses = []
            for item in items:
                try:
                    addresses.append(str(ipaddress.ip_address(item)))
                except ValueError:
                    self.fail(at, f"{raw_host}: {item!r} is not an IP address")
            out[host] = tuple(addresses)
        return out


def _host_pattern(value: object) -> HostPattern:
    if not isinstance(value, str):
        raise ValueError("host must be a string")
    return HostPattern.parse(value, nix_jail=True)


def _cidr(value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError("cidr must be a string")
    return canonical_network(value.strip())


def _paths(value: object, *, allow_encoded: bool, deny: bool) -> tuple[PathPattern, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise ValueError("path must be a string or a non-empty list of strings")
    return tuple(
        PathPattern.parse(p, allow_encoded=allow_encoded, deny=deny) for p in items
    )
