"""Which wiring a run's stdio gets, decided before anything heavy is imported.

The common case (no stream is a terminal, no pty asked for) costs three ``isatty`` calls; only
otherwise is ``pty.py`` (termios, the relay) imported.
"""

from __future__ import annotations

from nixcell import ttymode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.launch import CellLaunch
    from nixcell.sandbox.pty import Terminal


def wire(plan: Plan, streams: tuple, launch: CellLaunch, input: bytes | None) -> Terminal | None:
    """The cell's own pty or pipes for host terminals (``pty.for_run``); None: pass as they are."""
    if ttymode.stdio(plan.tty, ttymode.stream_ttys(streams)) == ttymode.DIRECT:
        return None
    from nixcell.sandbox import pty

    owner = launch.identity.uid if launch.identity is not None else None
    return pty.for_run(plan, streams, owner, input)
