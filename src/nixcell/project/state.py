"""A project's host-side places: ``.nixcell/local/{cache,config,data,state}`` (the cell's XDG
directories, kept between runs), ``.nixcell/`` itself and the audit directory.

Made before the cell runs, by nixcell on the host, in a tree a previous cell could write: every
step is an ``openat`` with ``O_NOFOLLOW`` from the directory above, so a symlink planted at any
component (``local/cache -> ~/.ssh``) is refused, never followed. Making ``.nixcell/`` (and
``.git/hooks`` of a repository) now also means a cell never finds them missing and creates
them itself: they exist, and the cell sees them read-only.
"""

from __future__ import annotations

import os
import stat

from nixcell.errors import StateError

STATE_NAMES = ("cache", "config", "data", "state")
GITIGNORE = "local/\nstore/\n"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.project.load import Project


def project_id(root: str) -> str:
    """A stable name for the project in nixcell's own state dir (never inside the project)."""
    from nixcell.hashing import digest

    return f"{os.path.basename(root) or 'root'}-{digest(os.path.realpath(root))[:16]}"


def audit_dir(root: str) -> str:
    from nixcell import paths

    return os.path.join(str(paths.state_dir()), "projects", project_id(root))


def _subdir(dfd: int, name: str, where: str, mode: int, create: bool = True) -> int | None:
    """An fd of directory ``name`` in ``dfd`` (made when missing), never through a symlink."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(2):
        try:
            return os.open(name, flags, dir_fd=dfd)
        except FileNotFoundError:
            if not create:
                return None
            try:
                os.mkdir(name, mode, dir_fd=dfd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise StateError(f"cannot create {where}: {exc.strerror}") from None
        except OSError as exc:
            kind = _kind_at(dfd, name)
            if kind == "link":
                raise StateError(
                    f"refusing {where}: it is a symbolic link (a cell may have planted it); "
                    "remove it"
                ) from None
            raise StateError(f"cannot use {where}: {exc.strerror}") from None
    raise StateError(f"cannot use {where}: it keeps changing")


def _kind_at(dfd: int, name: str) -> str | None:
    try:
        mode = os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode
    except OSError:
        return None
    return "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "other"


def _write_missing(dfd: int, name: str, text: str) -> None:
    if _kind_at(dfd, name) is not None:
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=dfd)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(text)


def ensure_state(project: Project) -> None:
    """Make (or check) the project's state dirs, ``.nixcell/``, ``.git/hooks`` and the audit
    dir; ``StateError`` when a cell swapped one of them for a symlink."""
    from nixcell.fsio import private_dir

    root = project.root
    private_dir(audit_dir(root))
    if project.level == "strict":  # the project is not mounted: no state binds
        return
    rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds = [rfd]
    try:
        meta = _subdir(rfd, ".nixcell", f"{root}/.nixcell", 0o755)
        fds.append(meta)
        _write_missing(meta, ".gitignore", GITIGNORE)
        local = _subdir(meta, "local", f"{root}/.nixcell/local", 0o700)
        fds.append(local)
        for name in STATE_NAMES:
            fds.append(_subdir(local, name, f"{root}/.nixcell/local/{name}", 0o700))
        git = (
            _subdir(rfd, ".git", f"{root}/.git", 0o755, create=False)
            if _kind_at(rfd, ".git") in ("dir", "link")
            else None
        )
        if git is not None:
            fds.append(git)
            fds.append(_subdir(git, "hooks", f"{root}/.git/hooks", 0o755))
    finally:
        for fd in fds:
            if fd is not None:
                os.close(fd)
