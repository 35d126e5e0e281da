"""What a cell sees of /nix/store (the store modes) and of the host's network: plan pieces.

Pure, like ``plan.py`` (which calls these): the host facts were gathered before (``host.py``),
the copy of the copy modes made before (``nix/storecopy.py``).

- closure: one read-only bind per runtime closure path (the default; nothing else of the store);
- readonly: the whole host store, one read-only bind; no daemon socket;
- shared: readonly plus the Nix daemon's socket and ``NIX_REMOTE=daemon``: builds run in the
  host's daemon, as the cell's host uid;
- copy / isolated: the copy's directory bound read-only at /nix/store (as a bind of the plan, so
  a root-run cell gets it through its idmapped stage).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.host import HostFacts
    from nixcell.nix.closure import Closure
    from nixcell.plan import MountOp
    from nixcell.spec import CellSpec

STORE = "/nix/store"
DAEMON_SOCKET = "/nix/var/nix/daemon-socket/socket"
RESOLV_CONF = "/etc/resolv.conf"
COPY_MODES = ("copy", "isolated")


def store_mounts(spec: CellSpec, closure: Closure, root: str | None = None) -> list[MountOp]:
    """The mount ops of the store itself (a copy's bind is ``store_binds``); with a Nix root of
    the host's own, each store path is bound from below it (nix/storeroot.py)."""
    from nixcell.plan import MountOp

    check_root_mode(spec.store, root)
    top = root or ""
    if spec.store == "closure":
        return [MountOp("ro-bind", p, src=top + p) for p in sorted(closure.paths)]
    if spec.store in ("readonly", "shared"):
        return [MountOp("ro-bind", STORE, src=top + STORE)]
    return []


def check_root_mode(store: str, root: str | None, spec: CellSpec | None = None) -> None:
    """Refuse a store mode that would show the machine's store instead of the Nix root's (fail
    closed): the daemon serves the machine's store, and a copy is made from it. And a root the
    cell could write through one of its binds (it would change what every later cell runs)."""
    from nixcell.errors import SpecError

    if root is not None and spec is not None:
        from nixcell.nix.storecopy import writable_bind

        cover = writable_bind(spec, root)
        if cover is not None:
            raise SpecError(
                f"the Nix root {root} is inside {cover}, which the cell may write (or holds "
                "a part the cell may write): put the root elsewhere, or bind that part read-only"
            )

    if root is not None and store not in ("closure", "readonly"):
        why = "the daemon serves" if store == "shared" else "its copy is made from"
        raise SpecError(
            f"store mode {store!r} cannot take its store from the Nix root {root} ({why} the "
            "machine's /nix/store): use store mode 'closure' or 'readonly'"
        )


def store_binds(spec: CellSpec, host: HostFacts) -> list[tuple[str, str, bool]]:
    """(dest, host source, writable) of a copy mode's store directory, or of the daemon's
    socket: binds of the plan, so a root-run cell gets them through its idmapped stage (its
    uid could not reach Debian's 0770 daemon-socket directory, nor a copy under /root)."""
    from nixcell.errors import SpecError

    if spec.store == "shared":
        if not host.daemon_socket:  # (host.gather refuses first; a hand-made fact too)
            raise SpecError(f"store mode 'shared' needs the Nix daemon ({DAEMON_SOCKET})")
        return [(DAEMON_SOCKET, DAEMON_SOCKET, False)]
    if spec.store not in COPY_MODES:
        return []

    if host.store_root is None:
        raise SpecError(f"store mode {spec.store!r}: internal: the copy was not made")
    from nixcell.nix.storecopy import check_store_dir

    check_store_dir(spec)  # (refused before the copy was made; and here, where it is bound)
    return [(STORE, host.store_root, False)]


def store_env(spec: CellSpec) -> dict[str, str]:
    """nix inside a shared cell talks to the host's daemon, never to a store of its own."""
    return {"NIX_REMOTE": "daemon"} if spec.store == "shared" else {}


def host_network_mounts(host: HostFacts, ca_bundle: str | None) -> list[MountOp]:
    """The host's resolver config and CA bundle (at ``ca_bundle``, unless the user binds one),
    read-only, for a cell on the host's network: it talks to the network as the host does."""
    from nixcell.plan import MountOp

    ops = []
    if host.resolv_conf is not None:
        ops.append(MountOp("ro-bind", RESOLV_CONF, src=host.resolv_conf))
    if ca_bundle is not None:
        ops.append(MountOp("ro-bind", ca_bundle, src=host.host_ca or "/dev/null"))
    return ops
