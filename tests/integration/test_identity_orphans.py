"""A uid slot whose holder died (kill -9) is not handed out while a process still runs as it.

Docker containers and gVisor sandboxes outlive a killed nixcell until the sweep; their uid must
not become another cell's meanwhile (the outside review of issue 12 found two cells sharing one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: cell uids are root's")

_TAKE = "from nixcell.sandbox import identity; i = identity.allocate(); print(i.uid, flush=True)"


def _take_and_die() -> int:
    """A process takes a slot and ends without release, as a kill -9 would leave it."""
    code = f"import os; {_TAKE}; os._exit(0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    return int(out.stdout)


def test_a_dead_holders_uid_is_skipped_while_its_process_runs():
    from nixcell.sandbox import identity

    uid = _take_and_die()
    orphan = subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "sleep", "60"])  # fmt: skip
    try:
        while not identity.uid_in_use(uid):  # setpriv has switched to it
            assert orphan.poll() is None
            time.sleep(0.01)
        taken = [identity.allocate() for _ in range(3)]
        try:
            assert uid not in [t.uid for t in taken]
        finally:
            for t in taken:
                t.release()
    finally:
        orphan.kill()
        orphan.wait()
    again = identity.allocate()  # nothing runs as it any more: the slot is free again
    try:
        assert again.uid == uid
    finally:
        again.release()


def test_a_cleanly_released_slot_is_taken_without_a_scan():
    from nixcell.sandbox import identity

    first = identity.allocate()
    uid = first.uid
    first.release()
    lock = os.path.join(identity._lock_dir(), f"{uid - identity.subordinate_range().base}.lock")
    assert os.path.getsize(lock) == 0  # released: nothing for the next taker to check
    second = identity.allocate()
    try:
        assert second.uid == uid
    finally:
        second.release()
