"""The ``nixcell`` launcher ./setup installs: Python in isolated mode, without ``site``.

pip's console script starts Python with ``site`` (every ``.pth`` file of the environment) and
imports ``re``; that is a fifth of a warm run. The launcher starts ``python -I -S``: no user
site-packages, no ``PYTHON*`` variables, no current directory on the path, no ``site``. It puts
nixcell's own directory first on ``sys.path`` and the environment's site-packages after the
standard library (so a third-party import that the warm path makes lazily still resolves); the
normal path then runs ``site.main()`` (``cli/entry.py``), so everything beyond the warm path sees
the environment exactly as under pip's script.

  python -m nixcell.cli.launcher PATH   # write the launcher to PATH (./setup: .venv/bin/nixcell)

A path with a space or a very long interpreter path cannot go in a ``#!`` line: then PATH is left
as it is (pip's script works, only slower).
"""

from __future__ import annotations

import os
import sys

_TEMPLATE = """#!{python} -IS
# nixcell's launcher (src/nixcell/cli/launcher.py): isolated mode, site only for the normal path.
import sys
sys.path[:0] = {first!r}
sys.path += {site_dirs!r}
from nixcell.cli.entry import main
main()
"""
_MAX_SHEBANG = 127  # what older kernels read of a #! line


def script() -> str | None:
    """The launcher for this interpreter and this nixcell, or None when it cannot be written."""
    import sysconfig

    import nixcell

    python = sys.executable
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(nixcell.__file__)))
    paths = sysconfig.get_paths()
    site_dirs = list(dict.fromkeys(p for p in (paths["purelib"], paths["platlib"]) if p))
    if any(c.isspace() for c in python) or len(python) + 5 > _MAX_SHEBANG:
        return None
    first = [] if package_root in site_dirs else [package_root]  # never site-packages before
    return _TEMPLATE.format(python=python, first=first, site_dirs=site_dirs)  # the stdlib


def install(path: str) -> str:
    """Write the launcher to ``path`` (atomically, mode 0755); what was done, in one line."""
    from nixcell.fsio import write_atomic

    text = script()
    if text is None:
        return f"kept {path}: the interpreter's path cannot go in a #! line"
    write_atomic(path, text, mode=0o755)
    return f"installed the isolated-mode launcher {path}"


if __name__ == "__main__":  # ./setup
    if len(sys.argv) != 2:
        sys.exit("usage: python -m nixcell.cli.launcher PATH")
    print(f"setup: {install(sys.argv[1])}")
