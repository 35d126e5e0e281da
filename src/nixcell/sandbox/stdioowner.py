"""A root-run cell's stdio pipes, opened up to the cell's host uid while it runs, one way only.

``/dev/stdin``, ``/dev/stdout``, ``/dev/fd/N`` are ``/proc/self/fd/N``: opening one opens the
pipe's inode again, and the kernel checks the inode's owner and mode (a pipe is 0600, owned by
whoever made it). Run by root, nixcell's cells have an unprivileged host uid of their own, so
`echo x > /dev/stdout`, `cat /dev/stdin` and bash's `<(…)`-style paths failed with EACCES on
every pipe the caller (a shell, CI, the MCP server) made, while they work for an ordinary user.

Before the command runs, each stdio fd that is an anonymous pipe gains the one "other" bit its
role needs: ``o+r`` for stdin, ``o+w`` for stdout and stderr; the bits added are cleared again
when the cell is gone. The owner stays: the cell cannot chmod the pipe, and it cannot reopen
its stdin for *writing* (a host ``while read`` loop around nixcell read what the cell wrote
into the pipe after it: review, an earlier version chowned the pipe) nor its stdout for
reading (what a concurrent host writer of the same pipe wrote). Two cells sharing one pipe
(``xargs -P``) add a bit once: the one that added it clears it, the other added nothing.
Named FIFOs and files are never touched (they are host files); sockets cannot be reopened at
all (as on any machine). Only a process that holds an end of the pipe, or may ptrace one that
does, can reach the inode at all, so the "other" bit opens it to nobody else.
"""

from __future__ import annotations

import os
import stat

from nixcell.quiet import suppress  # (not contextlib: the CLI's warm path lends pipes too)


def lend(fds: list[int | None]) -> list[tuple[int, int]]:
    """Open the anonymous pipes among the stdio ``fds`` (stdin, stdout, stderr; None: not a
    host fd) to "other" in their direction, by position (a pipe Popen made is given as the
    parent's end: its access mode names the wrong one). What ``give_back`` needs: an ``O_PATH``
    fd of each (the caller may close its own; a dup would hold a pipe end open and the reader
    would never see EOF) with the bits added."""
    wanted: dict[tuple[int, int], tuple[int, int, int]] = {}  # inode: (fd, mode, bits)
    for index, fd in enumerate(fds):
        try:
            st = os.fstat(fd) if fd is not None else None
        except OSError:
            continue
        if st is None or not stat.S_ISFIFO(st.st_mode):
            continue
        bit = stat.S_IROTH if index == 0 else stat.S_IWOTH
        _, _, bits = wanted.get((st.st_dev, st.st_ino), (fd, st.st_mode, 0))
        wanted[(st.st_dev, st.st_ino)] = (fd, st.st_mode, bits | bit)
    lent = []
    for fd, mode, bits in wanted.values():
        added = bits & ~mode
        try:
            if not added or not os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:["):
                continue  # nothing to add, or a named FIFO: a host file, not ours to open up
            held = os.open(f"/proc/self/fd/{fd}", os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:  # the magic link: that very inode
            os.chmod(f"/proc/self/fd/{held}", stat.S_IMODE(mode) | added)
        except OSError:
            os.close(held)
            continue
        lent.append((held, added))
    return lent


def give_back(lent: list[tuple[int, int]]) -> None:
    """Clear the bits each pipe was given (after every process of the cell is gone)."""
    while lent:
        held, added = lent.pop()
        with suppress(OSError):
            mode = os.stat(f"/proc/self/fd/{held}").st_mode
            os.chmod(f"/proc/self/fd/{held}", stat.S_IMODE(mode) & ~added)
        os.close(held)
