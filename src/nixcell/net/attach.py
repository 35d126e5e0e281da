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


def refuse_cell_writable(plan: Plan) -> None:
    """Before the network is set up (the audit file is opened then): refuse a policy file the
    cell could rewrite or replace (the next run would obey its rules and send its credentials
    where it says), and an audit file whose place it could change (a planted link in the path
    would make us create and append to a file elsewhere; it could also rewrite its record)."""
    from nixcell.errors import NetworkError

    network = plan.network or {}
    for source in network.get("policy_files", ()):  # type: ignore[attr-defined]
        where = writable_in_cell(plan, str(source))
        if where:
            raise NetworkError(
                f"policy file {source}: the cell could rewrite or replace it at {where} (the "
                "next run would obey its rules and credentials); keep it outside what the "
                "cell can write (in a project: .nixcell/, or name it in the config's policy "
                "key); refusing to run"
            )
    audit = network.get("audit")
    where = writable_in_cell(plan, str(audit)) if audit else None
    if where:
        raise NetworkError(
            f"audit file {audit}: the cell could change it or the directories above it at "
            f"{where}; name a file outside what the cell can write; refusing to run"
        )


def with_network(plan: Plan, session: object) -> Plan:
    """The plan with the credential dummies in its env; refuses if a real secret would enter
    (in any spelling: its argv and environ are readable in /proc by everything in the cell)."""
    from nixcell.errors import NetworkError

    env = session.env  # type: ignore[attr-defined]
    if env:
        plan = dataclasses.replace(plan, env={**plan.env, **env})
    exposed = [*plan.env.keys(), *plan.env.values(), *plan.command]
    exposed += [op.data for op in plan.mounts if op.data]
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
    """The cell path at which code in the cell could change what the host finds at
    ``host_path`` (a file it opens before each run): a writable mount shows the file, or the
    cell could replace a place the host passes through on the way (a directory, a link: links
    are followed here as the kernel would), renaming it away even above a read-only mount
    point. None when neither."""
    places = _traversed(host_path)
    for i, place in enumerate(places):
        where = _changeable(plan, place, last=i == len(places) - 1)
        if where:
            return where
    return None


def _traversed(path: str) -> list[str]:
    """Every place (a resolved directory plus a name) that resolving ``path`` visits."""
    todo = [p for p in os.path.abspath(path).split("/") if p]
    current, seen, hops = "/", [], 0
    while todo:
        name = todo.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        place = os.path.join(current, name)
        seen.append(place)
        if os.path.islink(place) and hops < 40:
            hops += 1
            target = os.readlink(place)
            todo = [p for p in target.split("/") if p] + todo
            current = "/" if target.startswith("/") else current
        else:
            current = place
    return seen


def _changeable(plan: Plan, place: str, last: bool) -> str | None:
    """``writable_in_cell`` for one place whose directory holds no link: the cell can replace
    its entry (not a mount point, in a directory it can write), or write it (``last``)."""
    ops = list(plan.mounts)
    dests = {op.dest for op in ops if op.kind in _MOUNTS}

    def writable(cell: str) -> bool:
        """Whether the last mount above a cell path is a writable one of the host's files."""
        found = None
        for op in ops:
            if op.kind in _MOUNTS and _inside(cell, op.dest, real=False):
                found = op
            elif op.kind == "remount-ro" and found is not None and op.dest == found.dest:
                return False
        # none: bwrap's root, read-only once set up; a tmpfs is the cell's, not the host's
        return found is not None and found.kind == "bind"

    for op in ops:
        host = plan.host_source(op) if op.kind in ("bind", "ro-bind") else None
        if not host:
            continue
        host = os.path.realpath(host)
        if not _inside(place, host, real=False):
            continue
        cell = os.path.normpath(os.path.join(op.dest, os.path.relpath(place, host)))
        if last and writable(cell):
            return cell
        if cell not in dests and writable(os.path.dirname(cell)):
            return cell
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
