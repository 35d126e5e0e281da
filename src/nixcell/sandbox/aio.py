"""asyncio plumbing for cells: read pipes and wait for exits on the loop, no thread per cell."""

from __future__ import annotations

import contextlib
import os
import subprocess

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import IO

    from nixcell.sandbox.cgroups import CellCgroup


async def read_fd(fd: int, into: bytearray | None = None) -> bytes:
    """Read an fd to EOF without blocking the loop; ``into`` keeps what was read even when
    the read is cancelled (``finish_info``)."""
    import asyncio

    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    loop.remove_reader(fd)
                    if not done.done():
                        done.set_result(None)
                    return
                chunks.append(chunk)
                if into is not None:
                    into.extend(chunk)
        except BlockingIOError:
            return
        except OSError as exc:
            loop.remove_reader(fd)
            if not done.done():
                done.set_exception(exc)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


async def wait_exit(proc: subprocess.Popen[bytes]) -> int:
    """Await a child's exit through a pidfd: no thread, no SIGCHLD handler."""
    import asyncio

    loop = asyncio.get_running_loop()
    if proc.poll() is not None:
        return proc.returncode
    pidfd = os.pidfd_open(proc.pid)
    try:
        if proc.poll() is None:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, lambda: ready.done() or ready.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(pidfd)
        return proc.wait()
    finally:
        os.close(pidfd)


def finish_info(fd: int, got: bytes, limit: float = 5.0) -> int | None:
    """bwrap's pid-1 after ``read_fd`` of its info was cancelled: the rest read here (blocking,
    at most ``limit`` s: bwrap writes it at once). Without it, killing bwrap alone would leave
    its pid-1 running, and closing the block fd would then let the command start."""
    import select
    import time

    from nixcell.sandbox.bwrapio import parse_info

    data = bytearray(got)
    deadline = time.monotonic() + limit
    with contextlib.suppress(OSError, ValueError):
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([fd], [], [], left)[0]:
                break
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            data += chunk
    return parse_info(bytes(data))


def feed(pipe: IO[bytes], data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError):
        pipe.write(data)
    with contextlib.suppress(BrokenPipeError):
        pipe.close()


async def until_empty(cgroup: CellCgroup, limit: float = 0.25) -> asyncio.CancelledError | None:
    """Wait (on the loop, polling from 0.25 ms up) until an ended cell's processes have left its
    cgroup, at most ``limit`` s; ``remove`` then finds it empty. A cancellation is returned,
    not raised: the caller's teardown must finish first."""
    import asyncio
    import time

    deadline = time.monotonic() + limit
    delay = 0.00025
    while cgroup.pids() and time.monotonic() < deadline:
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError as exc:
            return exc
        delay = min(delay * 2, 0.01)
    return None
