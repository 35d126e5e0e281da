"""Where nixcell can run cells: Linux (bwrap). On macOS it refuses, in one line, until a macOS
backend runs the sandbox-exec profile it already makes (``sandbox/macos.py``).

``NIXCELL_PLATFORM=darwin`` makes nixcell refuse as on macOS, so the refusal is tested on Linux;
it can only add the refusal, never lift it: on macOS no value of it lets a cell run.
Stdlib ``os`` and ``sys`` only: this is checked on the warm path.
"""

from __future__ import annotations

import os
import sys

MACOS_REFUSAL = (
    "nixcell cannot run cells on macOS yet: no macOS backend; `nixcell run --dry-run --sbpl` "
    "prints the profile a future backend would use"
)


def is_macos() -> bool:
    return sys.platform == "darwin" or os.environ.get("NIXCELL_PLATFORM") == "darwin"


def refuse_cells() -> None:
    """Raise the one-line refusal where no cell can run (every path that starts one calls it)."""
    if is_macos():
        from nixcell.errors import PlatformError

        raise PlatformError(MACOS_REFUSAL)
