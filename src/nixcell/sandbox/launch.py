"""How a planned cell is started: as which host uid, inside which held namespaces.

The plan says *that* a root-run cell has a subordinate identity and which binds come through the
idmapped stage; this module carries it out: it takes a uid slot (``identity.py``), makes the
idmapped trees (``idmap.py``), and — once the namespaces holding them exist (``holder.py``, or
the network session's, which makes them in the same fork) — builds the launcher that enters
them and switches to the cell's uid. ``close`` releases all of it, whatever happened.
"""

from __future__ import annotations

import contextlib
import os

from nixcell.sandbox import identity as ids
from nixcell.sandbox.holder import CellNamespaces, StagedTree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan


class CellLaunch:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.identity: ids.CellIdentity | None = None
        self.trees: list[StagedTree] = []
        self.namespaces: CellNamespaces | None = None
        self._own_namespaces = False
        root = os.geteuid() == 0
        if root != (plan.identity == "subordinate"):  # fail closed: never a root-mapped cell
            from nixcell.errors import SandboxError

            who = "root" if plan.identity == "subordinate" else "an ordinary user"
            raise SandboxError(f"this plan was made for {who}; plan the cell again as this user")
        if root:
            self.identity = ids.allocate()

    def open_stage(self) -> list[StagedTree]:
        """The idmapped trees of the plan's stage (invoking user's files -> the cell's uid)."""
        if not self.plan.stage or self.identity is None:
            return []
        from nixcell.sandbox import idmap

        userns = idmap.userns_fd(os.getuid(), self.identity.uid, os.getgid(), self.identity.gid)
        try:
            for op in self.plan.stage:
                fd = idmap.idmapped_tree(op.source, userns, readonly=op.readonly)
                self.trees.append(StagedTree(fd, op.index, op.is_dir))
        except BaseException:
            self._close_trees()
            raise
        finally:
            os.close(userns)
        return self.trees

    def use(self, namespaces: CellNamespaces | None) -> None:
        """The namespaces the cell starts in (made with ``open_stage``'s trees, if any)."""
        self.namespaces = namespaces
        self._close_trees()  # attached in the namespaces' stage; our copies are not needed

    def hold_own(self) -> None:
        """No network: make the stage's mount namespace here, if the plan has a stage."""
        if self.plan.stage:
            from nixcell.sandbox import holder

            self.use(holder.create(None, self.open_stage()))
            self._own_namespaces = True

    def launcher(self) -> list[str] | None:
        if self.namespaces is None:
            return None
        from nixcell.sandbox.holder import nsenter_path

        uid = self.identity.uid if self.identity else None
        gid = self.identity.gid if self.identity else None
        return self.namespaces.enter_argv(nsenter_path(), uid, gid)

    def user(self) -> tuple[int, int] | None:
        """(uid, gid) to start as when no launcher switches identity."""
        if self.identity is None or self.namespaces is not None:
            return None
        return self.identity.uid, self.identity.gid

    def pass_fds(self) -> list[int]:
        return self.namespaces.pass_fds() if self.namespaces is not None else []

    def _close_trees(self) -> None:
        for tree in self.trees:
            with contextlib.suppress(OSError):
                os.close(tree.fd)
        self.trees = []

    def close(self) -> None:
        self._close_trees()
        if self._own_namespaces and self.namespaces is not None:
            self.namespaces.close()
        if self.identity is not None:
            self.identity.release()
            self.identity = None
