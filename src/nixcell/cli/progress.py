"""Progress lines for slow resolutions: a live status on a terminal, plain lines otherwise."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def reporter() -> Iterator[Callable[[str], None]]:
    """Yield a callback; building lines update a spinner on a tty, notices are printed."""
    status = None

    def report(message: str) -> None:
        nonlocal status
        if not message.startswith("building "):
            sys.stderr.write(f"nixcell: {message}\n")
            return
        if not sys.stderr.isatty():
            sys.stderr.write(f"nixcell: {message}\n")
            return
        if status is None:
            from rich.console import Console

            status = Console(stderr=True).status(message)
            status.start()
        else:
            status.update(message)

    try:
        yield report
    finally:
        if status is not None:
            status.stop()
