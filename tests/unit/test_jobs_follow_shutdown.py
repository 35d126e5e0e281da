"""A follower of a job the server cancels as it stops ends with the job's final state.

At shutdown the service cancels a running job (its last log line, then its state) and only then
closes the hub. A follower that read the job a moment before the state was stored found the hub
closed after that read and ended without the state (seen in the suite under load: the
follower's stream had the "job cancelled" line and no final event). The interleaving is made
exact here: the store's read of the job's events stores the final state and closes the hub
before it returns, as the service would between the follower's read and its check.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nixcell.jobs.hub import Hub
from nixcell.jobs.model import Event, LogLine
from nixcell.jobs.sqlite import SqliteStore
from nixcell.jobs.streams import follow_job


class _StopsDuringTheRead(SqliteStore):
    """The real store; its first read of events after ``arm`` is followed by the shutdown."""

    loop: asyncio.AbstractEventLoop | None = None
    hub: Hub | None = None
    armed = False

    def events(self, job_id: int, after: int = 0):  # type: ignore[override]
        read = super().events(job_id, after=after)
        if self.armed:
            self.armed = False
            self.transition(job_id, "cancelled", expect=["running"], reason="the server stopped")
            assert self.loop is not None and self.hub is not None

            async def close() -> None:
                self.hub.close()  # type: ignore[union-attr]

            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        return read


def test_the_final_state_stored_just_before_the_hub_closed_is_sent(tmp_path: Path) -> None:
    store = _StopsDuringTheRead(str(tmp_path / "jobs.db"))
    job = store.create("uid:1", "u", {"argv": ["sleep", "600"]})
    store.transition(job.id, "running", expect=["queued"])
    store.append_logs(job.id, [("system", "job cancelled: the server stopped")])

    async def main() -> list[LogLine | Event]:
        store.loop, store.hub = asyncio.get_running_loop(), Hub()
        store.armed = True
        got = []
        async for item in follow_job(store, store.hub, job.id):
            got.append(item)
        return got

    got = asyncio.run(asyncio.wait_for(main(), 30))
    assert isinstance(got[-1], Event) and got[-1].state == "cancelled", got
    assert [x.text for x in got if isinstance(x, LogLine)] == ["job cancelled: the server stopped"]


def test_a_job_still_queued_at_shutdown_ends_the_follow_without_a_state(tmp_path: Path) -> None:
    """A queued job stays queued for the next start: the follow ends (no hang, no made-up
    final state)."""
    store = SqliteStore(str(tmp_path / "jobs.db"))
    job = store.create("uid:1", "u", {"argv": ["true"]})

    async def main() -> list[LogLine | Event]:
        hub = Hub()
        asyncio.get_running_loop().call_later(0.2, hub.close)
        return [item async for item in follow_job(store, hub, job.id)]

    got = asyncio.run(asyncio.wait_for(main(), 30))
    assert all(not (isinstance(x, Event) and x.state in ("cancelled", "failed")) for x in got)
