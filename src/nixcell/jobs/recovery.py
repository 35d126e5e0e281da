"""What a dead daemon left: jobs it was preparing or running, and their cells' leftovers.

A ``kill -9`` of the daemon skips every ``finally``. Its cells die with it (bwrap's
``--die-with-parent``; a cell with limits also sits in a cgroup whose lock died with the daemon,
so ``leftovers.sweep`` kills what is left in it and removes it). The store still says
``preparing``/``running``: those jobs become ``error`` "daemon restarted" (their output so far
stays in the store), and their job dirs (workspace included) are removed without following a
link the cell planted. Queued jobs are untouched: the service queues them again.
"""

from __future__ import annotations

import logging

from nixcell.errors import NixcellError
from nixcell.jobs.model import ACTIVE, Job
from nixcell.jobs.store import JobStore
from nixcell.jobs.workspace import Workspaces

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.jobs.config import ServerConfig

log = logging.getLogger(__name__)

RESTARTED = "daemon restarted"


def recover(
    store: JobStore, workspaces: Workspaces, config: ServerConfig, *, host: str | None = None
) -> list[Job]:
    """Mark the dead daemon's unfinished jobs ``error``, sweep leftovers; the marked jobs.
    ``host``: in a cluster, only the jobs this host had claimed (the others' are theirs)."""
    from nixcell import leftovers
    from nixcell.jobs.executor import job_dir, remove_job_dir

    marked = []
    for job in store.unfinished():
        if host is not None and job.host != host:
            continue
        done = store.transition(job.id, "error", expect=ACTIVE, reason=RESTARTED)
        if done is not None:
            marked.append(done)
    if marked:
        log.warning("marked %d job(s) left unfinished as error (%s)", len(marked), RESTARTED)
    try:
        leftovers.sweep()
    except (OSError, NixcellError) as exc:
        log.warning("could not sweep leftovers: %s", exc)
    for job in marked:
        try:
            remove_job_dir(job_dir(config, job.id), workspaces)
        except (OSError, NixcellError) as exc:
            log.warning("job %d: could not remove its dir: %s", job.id, exc)
    return marked
