"""What ``nixcell run`` prints after the cell: its one-line messages and the learned policy.

Shared by the click path and the fast path, so it uses plain ``sys`` streams.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False

if TYPE_CHECKING:
    from nixcell.runner import RunResult


def report(result: RunResult, learn_output: tuple[int, str] | None = None) -> int:
    """Print the run's messages; ``learn_output``: (directory fd opened before the run, name)."""
    from nixcell.cli.entry import one_line

    access = getattr(result, "access", None)  # --debug: the network line joins its block
    if result.network_summary and access is None:  # hosts and paths the cell sent: escaped
        sys.stderr.write(f"nixcell: {one_line(result.network_summary)}\n")
    if result.message:
        sys.stderr.write(f"nixcell: {result.message}\n")
    if access is not None:
        from nixcell.debugtrace import report_lines

        lines = report_lines(access, result.network_summary)
        sys.stderr.write("".join(f"{line}\n" for line in lines))
        sys.stderr.flush()
    if result.learned_policy is not None:
        if learn_output:
            from nixcell.errors import NixcellError
            from nixcell.fsio import write_atomic

            # Into the directory opened before the cell ran, under a fresh O_EXCL temp name,
            # renamed over the target: a link planted there meanwhile is replaced, not followed.
            dir_fd, name = learn_output
            try:
                write_atomic(name, result.learned_policy, dir_fd=dir_fd)
                return result.exit_code
            except (OSError, NixcellError) as exc:  # disk full since: never lose the policy
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                sys.stderr.write(
                    f"nixcell: cannot write the learned policy to {name}: {reason}; "
                    "it follows on stdout\n"
                )
                sys.stdout.write(result.learned_policy)
                sys.stdout.flush()
                return result.exit_code or 1
        else:
            sys.stdout.write(result.learned_policy)
            sys.stdout.flush()
    if result.no_network is not None:  # always the last line
        sys.stderr.write(f"nixcell: {result.no_network.line()}\n")
    return result.exit_code
