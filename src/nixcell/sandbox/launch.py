"""How a planned cell is started: as which host uid, inside which held namespaces.

The plan says *that* a root-run cell has a subordinate identity and which binds come through the
idmapped stage; this module carries it out: it takes a uid slot (``identity.py``), makes the user
namespace that maps the invoking user onto it (``idmap.py``) and says what the namespace helper
(``holder.py``, or the network session's, which makes the netns in the same fork) must stage.
Then it builds the launcher that enters those namespaces and switches to the cell's uid.
``parent``: namespaces the cell is started inside (an MCP session's workspace volume).
``close`` releases all of it, whatever happened.
"""

from __future__ import annotations

import os

from nixcell.errors import SandboxError
from nixcell.quiet import suppress
from nixcell.sandbox import identity as ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from nixcell.plan import Plan
    from nixcell.sandbox.holder import CellNamespaces
    from nixcell.sandbox.stage import StagedTree


class CellLaunch:
    def __init__(self, plan: Plan, parent: CellNamespaces | None = None) -> None:
        from nixcell.platforms import refuse_cells

        refuse_cells()  # every cell starts here: none on a system without a backend
        self.plan = plan
        self.parent = parent
        self.identity: ids.CellIdentity | None = None
        self.namespaces: CellNamespaces | None = None
        self._own_namespaces = False
        self._idmap_userns: int | None = None
        self._fds: list[int] = []  # bind sources opened for the namespace helper
        root = os.geteuid() == 0
        if root != (plan.identity == "subordinate"):  # fail closed: never a root-mapped cell
            who = "root" if plan.identity == "subordinate" else "an ordinary user"
            raise SandboxError(f"this plan was made for {who}; plan the cell again as this user")
        if plan.volumes and parent is None:  # else the "volume" would be a host directory
            raise SandboxError("internal: a cell with a workspace volume needs its namespaces")
        if root:
            self.identity = ids.allocate()

    def holder_args(self) -> dict[str, object]:
        """What the namespace helper must do for this cell beyond its network."""
        trees = self._trees()
        scratch = None
        if self.plan.scratch is not None:  # owned by the cell's host uid: its home is its own
            uid = self.identity.uid if self.identity else os.getuid()
            gid = self.identity.gid if self.identity else os.getgid()
            scratch = (self.plan.scratch, uid, gid)
        return {
            "trees": trees,
            "idmap_userns": self._idmap_userns,
            "parent": self.parent,
            "scratch": scratch,
        }

    def _trees(self) -> list[StagedTree]:
        """The plan's stage, each host source opened without following links, and the user
        namespace that idmaps them (made once per process: ``idmap.mapping_fd``)."""
        from nixcell.sandbox import idmap
        from nixcell.sandbox.stage import StagedTree  # (not imported by cells without a stage)

        trees = []
        for op in self.plan.stage:  # a volume's path means something only in its namespaces
            fd = None if op.source in self.plan.volumes else idmap.open_nofollow(op.source)
            if fd is not None:
                self._fds.append(fd)
            trees.append(StagedTree(op.source, op.index, op.readonly, op.is_dir, fd))
        if trees and self.identity is not None and self._idmap_userns is None:
            uid, gid = self.identity.uid, self.identity.gid
            self._idmap_userns = idmap.mapping_fd(os.getuid(), uid, os.getgid(), gid)
        return trees

    def stage_in_child(self) -> Callable[[], None] | None:
        """For an executor that forks the process becoming bwrap (``direct.py``): when a
        root-run cell's own mount namespace holds only its stage and --disk scratch (no
        network, no parent), a function that builds it in that child (``stage.build_here``,
        before the child drops root), in place of the namespace helper and the ``nsenter``
        launcher. Else None: ``hold_own``. (An ordinary user's scratch needs a user namespace
        of its own: the helper's.)"""
        plan = self.plan
        if self.identity is None or self.parent is not None or plan.volumes:
            return None
        if not plan.stage and plan.scratch is None:
            return None
        from nixcell.sandbox import stage

        trees = self._trees()
        userns = self._idmap_userns
        if trees:
            stage.ensure_stage()
        scratch = None
        if plan.scratch is not None:
            stage.ensure_root_mount_point("scratch")
            scratch = (plan.scratch, self.identity.uid, self.identity.gid)
        return lambda: stage.build_here(trees, userns, scratch)

    def use(self, namespaces: CellNamespaces | None) -> None:
        """The namespaces the cell starts in (made with ``holder_args``)."""
        self.namespaces = namespaces
        self._close_idmap()

    def hold_own(self) -> None:
        """No network: make the stage's mount namespace here if the plan has a stage; or start
        right inside the parent's namespaces."""
        if self.plan.stage or self.plan.scratch is not None:
            from nixcell.sandbox import holder

            self.use(holder.create(None, **self.holder_args()))  # type: ignore[arg-type]
            self._own_namespaces = True
        elif self.parent is not None:
            self.namespaces = self.parent

    def launcher(self) -> list[str] | None:
        if self.namespaces is None:
            return None
        from nixcell.sandbox.holder import CellNamespaces, nsenter_path

        ns = self.namespaces
        if self.parent is not None and ns is not self.parent:  # the parent's userns, our others
            ns = CellNamespaces(
                None,
                None,
                netns_fd=ns.netns_fd,
                userns_fd=ns.userns_fd if ns.userns_fd is not None else self.parent.userns_fd,
                mntns_fd=ns.mntns_fd if ns.mntns_fd is not None else self.parent.mntns_fd,
            )
        uid = self.identity.uid if self.identity else None
        gid = self.identity.gid if self.identity else None
        return ns.enter_argv(nsenter_path(), uid, gid)

    def user(self) -> tuple[int, int] | None:
        """(uid, gid) to start as when no launcher switches identity."""
        if self.identity is None or self.namespaces is not None:
            return None
        return self.identity.uid, self.identity.gid

    def _close_idmap(self) -> None:
        self._idmap_userns = None  # idmap's cache keeps the namespace for the next cell
        for fd in self._fds:  # the helper has made its clones of them
            with suppress(OSError):
                os.close(fd)
        self._fds = []

    def close(self) -> None:
        self._close_idmap()
        if self._own_namespaces and self.namespaces is not None:
            self.namespaces.close()
        if self.identity is not None:
            self.identity.release()
            self.identity = None
