"""Pre-started one-shot cells for the ``run`` tool: each used once, thrown away, refilled.

A one-shot call spends most of its time making the cell (namespaces, cgroups, bubblewrap) and
starting the interpreter. The pool does that ahead of time: per environment, ``size`` cells of
exactly the plan a one-shot call would get — the same engine (``runner.execute_async``, the way
session cells start, with private fds passed in), cgroups made, limits set, the interpreter
started by a driver (``pool_drivers.py``) that waits for the code on its own pipe. A call takes
one (never shared: it leaves the pool before the first await), sends the code and closes the
pipe; the driver answers ``s`` when the code starts, and from then on the call's timeout runs.
A refill starts in the background, one cell at a time per environment.

A cell is handed out only to a call whose key matches the one it was started for: the
environment's prepared plan (closure, mounts, env, limits, network and policy sources) and
configuration, and the identity (inode, size, mtime) of its policy files, so a changed
configuration, a reloaded environment or an edited policy file discards the waiting cells.
Cells also retire after ``MAX_AGE``. A cell that dies before its code started is thrown away
and the call runs in a fresh cell (no code of the call ran); one that fails to start disables
the pool for that key (logged once): the fresh path then says why, as it would without a pool.
"""

from __future__ import annotations

import asyncio
import logging
import os

from nixcell.mcp.pooledcell import START_TIMEOUT, PooledCell

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.mcp.envs import Environments, Prepared
    from nixcell.mcp.tool import Outcome
    from nixcell.runner import RunResult

log = logging.getLogger(__name__)

REFILL_DELAY = 0.02  # after a call, before its cell is replaced


_BASES: dict[int, tuple[Prepared, str]] = {}  # id -> (the Prepared, its plan's digest)


