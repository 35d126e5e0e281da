"""A cell's network namespace: only ``lo``, with the proxy's listening socket inside it.

DESIGN.md §4, verified here: a short-lived forked helper ``unshare``s a network namespace (inside
a new user namespace when we are not root, so no privilege is needed), brings ``lo`` up, binds
and listens on ``127.0.0.1:PORT``, and hands back over ``SCM_RIGHTS`` the listening socket plus
fds of its namespaces; then it exits. Those fds keep the namespaces alive. The host-side proxy
``accept()``s on the socket — it lives in the cell's namespace, while the proxy's upstream
connections leave from the host's. The cell is started inside the namespace through ``nsenter``
on those fds, so there is no veth, no bridge, no route out: every destination other than the
proxy is unreachable by construction, and if the proxy goes away the socket closes and the cell
is cut off (fail closed). The helper itself is ``sandbox/holder.py``'s, which also makes the
mount namespace of a root-run cell's idmapped binds in the same fork.
"""

from __future__ import annotations

from nixcell.errors import NetworkError, SandboxError
from nixcell.sandbox.holder import CellNamespaces, nsenter_path

CellNetwork = CellNamespaces
DEFAULT_PORT = 3128

__all__ = ["DEFAULT_PORT", "CellNetwork", "create", "nsenter_path"]


def create(port: int = DEFAULT_PORT, **staging: object) -> CellNamespaces:
    """A fresh namespace with only ``lo`` and a listener on ``127.0.0.1:port`` inside it.

    ``staging``: what else the same helper makes (``holder.create``'s trees, idmap, parent)."""
    from nixcell.sandbox import holder

    try:
        return holder.create(port, **staging)  # type: ignore[arg-type]
    except SandboxError as exc:
        raise NetworkError(f"cannot create the cell's network namespace: {exc}") from None
