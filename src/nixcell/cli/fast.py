"""The warm fast path of ``nixcell run``: a cached plan, executed without click or pydantic.

Planning is a pure function of the flags, the resolved closure and a few host facts. So when the
same flags ran before (same directory, same user, same package sources), the plan from last time is
the plan for now, with only the command swapped. Loading it skips importing click and pydantic
(~150 ms here), and the warm executor (``sandbox/direct.py``) starts the cell without ``json``,
``dataclasses`` or ``subprocess``: a warm run imports little more than ``os``. Anything unusual
(no ``--``, --dry-run, --pass-env, ``--backend auto``, a global flag, a terminal on stdin or
stdout, a vanished closure or mount source) falls through to the normal path, and so does a plan
with a network or for another backend (run from the cache by the normal executor). A cached plan
is a whole bwrap argv: it is used only when this nixcell sealed it (sealed.py), in a private
cache dir; anything else is logged and re-derived by the normal path. Which cached plan is still
valid is decided in ``still_valid``.
"""

from __future__ import annotations

import itertools
import os

TYPE_CHECKING = False  # not `import typing`: it costs CLI start-up time

if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.planview import PlanView

_NOT_CACHED = {
    "--dry-run",
    "--json",
    "--sbpl",
    "--pass-env",
    "-h",
    "--help",
    "-v",
    "--verbose",
    "--learn",
    "--learn-output",
    "--debug",  # strace from outside: the normal executor (sandbox/tracer.py)
}
# Flags naming files whose contents shape the cell: their stats join the cache key.
_FILE_FLAGS = {"--policy", "--upstream-ca"}
_KEY_ENV = (
    "TERM",
    "NIX_PATH",
    "NIXCELL_HOME",
    "NIXCELL_OFFLINE_DIR",
    "NIXCELL_NIX_ROOT",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "XDG_DATA_HOME",
    "HOME",
    "USER",
)
_pending: str | None = None
ran = False  # the warm executor ran this invocation's cell (entry.py then exits at once)


def _key_file(options: list[str]) -> str | None:
    """The plan cache file for these flags; None when they name a file that is missing."""
    import nixcell
    from nixcell import paths, planview
    from nixcell.hashing import digest
    from nixcell.nix.hostpkgs import host_has_nixpkgs

    stamps = _file_stamps(options)
    if stamps is None:
        return None
    stamps.append(_project_stamps(options))
    # The planner's own source: a changed planner (a checkout being worked on) plans again.
    stamps.append(_stamp(os.path.join(os.path.dirname(nixcell.__file__), "plan.py")))
    stamps.append(_stamp(os.path.join(paths.offline_root(), "set.json")))
    material = repr(
        [
            nixcell.__version__,
            planview.FORMAT,
            options,
            os.getcwd(),
            os.getuid(),
            os.getgid(),
            [os.environ.get(k) for k in _KEY_ENV],
            host_has_nixpkgs(),
            stamps,
        ]
    )
    key = digest(material)[:32]
    from nixcell import sealed

    return sealed.cache_file("plans", f"{key}.plan")


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _file_stamps(options: list[str]) -> list[object] | None:
    """Stats of policy/CA files named by the flags, and of the proxy CA when there is a network."""
    from nixcell import paths

    stamps: list[object] = []
    files = [v for f, v in itertools.pairwise(options) if f in _FILE_FLAGS]
    files += [o.split("=", 1)[1] for o in options if "=" in o and o.split("=")[0] in _FILE_FLAGS]
    if files or any(o.startswith(("--allow-", "--deny-host", "--credential")) for o in options):
        files.append(os.path.join(paths.state_root(), "ca", "ca.pem"))
    for name in files:
        try:
            st = os.stat(name)
            stamps.append([os.path.abspath(name), st.st_mtime_ns, st.st_size, st.st_ino])
        except OSError:
            return None  # a missing file: the normal path reports it (or makes the CA)
    return stamps


