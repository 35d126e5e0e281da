"""A cached plan as the CLI's warm path reads it: the Plan's fields, without ``dataclasses``.

``cli/fast.py`` caches a Plan compiled by ``compile_plan``: its fields as plain data plus its
bwrap arguments rendered once, with the positions where bwrap is given fd numbers; ``marshal``-ed
(a built-in module: no ``json`` import) and sealed (``sealed.py``). ``PlanView`` reads that back
with the attribute names a Plan has, so the preflight (``preflight.py``) and the launch
(``sandbox/launch.py``) take it as they take a Plan, and the warm executor
(``sandbox/direct.py``) runs exactly the arguments the normal path would have given bwrap.
"""

from __future__ import annotations

import marshal

from nixcell.shellcmd import command_for

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan

PLAN_FORMAT = 11  # a cached plan of another format is made again, never run (plan.py's)
FORMAT = (1, PLAN_FORMAT)  # the layout of a cache entry, and of the plan in it
STAGE_DIR = "/run/nixcell/stage"  # sandbox/stage.py STAGE: where idmapped binds wait
CELL_HOME = "/home/cell"
# The cell's writable areas: (name in the scratch tmpfs, where the cell sees it, mode); here,
# not in plan.py, for the warm path's stage (sandbox/stage.py mounts the --disk scratch).
SCRATCH_AREAS = (
    ("shm", "/dev/shm", 0o1777),
    ("tmp", "/tmp", 0o1777),
    ("home", CELL_HOME, 0o700),
    ("workspace", "/workspace", 0o755),
)


def staged_source(stage: tuple, src: str | None) -> str | None:
    """The host path behind a bind source (a root-run cell's binds come through the stage)."""
    if src is not None and src.startswith(STAGE_DIR + "/"):
        index = src[len(STAGE_DIR) + 1 :]
        return next((s.source for s in stage if str(s.index) == index), src)
    return src


class Record:
    """Attribute access to one part of a cached plan (a mount op, a stage op, the limits)."""

    def __init__(self, fields: dict) -> None:
        self.__dict__.update(fields)


class PlanView:
    """A cached plan with its command: what the warm path checks, launches and runs."""

    def __init__(self, record: dict, command: tuple[str, ...] | list[str]) -> None:
        fields = record["plan"]
        self.__dict__.update(fields)
        self.mounts = tuple(Record(m) for m in fields["mounts"])
        self.stage = tuple(Record(s) for s in fields["stage"])
        self.limits = Record({**fields["limits"], "needs_cgroup": record["needs_cgroup"]})
        self.record = record
        self.command = command_for(tuple(command), self)

    nix_root: str | None = None  # (a plan cached before roots existed has none)

    def store_source(self, path: str) -> str:
        """The host file behind a store path: ``Plan.store_source``."""
        return (self.nix_root or "") + path

    def host_source(self, op: Record) -> str | None:
        return staged_source(self.stage, op.src)

    def bwrap_args(self, fds: dict[str, int]) -> list[str]:
        """The plan's bwrap arguments with these fds, ending with ``--`` and the command."""
        args = list(self.record["args"])
        for position, name in self.record["slots"]:
            args[position] = str(fds[name])
        return [*args, "--", *self.command]

    def paths(self) -> list[tuple[str, str]]:
        """(fd name, host path) of the bind sources bwrap gets as fds (``MountOp.by_fd``)."""
        return self.record["paths"]

    def files(self) -> list[tuple[str, bytes]]:
        """(fd name, contents) of the generated files bwrap reads from memfds, in order."""
        return self.record["files"]

    def to_plan(self) -> Plan:
        """The Plan itself, for the normal executor (a feature the warm one leaves to it)."""
        from nixcell.plan import Plan

        return Plan.from_json(self.record["plan"]).with_command(self.command)


def compile_plan(plan: Plan) -> bytes:
    """The cache entry for ``plan`` (its command left out: each run brings its own)."""
    import dataclasses

    base = dataclasses.replace(plan, command=())
    names = base.fd_names()
    # Rendered with two fd numberings: the arguments that differ are the fd slots (an env value
    # that happens to look like a placeholder stays what it is).
    one = base.bwrap_args({n: 1_000_000 + i for i, n in enumerate(names)})
    two = base.bwrap_args({n: 2_000_000 + i for i, n in enumerate(names)})
    pairs = enumerate(zip(one, two, strict=True))
    slots = [(i, names[int(a) - 1_000_000]) for i, (a, b) in pairs if a != b]
    if one[-1] != "--":
        raise ValueError("a plan's bwrap arguments end with `--` before the command")
    data = base.to_json()
    data.pop("bwrap_args", None)
    files = [
        (f"data:{op.dest}", (op.data or "").encode()) for op in base.mounts if op.kind == "data"
    ]
    record = {
        "format": FORMAT,
        "plan": data,
        "needs_cgroup": base.limits.needs_cgroup,
        "args": one[:-1],
        "slots": slots,
        "files": files,
        "paths": base.paths(),
    }
    return marshal.dumps(record)


def load(payload: bytes, command: tuple[str, ...] | list[str]) -> PlanView | None:
    """The view of a cache entry (its seal verified by the caller) running ``command``, or None
    when the entry is of another layout or damaged."""
    try:
        record = marshal.loads(payload)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            return None
        return PlanView(record, command)
    except (EOFError, ValueError, TypeError, KeyError, AttributeError):
        return None
