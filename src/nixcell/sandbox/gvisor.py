"""The gvisor backend: a cell as a gVisor sandbox (``runsc``, ptrace platform), root-run.

The cell's programs run on gVisor's Sentry, a user-space kernel: their system calls never
reach the host kernel directly. The bundle's root is an empty directory holding only the
closure binds and the plan's mounts (``gvisorspec.py``); the cell runs as its own unprivileged
uid (the one ``identity.py`` gives a root-run cell) with no capabilities and no-new-privileges,
under the plan's seccomp filter (enforced inside the sandbox: ``--oci-seccomp``), in a cgroup
holding the whole sandbox. On the host the Sentry runs as uid 65534 in a user namespace of its
own; the gofer (which opens the mounts' files for it) runs as root with file capabilities only
and serves nothing but the bundle's mounts. ``gvisorcell.py`` runs one cell; ``sweep`` (from
``nixcell gc`` and the start-up sweep) removes what a killed nixcell left: its runsc state
(``--root`` per owner process) and its bundle directories.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from nixcell.errors import NixcellError
from nixcell.sandbox import gvisorspec
from nixcell.sandbox.backends import Availability

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan


def runsc_version() -> str | None:
    """``runsc --version``'s version ("0.0~20221219.0"), or None without a usable runsc."""
    if shutil.which(gvisorspec.RUNSC) is None:
        return None
    try:
        out = subprocess.run(
            [gvisorspec.RUNSC, "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return None
    words = out.split()
    return words[2] if len(words) >= 3 and words[:2] == ["runsc", "version"] else None


_version: list[str | None] = []


def version() -> str:
    """This runsc's version: asked once per binary (``runsc --version`` costs ~20 ms), then
    read from a cache file keyed by the binary's inode, size and mtime."""
    if not _version:
        _version.append(_cached_version())
    return _version[0] or "unknown"


def _cached_version() -> str | None:
    from nixcell import paths

    try:
        st = os.stat(gvisorspec.RUNSC)
    except OSError:
        return None
    key = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cached = paths.cache_dir() / "runsc-version"
    try:
        stamp, _, found = cached.read_text().partition(" ")
        if stamp == key and found:
            return found
    except OSError:
        pass
    found = runsc_version()
    if found is not None:
        try:
            from nixcell.fsio import private_dir, write_atomic

            private_dir(cached.parent)
            write_atomic(cached, f"{key} {found}".encode())
        except (OSError, NixcellError):
            pass
    return found


def cell_user(host_id: tuple[int, int] | None) -> tuple[int, int]:
    from nixcell.sandbox.docker import cell_user as user

    return user(host_id)


class GvisorBackend:
    name = "gvisor"

    def availability(self) -> Availability:
        found = version()
        if found == "unknown":
            return Availability(False, f"no runsc at {gvisorspec.RUNSC} (Debian: runsc)")
        if os.geteuid() != 0:
            if not os.access(gvisorspec.UNSHARE, os.X_OK):
                return Availability(False, f"an ordinary user needs {gvisorspec.UNSHARE}")
            return Availability(True, f"runsc {found} (ptrace platform, rootless in unshare -U -r)")
        return Availability(True, f"runsc {found} (ptrace platform)")

    def refusals(self, plan: Plan) -> list[str]:
        from nixcell.sandbox import dockerspec

        layout = dockerspec.layout(plan, cell_user(None), "<cell dir>", _scratch_dir(), "gvisor")
        refused = gvisorspec.refusals(layout)
        if plan.host_network:
            refused.append("the host's network (a sandbox gets lo only, or the proxy)")
        if os.geteuid() != 0:
            if plan.network is not None:
                refused.append(
                    "a network policy as an ordinary user (rootless runsc's own user namespace "
                    "cannot join nixcell's network namespace)"
                )
            if layout.scratch is not None:
                refused.append("--disk as an ordinary user (its one tmpfs is mounted by root)")
        refused += gvisorspec.seccomp(tuple(plan.seccomp_profiles), version())[1]
        return refused

    def render(self, plan: Plan) -> dict[str, object]:
        from nixcell.sandbox import dockerspec
        from nixcell.sandbox.gvisorcell import state_dir

        user = cell_user(None)
        top = "<cell dir>"
        layout = dockerspec.layout(plan, user, top, _scratch_dir(), "gvisor")
        filt = gvisorspec.seccomp(tuple(plan.seccomp_profiles), version())[0]
        netns = "/proc/<nixcell pid>/fd/<netns fd>" if plan.network is not None else None
        body = gvisorspec.spec(plan, layout, user, netns, filt)
        lim = plan.limits
        argv = gvisorspec.argv(
            state_dir(), f"{top}/bundle", "nixcell-<cell id>", netns is not None,
            f"{top}/bundle/runsc.log", os.geteuid() != 0,
        )  # fmt: skip
        out: dict[str, object] = {
            "runsc": argv,
            "runsc_version": version(),
            "oci_spec": body,
            "cgroup": {
                "memory": lim.memory,
                "cpus": lim.cpus,
                "pids": gvisorspec.host_pids(lim.pids),
            },
            "host_files": {k: v.decode() for k, v in layout.files.items()},
            "links": layout.links,
        }
        if os.geteuid() == 0:
            out["user_note"] = "process.user: the cell's own unprivileged uid, allocated per run"
        return out

    def open(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> object:
        from nixcell.sandbox.gvisorcell import GvisorCell

        return GvisorCell(plan, cell_id, cell_user(host_id), version())


def _scratch_dir() -> str:
    from nixcell.sandbox.holder import scratch_dir

    return scratch_dir()


def sweep() -> list[str]:
    """runsc state and bundle directories of dead nixcell processes, removed (their sandboxes
    killed: ``runsc delete --force``; their cgroups are ``cgroups.sweep_stale``'s)."""
    from nixcell.leftovers import _start_time
    from nixcell.sandbox import dockerhost
    from nixcell.sandbox.gvisorcell import delete
    from nixcell.treeremove import remove_tree

    removed: list[str] = []
    root = dockerhost.root_dir("gvisor-state")
    try:
        owners = os.listdir(root)
    except OSError:
        owners = []
    for owner in owners:
        pid, _, start = owner.partition("-")
        if pid.isdigit() and str(_start_time(int(pid))) == start:
            continue  # its nixcell is alive
        state = os.path.join(root, owner)
        for name in os.listdir(state):
            if name.endswith(".state") and "_sandbox:" in name:
                container = name[: -len(".state")].split("_sandbox:", 1)[1]
                delete(state, container)
                removed.append(container)
        remove_tree(state)
    return removed + [f"dir:{d}" for d in dockerhost.sweep("gvisor")]


BACKEND = GvisorBackend()
