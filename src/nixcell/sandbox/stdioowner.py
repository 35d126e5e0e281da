"""A root-run cell's stdio pipes, lent to the cell's host uid while it runs.

``/dev/stdin``, ``/dev/stdout``, ``/dev/fd/N`` are ``/proc/self/fd/N``: opening one opens the
pipe's inode again, and the kernel checks the inode's owner and mode (a pipe is 0600, owned by
whoever made it). Run by root, nixcell's cells have an unprivileged host uid of their own, so
`echo x > /dev/stdout`, `cat /dev/stdin` and bash's `<(…)`-style paths failed with EACCES on
every pipe the caller (a shell, CI, the MCP server) made, while they work for an ordinary user
(cell and pipe share the invoker's uid). The fix is the same ownership: before the command
runs, each stdio fd that is an anonymous pipe is ``fchown``ed to the cell's uid, and given back
when the cell is gone. Named FIFOs and files are never touched (they are host files); sockets
cannot be reopened at all (as on any machine). What the cell gains is what an ordinary user's
cell has: reopening its own stdio pipes (docs/security.md, "stdio").

A pipe that is on loan to another cell already (two cells of one ``xargs -P`` or ``make -j``
share their caller's stdout) is not lent again: its owner then is that cell's uid, and
recording that as the owner to give back would leave the pipe to a cell uid, with whatever
mode that cell gave it, after both are gone. The second cell gets EACCES on a reopen, as before.
"""

from __future__ import annotations

import os
import stat

from nixcell.quiet import suppress  # (not contextlib: the CLI's warm path lends pipes too)


def lend(fds: list[int], uid: int, gid: int) -> list[tuple[int, int, int, int]]:
    """chown the anonymous pipes among ``fds`` to (uid, gid); what ``give_back`` needs: an
    ``O_PATH`` fd of each (the caller may close its own; a dup would hold a pipe end open and
    the reader would never see EOF) with its owner before."""
    lent = []
    for fd in dict.fromkeys(fds):
        try:
            st = os.fstat(fd)
            if not stat.S_ISFIFO(st.st_mode) or (st.st_uid, st.st_gid) == (uid, gid):
                continue
            mine = (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
            if not mine and _on_loan(st.st_uid, st.st_gid):
                continue  # another cell's for now: its owner before is not this pipe's own
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:["):
                continue  # a named FIFO: a host file, not ours to lend
            held = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            os.chown(f"/proc/self/fd/{held}", uid, gid)  # the magic link: that very inode
        except OSError:
            os.close(held)
            continue
        lent.append((held, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
    return lent


def _on_loan(uid: int, gid: int) -> bool:
    """Whether (uid, gid) is a cell's: in nixcell's range (or unknown: then not lent)."""
    from nixcell.errors import NixcellError
    from nixcell.sandbox.identity import subordinate_range

    try:
        cells = subordinate_range()
    except (NixcellError, OSError):
        return True
    return uid in cells or gid in cells


def give_back(lent: list[tuple[int, int, int, int]]) -> None:
    """Restore each pipe's owner and mode (after every process of the cell is gone: while it
    owned the pipe, the cell could chmod it)."""
    while lent:
        held, uid, gid, mode = lent.pop()
        with suppress(OSError):
            os.chown(f"/proc/self/fd/{held}", uid, gid)
            os.chmod(f"/proc/self/fd/{held}", mode)
        os.close(held)
