"""The checks of a job request's values that need more than a type: env names the cell's
machinery owns, limits against the server's maxima, cidrs that would open the server's own
networks. Pure (no files, no processes); ``compile.py`` calls them."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

from nixcell.errors import NixcellError
from nixcell.jobs.contract import JobError

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_ENV = 1000
MAX_ENV_VALUE = 128 << 10  # Linux's MAX_ARG_STRLEN: one longer string and execve fails
MAX_ENV_TOTAL = 1 << 20
LIMIT_KEYS = ("memory", "cpus", "pids", "timeout", "disk")
# Networks a client's allow_cidrs may not touch besides the address guard's own list: ranges
# that carry an IPv4 address inside them (6to4, NAT64, SIIT) and so can lead back to one.
_EMBEDDING = tuple(
    ipaddress.IPv6Network(n) for n in ("2002::/16", "64:ff9b::/96", "::ffff:0:0:0/96")
)


def shown(value: object) -> str:
    """A client's value in a message: repr (so one line), cut short."""
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."


def check_text(value: object, where: str = "request") -> None:
    """Every string anywhere in the request encodes as UTF-8: a lone surrogate (``json.loads``
    accepts ``"\\ud800"``) would otherwise fail deep inside the engine, not here in one line."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JobError(f"{where}: text must be valid Unicode (no lone surrogates)") from None
    elif isinstance(value, dict):
        for key, item in value.items():  # only the model's own field names go in messages
            check_text(key, where)
            check_text(item, str(key) if where == "request" else where)
    elif isinstance(value, list | tuple):
        for item in value:
            check_text(item, where)


def one_line(text: str, limit: int = 300) -> str:
    """One line, and short: the engine's messages may quote a client's value more than once."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def reserved_env() -> frozenset[str]:
    """Upper-cased names a request may not set: the proxy and CA variables nixcell sets (any
    spelling: Python reads ``*_proxy`` case-insensitively), and ``NIXCELL_*``."""
    from nixcell.plan import PROXY_PORT, proxy_env

    return frozenset(name.upper() for name in proxy_env(PROXY_PORT, ()))


def check_env(
    env: dict[str, str], secret: Iterable[str], credential_envs: Iterable[str]
) -> dict[str, str]:
    """The request's env, or a refusal: names a shell accepts, values without NUL and short
    enough to exec, none of nixcell's own, none a requested credential's dummy goes in."""
    if len(env) > MAX_ENV:
        raise JobError(f"env: at most {MAX_ENV} variables")
    reserved = reserved_env()
    dummies = {name.upper(): name for name in credential_envs if name}
    total = 0
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            raise JobError(f"env: {shown(name)} is not a variable name")
        upper = name.upper()
        if upper in reserved or upper.endswith("_PROXY") or upper.startswith("NIXCELL_"):
            raise JobError(f"env: {name} is set by nixcell itself (proxy, CA or NIXCELL_*)")
        if upper in dummies:
            raise JobError(f"env: {name} holds the dummy of a credential the job asked for")
        if not isinstance(value, str) or "\0" in value:
            raise JobError(f"env: {name}: a value is text without NUL bytes")
        size = len(name) + 1 + len(value.encode("utf-8", "surrogateescape"))
        if size >= MAX_ENV_VALUE:
            raise JobError(f"env: {name}: at most {MAX_ENV_VALUE >> 10} KiB per variable")
        total += size
    if total > MAX_ENV_TOTAL:
        raise JobError(f"env: at most {MAX_ENV_TOTAL >> 20} MiB in all")
    for name in secret:
        if name not in env:
            raise JobError(f"secret_env: {shown(name)} is not in env")
    return dict(env)


def _shown_limit(key: str, value: float) -> str:
    from nixcell.units import format_duration, format_size

    if key in ("memory", "disk"):
        return format_size(int(value))
    if key == "timeout":
        return format_duration(value)
    return f"{value:g}"


def check_limits(request: Any, config: Any) -> dict[str, int | float]:
    """Each limit: the request's value, else the server's default, else its maximum (a
    maximum always caps); above the maximum is refused, naming both."""
    from pydantic import ValidationError

    from nixcell.spec import Limits
    from nixcell.specmessages import describe_validation_error

    out: dict[str, int | float] = {}
    for key in LIMIT_KEYS:
        raw = getattr(request, key)
        if raw is None:
            value = config.defaults.get(key, config.maxima.get(key))
        else:
            try:
                value = getattr(Limits(**{key: raw}), key)
            except ValidationError as exc:
                message = describe_validation_error(exc, {f"{key}": key})
                raise JobError(one_line(f"{key}: {shown(raw)}: {message}")) from None
            except NixcellError as exc:  # units.py's UsageError passes through pydantic
                raise JobError(one_line(f"{key}: {shown(raw)}: {exc}")) from None
            top = config.maxima.get(key)
            if top is not None and value > top:
                raise JobError(
                    f"{key}: {shown(raw)} is above this server's maximum {_shown_limit(key, top)}"
                )
        if value is not None:
            out[key] = value
    return out


def check_cidrs(cidrs: Iterable[str]) -> None:
    """A client's cidr may only grant globally routable space: loopback, private, link-local,
    the host's own addresses and ranges embedding IPv4 are for the server's policies."""
    from nixcell.errors import PolicyError
    from nixcell.net.addresses import _V4_SPECIAL, _V6_SPECIAL
    from nixcell.net.policy import policy_from_flags

    cidrs = list(cidrs)
    if not cidrs:
        return
    try:
        rules = policy_from_flags([], [], cidrs).rules
    except PolicyError as exc:
        raise JobError(f"allow_cidrs: {' '.join(str(exc).split())}") from None
    own = _own_addresses()
    for rule, text in zip(rules, cidrs, strict=True):
        net = rule.cidr
        assert net is not None
        table = _V4_SPECIAL if net.version == 4 else (*_V6_SPECIAL, *_embedding())
        for special, label in table:
            if net.overlaps(special):  # type: ignore[arg-type]
                raise JobError(
                    f"allow_cidrs: {shown(text)} reaches {special} ({label}): only a server "
                    "policy may grant that"
                )
        hit = next((a for a in own if a.version == net.version and a in net), None)
        if hit is not None:
            raise JobError(
                f"allow_cidrs: {shown(text)} holds this server's own address: only a server "
                "policy may grant that"
            )


def _embedding() -> tuple[tuple[ipaddress.IPv6Network, str], ...]:
    return tuple((n, "an IPv6 range that embeds IPv4 addresses") for n in _EMBEDDING)


def _own_addresses() -> frozenset:
    from nixcell.net.session import own_addresses

    return own_addresses()
