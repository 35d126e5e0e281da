"""Jobs on each backend this host runs (``backendrig``'s ``backend`` fixture: bwrap here; the
others run where their backend does, and skip with its reason otherwise): the request's
``backend`` reaches the cell, the executor marks the job running with the backend cell's id
(``on_start`` reads ``cell.cell_id``), and a cancel ends it with nothing of the cell left
(asyncio cancel -> the engine's kill and close). A backend the server offers but this host
cannot run ends the job ``error`` with the backend's one line."""

from __future__ import annotations

import asyncio
import secrets

from tests.integration.jobsrig import ALICE, collect, processes_with, script, serve, settle

from nixcell.sandbox import backends

GUEST = ("gvisor", "microvm")  # backends whose cell processes never show in the host's /proc


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:300]
    except OSError:
        return "(gone)"


def leftovers(backend: str, marker: str, cell_id: str | None) -> list[str]:
    """What of a cell is still there. A bwrap or Docker cell's command is a host process (its
    command line holds ``marker``); a gVisor cell's runs inside the sentry, never in the host's
    /proc: there, no runsc process (run, gofer, sentry) of the cell and no runsc state of it."""
    found = [f"pid {p}: {_cmdline(p)}" for p in processes_with(marker)]
    if backend == "gvisor" and cell_id:
        from tests.integration.gvisorrig import left_of

        found += left_of(cell_id)
    if backend == "microvm" and cell_id:  # its QEMU is named after the cell (``-name``)
        found += [f"pid {p}: {_cmdline(p)}" for p in processes_with(f".{cell_id}")]
    return found


def test_a_job_runs_and_cancels_on_each_backend(tmp_path, backend) -> None:
    marker = str(900000 + secrets.randbelow(99999))  # this run's own: other runs may be about

    async def body(svc):
        done = await svc.submit(ALICE, script("echo ok", backend=backend))
        await collect(svc, ALICE, done.id)
        running = await svc.submit(ALICE, script(f"echo started; sleep {marker}", backend=backend))
        job = await settle(svc, running.id, {"running"})
        while "started" not in [line.text for line in svc.logs(ALICE, running.id)]:
            await asyncio.sleep(0.02)  # the cell's command is up: it has printed
        if backend not in GUEST:  # (their processes live in the sentry or the guest)
            while not processes_with(marker):
                await asyncio.sleep(0.02)
        ended = await svc.cancel(ALICE, running.id)
        return svc.get(ALICE, done.id), job, ended, leftovers(backend, marker, job.cell_id)

    done, job, ended, left = serve(tmp_path, body, backends=(backend,), default_backend=backend)
    assert (done.state, done.exit_code) == ("succeeded", 0)
    assert done.request["backend"] == backend
    assert job.cell_id, "the executor took the cell id from the backend's cell"
    assert (ended.state, ended.reason) == ("cancelled", "cancelled by alice")
    assert left == [], "a process of the cancelled cell is left"


def test_a_backend_this_host_cannot_run_ends_the_job_in_one_line(offline_set, tmp_path) -> None:
    assert not backends.availability("systemd").ok  # no systemd as PID 1 here

    async def body(svc):
        job = await svc.submit(ALICE, script("echo never", backend="systemd"))
        return await settle(svc, job.id)

    job = serve(tmp_path, body, backends=("bwrap", "systemd"), default_backend="bwrap")
    assert job.state == "error" and job.cell_id is None
    assert job.reason is not None and "\n" not in job.reason
    assert "the systemd backend cannot run here" in job.reason
