"""HostFacts: the few facts about this machine that the plan depends on.

Gathered with cheap syscalls (stat, getuid) before planning, so that ``plan()`` itself stays a
pure function: same spec + closure + facts, same plan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nixcell.errors import SpecError


@dataclass(frozen=True)
class HostFacts:
    uid: int
    gid: int
    term: str = "dumb"
    passed_env: dict[str, str] = field(default_factory=dict)
    # host path -> "dir" | "file" for every mount source and hidden path
    kinds: dict[str, str] = field(default_factory=dict)
    ca_pem: str | None = None  # the proxy CA's certificate, for cells with a network
    # which of plan.PROC_READ_ONLY / PROC_MASKED exist here: path -> "dir" | "file"
    proc_entries: dict[str, str] = field(default_factory=dict)
    # host paths that are bounded volumes in the namespaces the cell will start in
    # (``holder.create_volume``): writable, yet within the disk bound
    volumes: tuple[str, ...] = ()
    scratch_dir: str = "/run/nixcell/scratch"  # sandbox/holder.scratch_dir(): --disk's tmpfs
    # (role, host path, kind) the plan was made for: "bind" sources, "hide" paths and the
    # "proc" entries it masks, with "dir" | "file" | "missing"; a cached plan is stale when one
    # differs (plancheck.py)
    checked: tuple[tuple[str, str, str], ...] = ()
    # (path, mtime_ns, size, inode) of the policy files: what the plan read of them (cidrs)
    stamps: tuple[tuple[str, int, int, int], ...] = ()
    # store modes (planstore.py): the copy's directory bound at /nix/store and its manifest's
    # stamp; whether the Nix daemon's socket is there (shared)
    store_root: str | None = None
    nix_root: str | None = None  # a Nix root of this host's own (nix/storeroot.py)
    store_stamp: str | None = None
    daemon_socket: bool = False
    # the host network: the host's resolver config and CA bundle (real paths), when present
    resolv_conf: str | None = None
    host_ca: str | None = None
    # the backend that runs the cell: the spec's, with "auto" resolved (sandbox/backends.py)
    backend: str = "bwrap"


def stamp_of(path: str) -> tuple[str, int, int, int] | None:
    """A file's version, as cached plans compare it (None: it is not there)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


def _kind(path: str) -> str | None:
    from nixcell.plancheck import path_kind

    kind = path_kind(path)
    return None if kind == "missing" else kind


def _no_symlink(path: str, flag: str) -> None:
    """A bind source reached through a symlink is refused: the link may be one a cell planted
    in a directory it was given earlier (``data -> /etc``), and bwrap (or the idmapped clone of
    a root-run cell) would follow it. The real path, named as such, binds as asked."""
    from nixcell.plancheck import first_link

    seen = first_link(path)
    if seen is not None:
        raise SpecError(
            f"{flag} {path}: {seen} is a symbolic link (to {os.readlink(seen)}); "
            f"bind the real path, {os.path.realpath(path)}"
        )


