"""Closed standard fds (``nixcell run ... >&-``) reopened before anything else is opened.

Else the next file nixcell opens takes fd 1 or 2 and would be handed to the cell as its stdout
(or clobbered by a transport claiming it). Stdlib only: the CLI entry point imports this.
"""

from __future__ import annotations

import os
import sys

_STREAMS = ((0, "stdin"), (1, "stdout"), (2, "stderr"))


def reopen_closed(*, discard: bool) -> None:
    """Point a closed fd 0, 1 or 2 at /dev/null; a closed stdin reads as end of input.

    ``discard``: a closed stdout/stderr accepts and drops writes (the MCP server's protocol
    streams). Otherwise it stays unwritable — /dev/null opened read-only, so a write fails with
    EBADF exactly as on the closed fd, for nixcell and for the cell that inherits it.
    """
    for fd, name in _STREAMS:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        mode = os.O_WRONLY if discard and fd else os.O_RDONLY
        opened = os.open(os.devnull, mode)
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        if getattr(sys, name) is None:
            stream = open(fd, "r" if fd == 0 else "w", closefd=False)  # noqa: SIM115 (kept)
            setattr(sys, name, stream)
