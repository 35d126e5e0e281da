"""CellSpec validation errors in the words the user wrote: a flag or a config key, never a
field of ours (``pass_env``, ``mounts.target``) nor pydantic's wording."""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pydantic import ValidationError

# What a user wrote for each CellSpec field, so that no message names a field of ours
# (``pass_env``, ``mounts.target``). Fronts with other spellings (config keys) pass their own.
CLI_NAMES: dict[str, str] = {
    "command": "COMMAND",
    "packages": "-p/--package",
    "nixpkgs": "--nixpkgs",
    "env": "-e/--env",
    "pass_env": "--pass-env",
    "workdir": "--workdir",
    "cwd": "--cwd",
    "mounts": "--bind/--ro-bind",
    "hide": "--hide",
    "limits": "a limit",
    "limits.memory": "--memory",
    "limits.cpus": "--cpus",
    "limits.pids": "--pids",
    "limits.timeout": "--timeout",
    "limits.disk": "--disk",
    "hardening_profiles": "--hardening-profile",
    "network": "the network flags",
    "network.allow_hosts": "--allow-host",
    "network.deny_hosts": "--deny-host",
    "network.allow_cidrs": "--allow-cidr",
    "network.policy_files": "--policy",
    "network.credentials": "--credential",
    "network.upstream_ca": "--upstream-ca",
    "network.resolve": "--resolve",
    "network.audit": "--audit",
    "network.learn": "--learn",
}
# pydantic's own wording, by error type, in words a user reads
_PLAIN = {
    "too_short": "needs at least one value",
    "missing": "is required",
    "extra_forbidden": "is not a known setting",
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a table of names and values",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
}


_NAMES_A_FLAG = re.compile(r"(^|\s)--?[a-z]")


def describe_validation_error(
    exc: ValidationError,
    names: dict[str, str] | None = None,
    fields: dict[str, object] | None = None,
) -> str:
    """The first error as one line naming what the user wrote, never a field of ours."""
    names = CLI_NAMES if names is None else names
    err = exc.errors()[0]
    loc = [p for p in err.get("loc", ()) if isinstance(p, str | int)]
    msg = _PLAIN.get(str(err.get("type")))
    if msg is None:
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        cause = (err.get("ctx") or {}).get("error")
        if cause is not None and str(cause):
            msg = str(cause)
    what = _user_name(loc, names, fields or {})
    if what is None or _NAMES_A_FLAG.search(msg) or f"{what.lower()} " in msg.lower():
        return msg
    return f"{what}: {msg}"


def _user_name(
    loc: list[str | int], names: dict[str, str], fields: dict[str, object]
) -> str | None:
    """The flag or key for a pydantic location; --bind vs --ro-bind from the mount itself."""
    keys = [p for p in loc if isinstance(p, str)]
    if keys[:1] == ["mounts"] and names is CLI_NAMES and len(loc) > 1:
        try:
            mount = fields["mounts"][loc[1]]  # type: ignore[index]
            return "--bind" if mount.get("writable") else "--ro-bind"  # type: ignore[union-attr]
        except (KeyError, IndexError, TypeError, AttributeError):
            return names.get("mounts")
    for cut in range(len(keys), 0, -1):
        found = names.get(".".join(keys[:cut]))
        if found is not None:
            return found
    return None