def gather(spec, volumes: tuple[str, ...] = (), store=None) -> HostFacts:
    """Check the host paths the spec names and collect what ``plan()`` needs.

    ``store``: the copy of a copy store mode (``nix/storecopy.StoreCopy``), made already."""
    kinds: dict[str, str] = {}
    checked: list[tuple[str, str, str]] = []
    if store is not None:
        _no_symlink(store.root, "--store-dir")
        kinds[store.root] = "dir"
        checked.append(("bind", store.root, "dir"))
    daemon = spec.store == "shared" and _daemon_socket()
    if daemon:
        kinds[daemon] = "file"
        checked.append(("daemon", daemon, "file"))
    if spec.workdir is not None:
        if _kind(spec.workdir) != "dir":
            raise SpecError(f"--workdir {spec.workdir}: no such directory")
        _no_symlink(spec.workdir, "--workdir")
        kinds[spec.workdir] = "dir"
        checked.append(("bind", spec.workdir, "dir"))
    for mount in spec.mounts:
        flag = "--bind" if mount.writable else "--ro-bind"
        _no_symlink(mount.source, flag)
        kind = _kind(mount.source)
        if kind is None:
            raise SpecError(f"{flag} {mount.source}: no such file or directory")
        kinds[mount.source] = kind
        checked.append(("bind", mount.source, kind))
    for hidden in spec.hide:
        host_path = host_path_of(spec, hidden)
        kind = _kind(host_path) if host_path else None
        kinds[hidden] = kind or "dir"
        if host_path:
            checked.append(("hide", host_path, kind or "missing"))
    passed = {name: os.environ[name] for name in spec.pass_env if name in os.environ}
    ca_pem = None
    stamps: list[tuple[str, int, int, int]] = []
    if spec.network is not None:
        stamps = [s for p in spec.network.policy_files if (s := stamp_of(p)) is not None]
        from nixcell.net.tls import CertificateAuthority

        ca_pem = CertificateAuthority.load_or_create().cert_pem.decode()
    from nixcell.nix.storeroot import nix_root
    from nixcell.plan import PROC_MASKED, PROC_READ_ONLY
    from nixcell.sandbox import holder

    proc: dict[str, str] = {}
    for path in (*PROC_READ_ONLY, *PROC_MASKED):  # a module loaded since adds one: replan
        kind = _kind(path)
        if kind is not None:
            proc[path] = kind
        checked.append(("proc", path, kind or "missing"))
    return HostFacts(
        uid=os.getuid(),
        gid=os.getgid(),
        term=os.environ.get("TERM") or "dumb",
        passed_env=passed,
        kinds=kinds,
        ca_pem=ca_pem,
        proc_entries=proc,
        volumes=volumes,
        scratch_dir=holder.scratch_dir(),
        checked=tuple(checked),
        stamps=tuple(stamps),
        store_root=store.root if store is not None else None,
        nix_root=nix_root(),
        store_stamp=store.stamp if store is not None else None,
        daemon_socket=bool(daemon),
        resolv_conf=_real_file("/etc/resolv.conf") if spec.host_network else None,
        host_ca=_real_file(_CA_BUNDLE) if spec.host_network else None,
        backend=_backend(spec.backend),
    )


def _backend(name: str) -> str:
    """The backend that runs the cell; "auto" is resolved here (a probe, cached per host)."""
    if name != "auto":
        return name
    from nixcell.sandbox.backends import select_auto

    return select_auto()


_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _daemon_socket() -> str:
    """The Nix daemon's socket for store mode "shared"; without it, a one-line error (the mode
    is refused, never run as "readonly")."""
    from nixcell.plancheck import connect_error
    from nixcell.planstore import DAEMON_SOCKET

    why = connect_error(DAEMON_SOCKET)  # (a socket file outlives its daemon: it must answer)
    if why is not None:
        hint = "join the nix-users group" if "denied" in why else "start nix-daemon"
        raise SpecError(
            f"store mode 'shared' needs the Nix daemon, and {DAEMON_SOCKET} does not answer "
            f"({why}): {hint}, or use store mode 'readonly'"
        )
    return DAEMON_SOCKET


def _real_file(path: str) -> str | None:
    """The real path of a host configuration file, or None when there is none."""
    real = os.path.realpath(path)
    return real if os.path.isfile(real) else None


def host_path_of(spec, cell_path: str) -> str | None:
    """Map a path as the cell sees it back to the host path it comes from (or None)."""
    binds = [(m.target, m.source) for m in spec.mounts]
    if spec.workdir is not None:
        binds.append(("/workspace", spec.workdir))
    for target, source in sorted(binds, key=lambda b: -len(b[0])):
        if cell_path == target or cell_path.startswith(target + "/"):
            return source + cell_path[len(target) :]
        # --hide also accepts the host path itself
        if cell_path == source or cell_path.startswith(source + "/"):
            return cell_path
    return None
