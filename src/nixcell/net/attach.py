"""Attaching a network to a planned cell: the dummies in its env, the outcome in its result."""

from __future__ import annotations

import dataclasses
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.runner import RunResult


async def open_network(
    plan: Plan, cell_id: str, staging: dict[str, object] | None = None
) -> tuple[Plan, object]:
    """Set up the cell's network with its proxy on this loop; the plan gains the dummies.

    ``staging``: what the same namespace helper also does (``CellLaunch.holder_args``).
    """
    from nixcell.net.session import open_cell_network

    assert plan.network is not None
    session = await open_cell_network(plan.network, cell_id, staging)
    try:
        plan = with_network(plan, session)
    except BaseException:
        await session.close()
        raise
    return plan, session


def with_network(plan: Plan, session: object) -> Plan:
    """The plan with the credential dummies in its env; refuses if a real secret would enter
    (in any spelling: its argv and environ are readable in /proc by everything in the cell)."""
    from nixcell.errors import NetworkError

    env = session.env  # type: ignore[attr-defined]
    if env:
        plan = dataclasses.replace(plan, env={**plan.env, **env})
    exposed = [*plan.env.keys(), *plan.env.values(), *plan.command]
    exposed += [op.data for op in plan.mounts if op.data]
    for source in (plan.network or {}).get("policy_files", ()):  # type: ignore[union-attr]
        where = writable_in_cell(plan, str(source))
        if where:
            raise NetworkError(
                f"policy file {source}: the cell could rewrite or replace it at {where} (the "
                "next run would obey its rules and credentials); keep it outside what the "
                "cell can write (a project's .nixcell/ or root); refusing to run"
            )
    creds = getattr(session, "credentials", None)
    if creds is None:
        return plan
    if any(creds.exposes(value) for value in exposed):
        raise NetworkError(
            "a real credential value would enter the cell (through -e, --pass-env or "
            "the command line); refusing to run"
        )
    for name, source in creds.source_files():
        for op in plan.mounts:
            host = plan.host_source(op) if op.kind in ("bind", "ro-bind") else None
            if host and _inside(source, host):
                raise NetworkError(
                    f"credential {name!r}: its source file is inside {host}, which is "
                    f"mounted into the cell at {op.dest}; refusing to run"
                )
    return plan


_MOUNTS = ("bind", "ro-bind", "tmpfs", "proc", "dev", "data")


def writable_in_cell(plan: Plan, host_path: str) -> str | None:
    """The cell path at which code in the cell could change what ``host_path`` (a file the host
    reads before each run) holds: a writable mount shows it, or a directory above its read-only
    mount point can be renamed (a policy of its own put in its place). None when neither."""
    real = os.path.realpath(host_path)
    ops = list(plan.mounts)
    dests = {op.dest for op in ops if op.kind in _MOUNTS}

    def writable(cell: str) -> tuple[bool, str]:
        """(host-writable, the governing mount's dest) of a cell path: the last mount above it."""
        found = None
        for op in ops:
            if op.kind in _MOUNTS and _inside(cell, op.dest, real=False):
                found = op
            elif op.kind == "remount-ro" and found is not None and op.dest == found.dest:
                return False, found.dest
        if found is None:  # bwrap's root: read-only once set up
            return False, "/"
        return found.kind == "bind", found.dest  # writable and the host's (not a tmpfs)

    for op in ops:
        host = plan.host_source(op) if op.kind in ("bind", "ro-bind") else None
        if not host or not _inside(real, host):
            continue
        rel = os.path.relpath(real, os.path.realpath(host))
        cell = os.path.normpath(os.path.join(op.dest, rel))
        rw, top = writable(cell)
        if rw:
            return cell
        while top != "/":  # a directory above a read-only mount point can be renamed
            parent = os.path.dirname(top)
            if top not in dests and writable(parent)[0]:
                return top
            top = parent
    return None


def _inside(path: str, directory: str, real: bool = True) -> bool:
    if real:
        path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def with_outcome(result: RunResult, session: object) -> RunResult:
    summary = session.summary()  # type: ignore[attr-defined]
    failure = session.failure  # type: ignore[attr-defined]
    if failure:
        summary = f"{failure}; {summary}" if summary else failure
    return dataclasses.replace(
        result,
        network_summary=summary,
        learned_policy=session.learn_output,  # type: ignore[attr-defined]
    )