def _project_stamps(options: list[str]) -> list[object]:
    """The project configs this run may use, with their versions (``project.discover``): the
    one found from here, and each directory the options name (``--project DIR``, ``DIR --``).
    A refusal is key material too: the normal path then reports it."""
    from nixcell.project.discover import configs_in, find, stamp

    if "--no-project" in options:
        return ["no-project"]
    named = [v for f, v in itertools.pairwise(options) if f == "--project"]
    named += [o.split("=", 1)[1] for o in options if o.startswith("--project=")]
    # a bare word may be `run DIR -- CMD`'s project, or any flag's value (--store-dir DIR):
    # only one holding a config can change what runs
    named += [o for o in options if not o.startswith("-") and configs_in(o)]
    out: list[object] = []
    for explicit in (None, *named):
        try:
            out.append(stamp(find(os.getcwd(), explicit=explicit)))
        except Exception as exc:  # any refusal (UsageError): its words are the key
            out.append(("refused", explicit, str(exc)))
    return out


def _split(args: list[str]) -> tuple[list[str], list[str]] | None:
    if not args or args[0] != "run" or "--" not in args:
        return None
    cut = args.index("--")
    options, command = args[1:cut], args[cut + 1 :]
    if not command or not command[0] or _NOT_CACHED.intersection(options):
        return None
    if any(o.startswith(("--pass-env=", "--json=", "--dry-run=")) for o in options):
        return None
    if _auto_backend(options):
        return None
    return options, command


def _auto_backend(options: list[str]) -> bool:
    """``--backend auto`` is resolved by probing the host (``backends.select_auto``): its plan is
    never cached, so a warm run never skips the probe (an explicit --backend is in the key)."""
    pairs = itertools.pairwise(options)
    return "--backend=auto" in options or any(a == "--backend" and b == "auto" for a, b in pairs)


def still_valid(plan: PlanView) -> bool:
    """Whether a cached plan still describes the cell the normal path would make now: every
    staleness check of a cached plan belongs in ``plancheck.stale_reason``."""
    from nixcell.plancheck import stale_reason

    reason = stale_reason(plan)  # type: ignore[arg-type]
    if reason is not None:
        import logging

        logging.getLogger(__name__).debug("cached plan not used: %s", reason)
    return reason is None


def _uses_terminal() -> bool:
    """Whether a stream is a terminal: then the cell gets a PTY or a relay (ttymode.stdio), never
    the terminal itself, and the warm executor hands the cell its stdio as they are."""
    return os.isatty(0) or os.isatty(1) or os.isatty(2)


def try_fast_run(args: list[str]) -> int | None:
    """Run from a cached plan and return the exit code, or None to take the normal path."""
    global _pending
    split = _split(args)
    if split is None:
        return None
    from nixcell.platforms import is_macos

    if is_macos():  # the normal path says why no cell runs here
        return None
    options, command = split
    key_file = _key_file(options)
    if key_file is None:
        return None
    _pending = key_file
    if _uses_terminal():  # (the normal path caches the plan it makes all the same)
        return None
    from nixcell import planview, sealed

    payload = sealed.load("plans", key_file)  # None unless this nixcell sealed it (logged)
    if payload is None:
        return None
    plan = planview.load(payload, command)
    if plan is None or not still_valid(plan):
        return None
    _pending = None
    from nixcell import leftovers

    leftovers.sweep_if_due()  # (execute runs the preflight of the command and --cwd)
    # a run that leaves host state when killed marks itself (cgroups; a Docker cell's containers)
    if not plan.limits.needs_cgroup and getattr(plan, "backend", "bwrap") == "bwrap":
        return _finish(plan, _execute(plan))
    with leftovers.RunMarker():  # a kill -9 of this run is swept by the next start
        result = _execute(plan)
    return _finish(plan, result)


def _execute(plan: PlanView) -> object:
    global ran
    from nixcell.sandbox import direct

    if direct.supports(plan):
        ran = True  # (a network's proxy thread and audit files get the interpreter's exit)
        return direct.execute(plan)
    from nixcell.cli.entry import full_site

    full_site()  # the network's modules are the environment's
    from nixcell.runner import execute

    return execute(plan.to_plan())


def _finish(plan: PlanView, result) -> int:
    """What the CLI prints after the cell (the normal path's too: cli/outcome.py); a post-run
    hook (it has the plan and the result) goes here, one line."""
    from nixcell.cli.outcome import report

    return report(result)


def remember(plan: Plan) -> None:
    """Store the plan for the flags of this invocation (when they were cacheable)."""
    if _pending is None:
        return
    from nixcell import planview, sealed

    sealed.store("plans", _pending, planview.compile_plan(plan))
