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
LOST = "host lost"  # what the other hosts of a cluster mark a silent host's jobs


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
    gone = list(marked)
    if host is not None:
        gone += _taken_away(store, config, host, {job.id for job in marked})
    for job in gone:
        try:
            remove_job_dir(job_dir(config, job.id), workspaces)
        except (OSError, NixcellError) as exc:
            log.warning("job %d: could not remove its dir: %s", job.id, exc)
    return marked


def _taken_away(store: JobStore, config: ServerConfig, host: str, skip: set[int]) -> list[Job]:
    """In a cluster: jobs this host had begun whose dirs are still here, but that the other
    hosts ended (``host lost``) or gave to another host (re-queued) while it was away."""
    import os

    from nixcell.jobs.model import TERMINAL

    try:
        names = os.listdir(os.path.join(config.state_dir, "jobs"))
    except OSError:
        return []
    found = []
    for name in names:
        if not name.isdigit() or int(name) in skip or len(name) > 18:
            continue
        job = store.get(int(name))
        if job is None:
            continue
        ended_away = job.state in TERMINAL and job.reason == LOST and job.host == host
        if ended_away or job.host != host:
            found.append(job)
    return found
