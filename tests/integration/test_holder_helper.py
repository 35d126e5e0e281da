"""The namespace helper is a fork of a process that may run threads: a child stuck on a lock
another thread held at the fork must end as a one-line refusal, never a hang of the caller (an
MCP server's or the job daemon's cell would wait for ever)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from nixcell.errors import SandboxError
from nixcell.sandbox import holder

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: makes network namespaces")


def test_a_helper_stuck_on_a_lock_held_at_fork_is_killed_and_refused(monkeypatch):
    held = threading.Lock()
    taken = threading.Event()

    def other_thread() -> None:  # holds the lock across the fork, as a busy thread would
        with held:
            taken.set()
            time.sleep(3)

    real = holder._child

    def child(*args):  # (runs in the forked helper) the lock is never released there
        held.acquire()
        real(*args)

    threading.Thread(target=other_thread, daemon=True).start()
    taken.wait()
    monkeypatch.setattr(holder, "_child", child)
    monkeypatch.setattr(holder, "HELPER_LIMIT", 1.0)
    before = set(os.listdir("/proc"))
    with pytest.raises(SandboxError, match="did not answer within 1 s"):
        holder.create(port=3128)
    children = [
        p for p in set(os.listdir("/proc")) - before
        if p.isdigit() and _ppid(p) == os.getpid()
    ]  # fmt: skip
    assert children == [], "the stuck helper is left"


def test_a_helper_that_answers_is_not_affected():
    ns = holder.create(port=3128)
    try:
        assert ns.listener is not None and ns.netns_fd is not None
    finally:
        ns.close()


def _ppid(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1