def pool_key(prepared: Prepared) -> str | None:
    """What a pooled cell must share with a call to be used by it; None: not poolable."""
    from nixcell.hashing import digest

    plan = prepared.plan
    if plan is None or prepared.error is not None:
        return None
    cached = _BASES.get(id(prepared))
    if cached is None or cached[0] is not prepared:  # (a Prepared is immutable)
        if len(_BASES) > 256:
            _BASES.clear()
        cached = _BASES[id(prepared)] = (prepared, digest(repr((plan, prepared.config))))
    files = []
    network = plan.network or {}
    for path in [*network.get("policy_files", ()), network.get("upstream_ca")]:  # type: ignore[misc]
        if path:
            try:
                st = os.stat(str(path))
            except OSError:
                return None  # the fresh path says what is wrong with it
            files.append((str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return digest(repr((cached[1], files)))


class CellPool:
    """Waiting cells per environment; ``size`` (``--pool``) 0 switches the pool off."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._cells: dict[str, list[PooledCell]] = {}
        self._fills: dict[str, asyncio.Task[None]] = {}
        self._wanted: dict[str, str] = {}  # the key each environment's pool is filled for
        self._starters: set[asyncio.Task[None]] = set()
        self._broken: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def size_for(self, prepared: Prepared) -> int:
        """The environment's ``pool`` if it has one; the server's otherwise; 0 if that is 0."""
        per_env = prepared.config.pool
        return 0 if self.size <= 0 else (self.size if per_env is None else per_env)

    def waiting(self, name: str) -> int:
        return len(self._cells.get(name, ()))

    def start(self, envs: Environments) -> None:
        """Fill the pool of each environment once it is prepared."""

        async def fill_when_ready(name: str) -> None:
            prepared = await envs.get(name)
            if prepared is not None:
                self.refill(prepared)

        for name in envs.names:
            task = asyncio.ensure_future(fill_when_ready(name))
            self._starters.add(task)
            task.add_done_callback(self._starters.discard)

    async def run(self, prepared: Prepared, code: str) -> Outcome | None:
        """The call in a pooled cell, or None: no cell fits (the caller runs a fresh one)."""
        if self._closed or self.size_for(prepared) <= 0:
            return None
        key = pool_key(prepared)
        if key is None or key in self._broken:
            return None
        if "\0" in code:
            return None  # the interpreters refuse it in their own words: a fresh cell says so
        try:
            code.encode()
        except UnicodeEncodeError:
            return None  # (a lone surrogate) as a fresh cell fails on it
        cell = self._take(prepared.config.name, key)
        try:
            return None if cell is None else await cell.use(code)
        except BaseException:
            if cell is not None:
                await cell.close()  # cancelled or failed: nothing of the cell outlives the call
                cell = None
            raise
        finally:
            if cell is not None:  # its teardown (cgroups, namespaces) after the answer
                self._discard(cell)
            # Starting a cell blocks the loop for a few ms: after this call's answer is out.
            asyncio.get_running_loop().call_later(REFILL_DELAY, self.refill, prepared, key)

    def _take(self, name: str, key: str) -> PooledCell | None:
        cells = self._cells.setdefault(name, [])
        keep = [c for c in cells if c.key == key and c.usable]
        for stale in [c for c in cells if c not in keep]:
            self._discard(stale)
        ready = [c for c in keep if c.ready.done() and c.ready.result()]
        chosen = ready[0] if ready else (keep[0] if keep else None)
        self._cells[name] = [c for c in keep if c is not chosen]
        return chosen

    def refill(self, prepared: Prepared, key: str | None = None) -> None:
        """Bring the environment's pool back to its size, for ``prepared`` (a fill for an
        older version of the environment stops)."""
        name = prepared.config.name
        key = key or pool_key(prepared)
        if self._closed or key is None or key in self._broken:
            return
        task = self._fills.get(name)
        if task is not None and not task.done() and self._wanted.get(name) != key:
            task.cancel()  # its cells are discarded as stale by the new fill
            task = None
        self._wanted[name] = key
        if task is None or task.done():
            self._fills[name] = asyncio.ensure_future(self._fill(prepared, key))

    async def _fill(self, prepared: Prepared, key: str) -> None:
        name, interpreter = prepared.config.name, prepared.config.interpreter
        assert prepared.plan is not None
        while not self._closed and self._wanted.get(name) == key:
            cells = self._cells.setdefault(name, [])
            for stale in [c for c in cells if c.key != key or not c.usable]:
                cells.remove(stale)
                self._discard(stale)
            if len(cells) >= self.size_for(prepared):
                return
            try:
                cell = PooledCell(key, prepared.plan, interpreter)
            except OSError as exc:  # out of fds: the calls go to fresh cells
                log.warning("pool for '%s': cannot start a cell: %s", name, exc)
                return
            cells.append(cell)
            await asyncio.wait({cell.ready}, timeout=START_TIMEOUT)
            if not cell.ready.done() or not cell.ready.result():
                late = not cell.ready.done()
                ended = cell.task.done() and not cell.task.cancelled()  # not given up by a call
                why = "did not start in time" if late else (_why(cell.task) if ended else "")
                if cell in self._cells.get(name, ()):
                    self._cells[name].remove(cell)
                self._discard(cell)
                if why:
                    self._broken.add(key)
                    log.warning("pool for '%s' switched off: a pooled cell %s", name, why)
                return

    def retain(self, names: set[str]) -> None:
        """Kill the waiting cells of environments not in ``names`` (a reload removed them)."""
        for name in [n for n in self._cells if n not in names]:
            if (task := self._fills.pop(name, None)) is not None:
                task.cancel()
            self._wanted.pop(name, None)
            for cell in self._cells.pop(name):
                self._discard(cell)

    def _discard(self, cell: PooledCell) -> None:
        self._track(asyncio.ensure_future(cell.close()))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Kill every waiting cell and wait for their teardown (cgroups, holders, fds)."""
        self._closed = True
        for task in [*self._fills.values(), *self._starters]:
            task.cancel()
        cells = [c for cells in self._cells.values() for c in cells]
        self._cells.clear()
        pending = [*self._fills.values(), *self._starters, *self._closing]
        pending += [asyncio.ensure_future(c.close()) for c in cells]
        if pending:
            await asyncio.wait(pending)


def _why(task: asyncio.Task[RunResult]) -> str:
    if task.exception() is not None:
        return f"could not start: {task.exception()}"
    result = task.result()
    return f"ended at start ({result.message or f'exit code {result.exit_code}'})"
