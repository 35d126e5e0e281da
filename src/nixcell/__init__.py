"""nixcell: run any command inside a cell — only the Nix packages it asked for.

The public face: ``run``/``run_async`` take a ``CellSpec`` and return a ``RunResult``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not `from typing import …`: typing costs ~9 ms of CLI start-up
__version__ = "0.1.0"

if TYPE_CHECKING:
    from nixcell.errors import NixcellError
    from nixcell.runner import RunResult
    from nixcell.spec import CellSpec, Limits, Mount

__all__ = [
    "CellSpec",
    "Limits",
    "Mount",
    "NixcellError",
    "RunResult",
    "__version__",
    "run",
    "run_async",
]

_LAZY = {
    "CellSpec": "nixcell.spec",
    "Limits": "nixcell.spec",
    "Mount": "nixcell.spec",
    "NixcellError": "nixcell.errors",
    "RunResult": "nixcell.runner",
    "run": "nixcell.runner",
    "run_async": "nixcell.runner",
}


def __getattr__(name: str) -> object:
    """Import lazily: ``import nixcell`` must stay cheap for the CLI."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nixcell' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
