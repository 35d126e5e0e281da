"""Root's directories under /run/nixcell (uid slot locks, the stage): exact mode, checked.

Apart from ``holder.py`` so that allocating a cell's uid (``identity.py``) on the CLI's warm path
does not import the namespace helper's sockets and structs.
"""

from __future__ import annotations

import os
import stat

from nixcell.errors import SandboxError


def root_dir(path: str, mode: int) -> str:
    """A directory of root's under /run/nixcell: made with exactly ``mode`` (whatever the
    umask), and refused when it is a link, not root's, or writable by anyone else."""
    parent = os.path.dirname(path)
    if parent != "/run" and parent != "/":
        root_dir(parent, 0o755)
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # the umask narrowed (or widened?) it: make it exact
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise SandboxError(f"{path} must be a directory owned by root, writable only by it")
    return path
