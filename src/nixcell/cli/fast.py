"""The warm fast path of ``nixcell run``: a cached plan, executed without click or pydantic.

Planning is a pure function of the flags, the resolved closure and a few host facts. So when the
same flags ran before (same directory, same user, same package sources), the plan from last time is
the plan for now, with only the command swapped. Loading it skips importing click and pydantic
(~150 ms here), which is most of a cold CLI start. Anything unusual (no ``--``, --dry-run,
--pass-env, a global flag, a vanished closure or mount source) falls through to the normal path.
A cached plan is a whole bwrap argv: it is used only when this nixcell sealed it (sealed.py), in
a private cache dir; anything else is logged and re-derived by the normal path.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

TYPE_CHECKING = False  # not `import typing`: it costs CLI start-up time

if TYPE_CHECKING:
    from nixcell.plan import Plan

_NOT_CACHED = {
    "--dry-run",
    "--json",
    "--pass-env",
    "-h",
    "--help",
    "-v",
    "--verbose",
    "--learn",
    "--learn-output",
}
# Flags naming files whose contents shape the cell: their stats join the cache key.
_FILE_FLAGS = {"--policy", "--upstream-ca"}
_KEY_ENV = (
    "TERM",
    "NIX_PATH",
    "NIXCELL_HOME",
    "NIXCELL_OFFLINE_DIR",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "XDG_DATA_HOME",
    "HOME",
    "USER",
)
_pending: Path | None = None


def _key_file(options: list[str]) -> Path | None:
    """The plan cache file for these flags; None when they name a file that is missing."""
    from nixcell import __version__, paths
    from nixcell.nix.pins import host_has_nixpkgs

    stamps = _file_stamps(options)
    if stamps is None:
        return None

    try:
        offline_stamp = os.stat(paths.offline_dir() / "set.json").st_mtime_ns
    except OSError:
        offline_stamp = 0
    material = json.dumps(
        [
            __version__,
            options,
            os.getcwd(),
            os.getuid(),
            os.getgid(),
            [os.environ.get(k) for k in _KEY_ENV],
            offline_stamp,
            host_has_nixpkgs(),
            stamps,
        ]
    )
    from nixcell.hashing import digest

    key = digest(material)[:32]
    from nixcell import sealed

    return sealed.cache_file("plans", f"{key}.json")


def _file_stamps(options: list[str]) -> list[object] | None:
    """Stats of policy/CA files named by the flags, and of the proxy CA when there is a network."""
    from nixcell import paths

    stamps: list[object] = []
    files = [v for f, v in itertools.pairwise(options) if f in _FILE_FLAGS]
    files += [o.split("=", 1)[1] for o in options if "=" in o and o.split("=")[0] in _FILE_FLAGS]
    if files or any(o.startswith(("--allow-", "--deny-host", "--credential")) for o in options):
        files.append(str(paths.state_dir() / "ca" / "ca.pem"))
    for name in files:
        try:
            st = os.stat(name)
            stamps.append([os.path.abspath(name), st.st_mtime_ns, st.st_size, st.st_ino])
        except OSError:
            return None  # a missing file: the normal path reports it (or makes the CA)
    return stamps


def _split(args: list[str]) -> tuple[list[str], list[str]] | None:
    if not args or args[0] != "run" or "--" not in args:
        return None
    cut = args.index("--")
    options, command = args[1:cut], args[cut + 1 :]
    if not command or not command[0] or _NOT_CACHED.intersection(options):
        return None
    if any(o.startswith(("--pass-env=", "--json=", "--dry-run=")) for o in options):
        return None
    return options, command


def _still_valid(plan: Plan) -> bool:
    from nixcell.plancheck import stale_reason

    reason = stale_reason(plan)
    if reason is not None:
        import logging

        logging.getLogger(__name__).debug("cached plan not used: %s", reason)
    return reason is None


def try_fast_run(args: list[str]) -> int | None:
    """Run from a cached plan and return the exit code, or None to take the normal path."""
    global _pending
    split = _split(args)
    if split is None:
        return None
    options, command = split
    key_file = _key_file(options)
    if key_file is None:
        return None
    from nixcell import sealed

    payload = sealed.load("plans", key_file)  # None unless this nixcell sealed it (logged)
    _pending = key_file
    if payload is None:
        return None
    from nixcell.plan import Plan

    try:
        plan = Plan.from_json(json.loads(payload)).with_command(command)
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    if not _still_valid(plan):
        return None
    _pending = None
    from nixcell import leftovers
    from nixcell.cli.outcome import report

    leftovers.sweep_if_due()  # (execute runs the preflight of the command and --cwd)
    from nixcell.runner import execute

    if not plan.limits.needs_cgroup:
        return report(execute(plan))
    with leftovers.RunMarker():  # a kill -9 of this run is swept by the next start
        result = execute(plan)
    return report(result)


def remember(plan: Plan) -> None:
    """Store the plan for the flags of this invocation (when they were cacheable)."""
    import dataclasses

    if _pending is None:
        return
    from nixcell import sealed

    data = dataclasses.replace(plan, command=()).to_json()
    sealed.store("plans", _pending, json.dumps(data).encode())
