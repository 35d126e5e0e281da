"""Reaping the cell's pid-1 after bubblewrap exits.

bwrap's outer process exits as soon as its pid-1 reports the command's status, before that pid-1
has been reaped; the orphan goes to the host's init. An init that reaps slowly (containers, VM
agents) then shows a zombie ``bwrap`` long after the cell ended. Front ends that own their process
(the CLI, the servers) call ``become_subreaper`` so orphans come back to them, and the runner reaps
the cell's pid-1 itself. A library caller that does not opt in keeps its process untouched.
"""

from __future__ import annotations

import os
import select

from nixcell.quiet import suppress

_PR_SET_CHILD_SUBREAPER = 36
_active = False


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ≥ 3.4)."""
    global _active
    if _active:
        return True
    try:
        _active = _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0
    except (OSError, AttributeError, TypeError, ImportError):
        _active = False
    return _active


def _prctl(option: int, arg: int) -> int:
    """prctl(2) through ``libc.py`` (not ``ctypes``: ~2 ms of the CLI's warm run)."""
    from nixcell.sandbox import libc

    return libc.call("prctl", option, arg, 0, 0, 0)


def reap(pid: int | None, timeout: float = 2.0) -> None:
    """Wait for ``pid`` if it became our child; a no-op when it is someone else's."""
    if pid is None or not _active:
        return
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already reaped (or never ours)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(int(timeout * 1000))
        with suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    finally:
        os.close(pidfd)


def reap_orphans() -> int:
    """Reap every exited child; only for processes that own all their children (CLI, tests)."""
    reaped = 0
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped += 1


def reap_zombie(pid: int) -> bool:
    """Reap ``pid`` if it is an exited child of ours (a zombie whose parent is this process: its
    pid cannot have been reused); True if it was. Another process's, or a live one: untouched."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    if len(fields) < 2 or fields[0] != b"Z" or fields[1] != str(os.getpid()).encode():
        return False
    with suppress(ChildProcessError):
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    return False
