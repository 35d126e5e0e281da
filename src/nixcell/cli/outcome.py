"""What ``nixcell run`` prints after the cell: its one-line messages and the learned policy.

Shared by the click path and the fast path, so it uses plain ``sys`` streams.
"""

from __future__ import annotations

import os
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
            tmp = f"{learn_output}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
            with open(tmp, "w") as f:
                f.write(result.learned_policy)
            os.replace(tmp, learn_output)  # never a half-written policy file
        else:
            sys.stdout.write(result.learned_policy)
            sys.stdout.flush()
    return result.exit_code
