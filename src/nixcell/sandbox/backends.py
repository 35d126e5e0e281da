"""The backend seam: which isolation runs a planned cell, and what each one can enforce.

A Plan is backend-neutral (closure, mounts, env, limits, network, seccomp, uid). A backend is one
module under ``sandbox/`` exposing ``BACKEND``: it says whether this host can run it
(``availability``), which parts of a plan it cannot enforce (``refusals``: nixcell then refuses
the run, never runs it weaker), what it would run (``render``: ``--dry-run --json``), and, for
every backend but bwrap (whose executor is ``runner``/``bwrap.py``), ``open`` gives one cell's
``BackendCell`` that ``backendrun.py`` drives: network, start, wait, kill, close.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from nixcell.errors import LimitUnavailableError, SandboxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from nixcell.plan import Plan
    from nixcell.sandbox.holder import CellNamespaces

    class Backend(Protocol):
        name: str

        def availability(self) -> Availability: ...

        def refusals(self, plan: Plan) -> list[str]: ...

        def render(self, plan: Plan) -> dict[str, object]: ...

        def open(
            self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None
        ) -> BackendCell: ...

    class BackendCell(Protocol):
        """One cell on one backend. ``backendrun`` calls ``network`` (with a policy), then
        ``start``, then ``wait`` (``kill`` on timeout or cancel), and always ``close``."""

        cell_id: str

        async def network(self) -> CellNamespaces | None: ...

        async def start(self, plan: Plan, io: CellIO) -> None: ...

        async def wait(self) -> BackendExit: ...

        async def kill(self) -> None: ...

        async def close(self) -> None: ...


NAMES = ("bwrap", "gvisor", "microvm", "docker", "systemd")
# --backend auto: bwrap where it works, otherwise gvisor, otherwise docker; systemd only where
# systemd is PID 1 (its own availability says so). microvm is never picked by auto: it is slow.
AUTO_ORDER = ("bwrap", "gvisor", "docker", "systemd")
_MODULES = {
    "bwrap": "nixcell.sandbox.bwrapbackend",
    "gvisor": "nixcell.sandbox.gvisor",
    "microvm": "nixcell.sandbox.microvm",
    "docker": "nixcell.sandbox.docker",
    "systemd": "nixcell.sandbox.systemd",
}


@dataclass(frozen=True)
class Availability:
    """Whether this host can run a backend; ``detail`` says with what, or why not (one line)."""

    ok: bool
    detail: str


@dataclass
class CellIO:
    """What the engine hands a backend's cell: host-side fds for the cell's stdio (never
    closed by the backend; ``None`` is /dev/null), and the network session when planned
    (``session.net.listener`` is the proxy's listening socket, ``session.net.netns_fd`` the
    lo-only namespace holding it when the engine made it)."""

    stdin: int | None
    stdout: int | None
    stderr: int | None
    session: object | None = None
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class BackendExit:
    """How the cell ended: ``returncode`` as a shell reports it (0-255, 128+N for signal N);
    ``oom``: the backend saw its memory limit kill the program."""

    returncode: int
    oom: bool = False


_cache: dict[str, Availability] = {}


def get(name: str) -> Backend:
    if name not in _MODULES:
        raise SandboxError(f"unknown backend {name!r}: the backends are {', '.join(NAMES)}")
    return importlib.import_module(_MODULES[name]).BACKEND  # type: ignore[no-any-return]


def availability(name: str) -> Availability:
    """The backend's own probe, cached for this process (probes may start a program)."""
    found = _cache.get(name)
    if found is None:
        try:
            found = get(name).availability()
        except SandboxError as exc:
            found = Availability(False, exc.message)
        _cache[name] = found
    return found


def select_auto() -> str:
    """``--backend auto``: the first of AUTO_ORDER this host can run."""
    reasons = []
    for name in AUTO_ORDER:
        found = availability(name)
        if found.ok:
            return name
        reasons.append(f"{name}: {found.detail}")
    raise SandboxError("--backend auto: no backend can run here (" + "; ".join(reasons) + ")")


def check(plan: Plan) -> Backend:
    """The plan's backend, if this host runs it and it enforces all of the plan; else a one-line
    refusal naming what it cannot do (fail closed)."""
    backend = get(plan.backend)
    found = availability(plan.backend)
    if not found.ok:
        raise SandboxError(f"the {plan.backend} backend cannot run here: {found.detail}")
    refused = backend.refusals(plan)
    if refused:
        raise LimitUnavailableError(
            f"the {plan.backend} backend cannot enforce {'; '.join(refused)}; refusing to run "
            "(choose another --backend, or drop what it cannot do)"
        )
    return backend


class Unbuilt:
    """A backend this nixcell does not have yet: unavailable, refusing every plan."""

    def __init__(self, name: str) -> None:
        self.name = name

    def availability(self) -> Availability:
        return Availability(False, f"this nixcell has no {self.name} backend yet")

    def refusals(self, plan: Plan) -> list[str]:
        return ["anything (not built)"]

    def render(self, plan: Plan) -> dict[str, object]:
        return {}

    def open(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> BackendCell:
        raise SandboxError(f"this nixcell has no {self.name} backend yet")
