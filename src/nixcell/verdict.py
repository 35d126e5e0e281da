"""What a finished cell's status means: nixcell's exit code and the one line it adds.

Pure, and imports nothing on the common path, so the CLI's warm path shares it with the runner.
"""

from __future__ import annotations

TIMEOUT_EXIT = 124
OOM_EXIT = 137


def verdict(
    code: int, timed_out: bool, oom: bool, timeout: float | None, memory: int | None
) -> tuple[int, str | None]:
    """(exit code, message) for a cell whose command exited with ``code`` (already 128+N for
    a signal): a timeout is 124, an OOM kill says so, naming the limit."""
    if timed_out:
        from nixcell.units import format_duration

        return TIMEOUT_EXIT, f"timed out after {format_duration(timeout or 0)}"
    if oom:
        from nixcell.units import format_size

        limit = format_size(memory or 0)
        if code == OOM_EXIT:
            return code, f"killed: out of memory (limit {limit})"
        return code, f"a process of the cell was killed: out of memory (limit {limit})"
    return code, None
