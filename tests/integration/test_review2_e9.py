"""Second outside review of issue 9: each attack that worked, as a test.

A root-run cell's stdio pipes are lent to its host uid (sandbox/stdioowner.py). Two cells that
share one pipe (``xargs -P``, ``make -j``, ``a & b`` under one ``| tee``) lend it in turn: the
second one took the first cell's uid (and the mode that cell chose) for the pipe's owner, and
gave the pipe back to that cell uid, with that mode, for good.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest
from tests.conftest import NIXCELL

pytestmark = pytest.mark.integration


def _wait_for(check, what: str, limit: float = 120) -> None:
    end = time.monotonic() + limit
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.05)


@pytest.mark.skipif(os.geteuid() != 0, reason="pipes are lent only by a root-run nixcell")
def test_a_pipe_two_cells_share_gets_its_owner_and_mode_back(offline_set, tmp_path):
    """Cell A is lent the pipe and makes it 0666; cell B starts while A runs, A ends first,
    then B: the pipe is root's and 0600 again (before the fix: A's uid, 0666)."""
    r, w = os.pipe()
    before = os.fstat(w)
    a_cmd = "chmod 666 /proc/self/fd/1; touch a-lent; while [ ! -e b-up ]; do sleep 0.05; done"
    b_cmd = "touch b-up; while [ ! -e a-gone ]; do sleep 0.05; done"
    argv = [NIXCELL, "run", "-T", "--workdir", str(tmp_path), "-p", "coreutils", "--", "sh", "-c"]
    drain = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    try:
        a = subprocess.Popen([*argv, a_cmd], stdout=w, stderr=subprocess.PIPE)
        _wait_for(lambda: (tmp_path / "a-lent").exists() or a.poll() is not None, "cell A")
        b = subprocess.Popen([*argv, b_cmd], stdout=w, stderr=subprocess.PIPE)
        assert a.wait(timeout=120) == 0, a.stderr.read()
        (tmp_path / "a-gone").touch()
        assert b.wait(timeout=120) == 0, b.stderr.read()
        after = os.fstat(w)
        got = (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode))
        assert got == (before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode))
    finally:
        os.close(w)
        drain.wait(timeout=30)
