"""Interactive jobs: a pty the daemon holds, attached over WebSocket (part F replaces this stub)."""

from __future__ import annotations

from collections.abc import Callable

from nixcell.jobs.contract import Conflict, JobError, Terminal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.runner import RunResult


async def run_interactive(plan: Plan, job_id: int, output: Callable[[bytes], None]) -> RunResult:
    """Run the planned cell on a pty held here; ``output`` gets every chunk (the job's log)."""
    raise JobError("interactive jobs are not built yet")


def attach(job_id: int) -> Terminal:
    """The running interactive job's terminal; Conflict when it has none."""
    raise Conflict(f"job {job_id} is not interactive")
