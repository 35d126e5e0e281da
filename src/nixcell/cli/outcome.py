"""What ``nixcell run`` prints after the cell: its one-line messages and the learned policy.

Shared by the click path and the fast path, so it uses plain ``sys`` streams.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False

if TYPE_CHECKING:
    from nixcell.runner import RunResult


def report(result: RunResult, learn_output: str | None = None) -> int:
    if result.network_summary:
        sys.stderr.write(f"nixcell: {result.network_summary}\n")
    if result.message:
        sys.stderr.write(f"nixcell: {result.message}\n")
    if result.learned_policy is not None:
        if learn_output:
            from nixcell.fsio import write_atomic

            write_atomic(learn_output, result.learned_policy)  # never a half-written policy
        else:
            sys.stdout.write(result.learned_policy)
            sys.stdout.flush()
    return result.exit_code
