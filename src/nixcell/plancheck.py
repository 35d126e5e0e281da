"""Is a cached plan still the plan for now? The one check the warm fast path makes.

A plan is a pure function of the spec, the closure and a few host facts; the fast path's cache
key covers the flags, the directory, the user, the environment and the files the flags name.
What it cannot cover is the host paths the plan looked at: a ``--hide`` target that was a
directory (hidden by an empty tmpfs) and is now a file, or was missing and now exists; a bind
source gone, changed kind, or reached through a symbolic link planted since (the normal path
refuses those). When any differ, the plan is made again by the normal path, which then errors
in its own words if the change is one it refuses. Stdlib only: the warm path imports it.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan


def stale_reason(plan: Plan) -> str | None:
    """Why ``plan`` must not run as cached (a short phrase for the debug log), or None."""
    if plan.store_dir is not None:  # a copy store mode: the copy, not the host store, holds it
        reason = _copy_stale(plan)
        if reason is not None:
            return reason
    elif not plan.path_dirs or not os.path.isdir(plan.store_source(plan.path_dirs[0])):
        return "its closure is gone from the store"
    if plan.nix_root is not None:  # the root is checked again: it may have become writable
        from nixcell.errors import NixcellError
        from nixcell.nix.storeroot import check_root, has_database

        try:
            check_root(plan.nix_root)
        except NixcellError as exc:
            return exc.message
        if not has_database(plan.nix_root):
            return "the Nix root's store was wiped"
    for role, path, kind in plan.checked:
        now = link_kind(path) if role == "project" else path_kind(path)
        if now != kind:
            return f"{role} path {path} was {kind} and is {now} now"
        if role == "daemon" and connect_error(path) is not None:
            return f"the Nix daemon does not answer at {path}"
        if role == "bind" and first_link(path) is not None:
            return f"bind source {path} is reached through a symbolic link now"
    for name, present in plan.passed_env:  # their values were baked into env when planned
        now = os.environ.get(name)
        if (now is not None) != present or (present and now != plan.env.get(name)):
            return f"passed variable {name} changed"
    for path, mtime, size, ino in plan.stamps:
        try:
            st = os.stat(path)
        except OSError:
            return f"{path} is gone"
        if (st.st_mtime_ns, st.st_size, st.st_ino) != (mtime, size, ino):
            return f"{path} changed"
    from nixcell.preflight import made_by_nixcell

    for op in plan.mounts:  # every other bind source the executor will open
        if op.kind not in ("bind", "ro-bind") or made_by_nixcell(plan, op) is not None:
            continue  # (the --disk scratch exists only in the cell's own mount namespace)
        src = plan.host_source(op)
        if src and not src.startswith(plan.store_source("/nix/store/")) and not os.path.exists(src):
            return f"mount source {src} is gone"
    return None


def _copy_stale(plan: Plan) -> str | None:
    """A copy store mode's plan runs only on the copy it was made for: the manifest written
    with it (each refresh renames a new one in) and every closure entry still there (what the
    normal path's refresh would copy again)."""
    from nixcell.errors import NixcellError
    from nixcell.nix.storecopy import check_copy_dir
    from nixcell.nix.storestamp import manifest_stamp, missing_entry

    try:  # ours and writable by us alone, reached through no link: else another could swap it
        check_copy_dir(plan.store_dir)
    except NixcellError as exc:
        return exc.message
    if manifest_stamp(plan.store_dir) != plan.store_stamp:
        return f"the store copy in {plan.store_dir} changed"
    missing = missing_entry(plan.store_dir, plan.closure)
    if missing is not None:
        return f"the store copy in {plan.store_dir} lacks {missing}"
    return None


def connect_error(path: str) -> str | None:
    """Why a Unix socket accepts no connection (a socket file outlives its daemon), or None;
    with the built-in ``_socket``, not ``socket`` (enum, selectors): this runs on the warm
    path."""
    import _socket

    probe = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        probe.close()
    return None


def path_kind(path: str) -> str:
    """What ``path`` leads to: "dir", "file" (anything else) or "missing"."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "missing"
    return "dir" if stat.S_ISDIR(mode) else "file"


def link_kind(path: str) -> str:
    """``path_kind``, but a symbolic link is "link:" and where it points: a project's hidden
    ``~/.ssh -> dotfiles/ssh`` re-pointed (or a link planted, dangling) changes the plan."""
    try:
        return "link:" + os.readlink(path)
    except OSError:
        return path_kind(path)


def first_link(path: str) -> str | None:
    """The first component of ``path`` that is a symbolic link (None: there is none)."""
    seen = os.sep
    for part in [p for p in os.path.normpath(path).split(os.sep) if p]:
        seen = os.path.join(seen, part)
        if os.path.islink(seen):
            return seen
    return None
