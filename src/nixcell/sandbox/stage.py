"""A root-run cell's own mount namespace: its idmapped stage under STAGE, its --disk scratch.

Apart from ``holder.py`` so that the warm path (``direct.py``) can build them in the very
process that becomes bwrap, importing no more than ``os``, ``idmap`` and ``libc``: no helper
fork, no ``nsenter`` exec, no ``socket`` or ``dataclasses`` (those imports alone were ~12 ms of
a root-run ``--bind``). ``holder.py`` builds the same in its helper when the cell also needs a
network or a parent's namespaces, or runs as an ordinary user (who needs a user namespace).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `import typing` nor collections.abc: the warm path loads this
if TYPE_CHECKING:
    from collections.abc import Sequence

STAGE = "/run/nixcell/stage"  # an empty directory on the host; a tmpfs in each cell's namespace
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_SLAVE = 1 << 19


class StagedTree:
    """A host path to clone, idmap and attach at ``STAGE/<index>`` in the cell's namespace.

    The clone is made after any parent namespaces were entered, so a path that exists only
    there (a session's workspace volume) is found too. (A plain class: ``dataclasses`` costs
    the warm path milliseconds.)
    """

    __slots__ = ("fd", "index", "is_dir", "readonly", "source")

    def __init__(
        self, source: str, index: int, readonly: bool, is_dir: bool, fd: int | None = None
    ) -> None:
        self.source = source
        self.index = index
        self.readonly = readonly
        self.is_dir = is_dir
        self.fd = fd  # the source opened without following links (idmap.open_nofollow)

    def __repr__(self) -> str:
        return f"StagedTree({self.source!r}, {self.index}, ro={self.readonly}, dir={self.is_dir})"


def root_mount_point(name: str) -> str:
    """A root-run cell's empty host directory (``/run/nixcell/NAME``) that a tmpfs covers inside
    its own mount namespace: the stage, the --disk scratch, a session's volume."""
    return f"{os.path.dirname(STAGE)}/{name}"


def ensure_root_mount_point(name: str) -> str:
    """Make it: an empty root-owned directory nobody else can write."""
    from nixcell.sandbox.rundir import root_dir

    os.makedirs("/run", mode=0o755, exist_ok=True)
    return root_dir(root_mount_point(name), 0o755)


def ensure_stage() -> None:
    """The host side of the stage."""
    ensure_root_mount_point(os.path.basename(STAGE))


def clone_opened(trees: Sequence[StagedTree], userns: int | None) -> dict[int, int]:
    """Idmapped clones of the trees opened on the host, by index: made while still in the
    host's mount namespace (the kernel clones a mount only from the caller's own)."""
    from nixcell.sandbox import idmap

    cloned: dict[int, int] = {}
    try:
        for tree in trees:
            if tree.fd is not None:
                assert userns is not None
                cloned[tree.index] = idmap.idmapped_tree(
                    tree.source, userns, readonly=tree.readonly, fd=tree.fd
                )
    except BaseException:
        for fd in cloned.values():
            os.close(fd)
        raise
    return cloned


def populate(trees: Sequence[StagedTree], userns: int, cloned: dict[int, int]) -> None:
    """In the cell's fresh mount namespace: make it a slave of the host's (nothing mounted here
    reaches the host), put a tmpfs on STAGE and attach each tree at STAGE/<index>; the trees
    not in ``cloned`` (a volume's path) are cloned here, where they exist."""
    from nixcell.sandbox import idmap

    idmap.mount(None, "/", None, MS_REC | MS_SLAVE, None)
    idmap.mount("tmpfs", STAGE, "tmpfs", 0, "mode=0755,size=64k,nr_inodes=4096")
    for tree in trees:
        target = f"{STAGE}/{tree.index}"
        if tree.is_dir:
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        fd = cloned.pop(tree.index, None)
        if fd is None:
            fd = idmap.idmapped_tree(tree.source, userns, readonly=tree.readonly)
        try:
            idmap.attach(fd, target)
        finally:
            os.close(fd)


def mount_scratch(top: str, size: int, owner: tuple[int, int]) -> None:
    """One tmpfs for all writable areas at ``top``: --disk bounds their bytes together, and
    their inodes (in the cell's fresh mount namespace, made a slave of the host's first)."""
    from nixcell.planview import SCRATCH_AREAS
    from nixcell.sandbox import idmap

    idmap.mount(None, "/", None, MS_REC | MS_SLAVE, None)
    inodes = max(1024, size // 4096)
    idmap.mount("tmpfs", top, "tmpfs", 0, f"mode=0755,size={size},nr_inodes={inodes}")
    for name, _, mode in SCRATCH_AREAS:
        path = f"{top}/{name}"
        os.mkdir(path)
        os.chown(path, *owner)
        os.chmod(path, mode)


def build_here(
    trees: Sequence[StagedTree],
    userns: int | None,
    scratch: tuple[int, int, int] | None = None,
) -> None:
    """Give the calling process (about to become bwrap) its own mount namespace holding the
    stage and the ``scratch`` tmpfs (size, owner uid, gid). Run in the forked child of a
    root-run cell before it drops root; the namespace dies with bwrap."""
    from nixcell.sandbox import idmap

    cloned = clone_opened(trees, userns)
    idmap.unshare(CLONE_NEWNS)
    if trees:
        assert userns is not None
        populate(trees, userns, cloned)
    if scratch is not None:
        mount_scratch(root_mount_point("scratch"), scratch[0], (scratch[1], scratch[2]))
