"""The host side of a Docker cell: a private directory dockerd binds things from.

``<root>/<owner>.<cell id>/`` (root: ``/run/nixcell/docker``, 0700; a user: the state dir)
holds what ``dockerspec.Layout`` names: ``files/N`` (data files, 0444), ``links/N`` (directories
of the plan's symlinks), and for a root-run cell ``stage/N`` (the binds, idmapped so that the
invoker's files appear owned by the cell's uid: ``idmap.py``, opened without following links)
and ``scratch`` (the --disk tmpfs holding every writable area). The parents are root's own, so
no cell can swap a component before dockerd resolves the path. Mounts here live in the host's
mount namespace, under the cell's directory made a private mount first (nothing propagates):
``remove`` detaches them before deleting anything (a directory that is still a mount point is
never descended into), and ``sweep`` does the same for a killed nixcell's directories (its
owner tag names a dead process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat

from nixcell import paths
from nixcell.errors import SandboxError
from nixcell.planview import SCRATCH_AREAS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.sandbox.dockerspec import Layout

log = logging.getLogger(__name__)
MNT_DETACH = 2
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18


def root_dir(kind: str = "docker") -> str:
    """Where ``kind``'s cell directories live (``docker``; ``gvisor`` keeps its bundles here)."""
    if os.geteuid() == 0:
        return f"/run/nixcell/{kind}"
    return os.path.join(paths.state_root(), kind)


def cell_dir(cell_id: str, kind: str = "docker") -> str:
    from nixcell.leftovers import owner_tag

    return os.path.join(root_dir(kind), f"{owner_tag()}.{cell_id}")


def _private(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SandboxError(f"{path} is not a directory of nixcell's own")
    os.chmod(path, 0o700)


def prepare(layout: Layout, user: tuple[int, int], swap: bool = False) -> None:
    """Make everything ``layout`` binds from, under ``layout.top`` (removed by ``remove``);
    ``swap``: the staged binds map the cell's uid back to the invoker's too (``idmap``)."""
    root = os.path.dirname(layout.top)
    _private(root)
    os.mkdir(layout.top, 0o700)
    if layout.files:
        os.mkdir(f"{layout.top}/files", 0o755)
    for name, data in layout.files.items():
        fd = os.open(f"{layout.top}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with open(fd, "wb") as f:
            f.write(data)
    if layout.links:
        os.mkdir(f"{layout.top}/links", 0o755)
    for name, links in layout.links.items():
        os.mkdir(f"{layout.top}/{name}", 0o755)
        for link, target in links.items():
            os.symlink(target, f"{layout.top}/{name}/{link}")
    if layout.stage or layout.scratch is not None:
        _private_mount(layout.top)
    if layout.stage:
        _stage(layout, user, swap)
    if layout.scratch is not None:
        _scratch(layout, user)


def _private_mount(top: str) -> None:
    """``top`` as a private mount of its own: what nixcell attaches beneath it (idmapped binds,
    the scratch tmpfs) propagates to no other mount namespace sharing the host's peer group."""
    from nixcell.sandbox import idmap

    idmap.mount(top, top, None, MS_BIND, None)
    idmap.mount(None, top, None, MS_PRIVATE, None)


def _stage(layout: Layout, user: tuple[int, int], swap: bool) -> None:
    from nixcell.sandbox import idmap
    from nixcell.sandbox.bwrapio import open_nofollow

    userns = idmap.mapping_fd(os.getuid(), user[0], os.getgid(), user[1], swap)
    os.mkdir(f"{layout.top}/stage", 0o755)
    for index, source, readonly in layout.stage:
        fd = open_nofollow(source)
        try:
            target = f"{layout.top}/stage/{index}"
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            tree = idmap.idmapped_tree(source, userns, readonly=readonly, fd=fd)
            try:
                idmap.attach(tree, target)
            finally:
                os.close(tree)
        finally:
            os.close(fd)


def _scratch(layout: Layout, user: tuple[int, int]) -> None:
    from nixcell.sandbox import idmap

    top = f"{layout.top}/scratch"
    size = int(layout.scratch or 0)
    os.mkdir(top, 0o755)
    inodes = max(1024, size // 4096)
    idmap.mount("tmpfs", top, "tmpfs", 0, f"mode=0755,size={size},nr_inodes={inodes}")
    for name, _, mode in SCRATCH_AREAS:
        os.mkdir(f"{top}/{name}")
        os.chown(f"{top}/{name}", *user)
        os.chmod(f"{top}/{name}", mode)


def _mounts_under(top: str) -> list[str]:
    """Mount points at or under ``top`` in our mount namespace, deepest first."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == top or point.startswith(top + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove(top: str) -> None:
    """Detach what is mounted under ``top``, then delete the files nixcell made there."""
    if not os.path.isdir(top):
        return
    from nixcell.sandbox import libc

    for point in _mounts_under(top):
        try:
            libc.call("umount2", point.encode(), MNT_DETACH)
        except OSError as exc:
            log.warning("cannot detach %s: %s", point, exc)
    if _mounts_under(top):
        log.warning("leaving %s: something is still mounted there", top)
        return
    _delete(top)


def _delete(top: str) -> None:
    """Our known layout only: files/, links/N/, stage/N, scratch, and gVisor's bundle/ (walked
    without following links: ``treeremove``) — nothing descended blindly."""
    if os.path.isdir(f"{top}/bundle"):
        from nixcell.treeremove import remove_tree

        remove_tree(f"{top}/bundle")
    for sub in ("files", "links", "stage"):
        base = f"{top}/{sub}"
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(base):
                path = f"{base}/{name}"
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    for link in os.listdir(path):
                        os.unlink(f"{path}/{link}")  # a links/N directory's symlinks
                    os.rmdir(path)
                else:
                    os.unlink(path)
            os.rmdir(base)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(f"{top}/scratch")  # empty once its tmpfs is detached
    os.rmdir(top)


def sweep(kind: str = "docker") -> list[str]:
    """Directories of dead nixcell processes, detached and removed."""
    from nixcell.leftovers import _start_time

    removed = []
    try:
        names = os.listdir(root_dir(kind))
    except OSError:
        return []
    for name in names:
        owner = name.split(".", 1)[0]
        pid, _, start = owner.partition("-")
        if pid.isdigit() and str(_start_time(int(pid))) == start:
            continue  # its nixcell is alive
        try:
            remove(os.path.join(root_dir(kind), name))
            removed.append(name)
        except OSError as exc:
            log.warning("cannot sweep %s: %s", name, exc)
    return removed
