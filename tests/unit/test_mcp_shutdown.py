"""The MCP server's shutdown is bounded: a client waits for its server to exit, and one stuck
part (a cell that will not die, a fork helper blocked on a lock) must not keep it waiting."""

from __future__ import annotations

import subprocess
import sys

STUCK = """
import logging, sys, time
logging.basicConfig(format="nixcell: %(levelname)s %(name)s: %(message)s")
from nixcell.mcp import server
server._exit_if_stuck(0.5)
time.sleep(60)  # a shutdown that never ends
"""

DONE = """
from nixcell.mcp import server
server._exit_if_stuck(600)
print("done")  # a shutdown that ends: the process exits at once, with its own status
"""


def test_a_stuck_shutdown_exits_within_the_limit_saying_so():
    # (a process the watchdog did not end would outlive its 60 s sleep's bound: TimeoutExpired)
    done = subprocess.run([sys.executable, "-c", STUCK], capture_output=True, timeout=50)
    assert done.returncode == 1
    assert b"shutdown did not finish within 0.5 s: exiting anyway" in done.stderr, done.stderr


def test_a_finished_shutdown_does_not_wait_for_the_limit():
    # the watchdog's 600 s would outlast the 60 s bound if it kept the process alive
    done = subprocess.run([sys.executable, "-c", DONE], capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"done\n"), done.stderr
