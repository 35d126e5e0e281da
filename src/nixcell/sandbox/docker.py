"""The docker backend: a cell as a Docker container of the image ``FROM scratch``.

The container holds the closure (read-only binds) and the plan's mounts (``dockerspec.py``),
runs as an unprivileged host uid (root-run: the cell's own uid from ``identity.py``; a user:
their own uid) with ``--cap-drop ALL --read-only --security-opt no-new-privileges``, nixcell's
own seccomp filter (``dockerseccomp.py``), private pid/ipc/uts/cgroup namespaces, and the
memory/pids/cpus limits. No network: ``none``; with a policy, a network holder container
(``/pause``) whose namespace holds the proxy's listener (``dockercell.py``) and the cell joins
it. Containers are named ``nixcell-<cell id>`` and labelled with their owner; ``sweep`` (from
``nixcell gc`` and the start-up sweep) removes those of a dead nixcell.
"""

from __future__ import annotations

import json
import os

from nixcell.errors import NixcellError
from nixcell.sandbox.backends import Availability

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.plan import Plan
    from nixcell.sandbox.dockerspec import Layout

LABEL_CELL = "nixcell.cell"
LABEL_OWNER = "nixcell.owner"
LABEL_ROLE = "nixcell.role"
IPV6_CONFS = ("all", "default", "lo")
LABEL_PIDNS = "nixcell.pidns"  # owner pids mean something only in their pid namespace and boot


def pid_scope() -> str:
    """This process's pid namespace and boot: the sweep judges only owners of its own."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{os.readlink('/proc/self/ns/pid')}@{boot}"
    except OSError:
        return "unknown"


def container_name(cell_id: str, role: str = "cell") -> str:
    return f"nixcell-{cell_id}" if role == "cell" else f"nixcell-{cell_id}-{role}"


def cell_user(host_id: tuple[int, int] | None) -> tuple[int, int]:
    """The host uid/gid the cell's processes run as: never root."""
    if host_id is not None:
        return host_id
    if os.geteuid() == 0:  # (render only: the run allocates the cell's own uid)
        from nixcell.plan import CELL_GID, CELL_UID

        return (CELL_UID, CELL_GID)
    return (os.getuid(), os.getgid())


def network_sysctls() -> dict[str, str]:
    """A new network namespace's defaults as bwrap's gives them. Docker sets
    ip_unprivileged_port_start 0 and ping_group_range "0 2147483647" in its containers'
    namespaces (any uid may bind port 80 and open ICMP sockets), and turns IPv6 off (lo would
    have no ::1): all put back."""
    sysctls = {"net.ipv4.ip_unprivileged_port_start": "1024", "net.ipv4.ping_group_range": "1 0"}
    if os.path.isdir("/proc/sys/net/ipv6"):
        sysctls.update({f"net.ipv6.conf.{i}.disable_ipv6": "0" for i in IPV6_CONFS})
    return sysctls


def host_config(plan: Plan, layout: Layout, network_mode: str, seccomp: str) -> dict[str, object]:
    lim = plan.limits
    config: dict[str, object] = {
        "NetworkMode": network_mode,
        "CapDrop": ["ALL"],
        "ReadonlyRootfs": layout.readonly_root,
        "SecurityOpt": ["no-new-privileges", f"seccomp={seccomp}"],
        "Mounts": layout.mounts,
        "Tmpfs": layout.tmpfs,
        "MaskedPaths": sorted(set(layout.masked)),
        "ReadonlyPaths": sorted(set(layout.readonly)),
        "IpcMode": "private",
        "PidMode": "",
        "CgroupnsMode": "private",
        "Init": True,  # docker-init (tini) is PID 1: the command is not init (signals, reaping)
        "LogConfig": {"Type": "none", "Config": {}},
    }
    if network_mode == "none":  # the cell's own namespace, or the holder's it joins
        config["Sysctls"] = network_sysctls()
    if lim.memory is not None:
        config["Memory"] = lim.memory
        config["MemorySwap"] = lim.memory  # no swap beyond the limit
    if lim.pids is not None:
        config["PidsLimit"] = lim.pids
    if lim.cpus is not None:
        config["NanoCpus"] = int(lim.cpus * 1e9)
    return config


def labels(cell_id: str, role: str) -> dict[str, str]:
    from nixcell.leftovers import owner_tag

    return {
        LABEL_CELL: cell_id,
        LABEL_OWNER: owner_tag(),
        LABEL_ROLE: role,
        LABEL_PIDNS: pid_scope(),
    }


def cell_body(
    plan: Plan, layout: Layout, image: str, user: tuple[int, int], network_mode: str,
    seccomp: str, cell_id: str, stdin: bool,
) -> dict[str, object]:  # fmt: skip
    body: dict[str, object] = {
        "Image": image,
        "Entrypoint": None,
        "Cmd": list(plan.command),
        "Env": [f"{k}={v}" for k, v in plan.env.items()],
        "User": f"{user[0]}:{user[1]}",
        "WorkingDir": plan.cwd,
        "Labels": labels(cell_id, "cell"),
        "AttachStdin": stdin,
        "OpenStdin": stdin,
        "StdinOnce": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "HostConfig": host_config(plan, layout, network_mode, seccomp),
    }
    if network_mode == "none":
        body["Hostname"] = plan.hostname
    return body


def holder_body(
    plan: Plan, image: str, user: tuple[int, int], seccomp: str, cell_id: str
) -> dict[str, object]:
    """The network holder: ``/pause`` in the image, nothing mounted, nothing to do."""
    from nixcell.sandbox.dockerspec import Layout

    return {
        "Image": image,
        "Entrypoint": None,
        "Cmd": ["/pause"],
        "User": f"{user[0]}:{user[1]}",
        "Hostname": plan.hostname,
        "Labels": labels(cell_id, "net"),
        "HostConfig": {
            **host_config(plan, Layout("", readonly_root=True), "none", seccomp),
            "Memory": 16 << 20,
            "MemorySwap": 16 << 20,
            "PidsLimit": 4,
        },
    }


class DockerBackend:
    name = "docker"

    def availability(self) -> Availability:
        from nixcell.sandbox import dockerapi, dockerimage

        why = dockerimage.supported()
        if why is not None:
            return Availability(False, why)
        try:
            client = dockerapi.Client(timeout=2.0)
            server = client.ping(timeout=2.0)  # (GET /version asks containerd too: 30 ms)
        except NixcellError as exc:
            return Availability(False, exc.message)
        return Availability(True, f"{server.split(' ')[0]} at {client.path}")

    def refusals(self, plan: Plan) -> list[str]:
        from nixcell.sandbox import dockerseccomp, dockerspec

        layout = dockerspec.layout(plan, cell_user(None), "<cell dir>", _scratch_dir())
        refused = list(layout.refusals) + dockerspec.reserved(plan)
        root = os.geteuid() == 0
        if plan.host_network:
            refused.append("the host's network (docker's host mode is dockerd's)")
        if plan.network is not None and not root:
            refused.append(
                "a network policy as an ordinary user (the proxy's listener is made inside the "
                "container's network namespace: root only)"
            )
        if layout.scratch is not None and not root:
            refused.append("--disk as an ordinary user (its one tmpfs is mounted by root)")
        why = dockerseccomp.refusal(plan.seccomp_profiles)
        if why is not None:
            refused.append(why)
        return refused

    def render(self, plan: Plan) -> dict[str, object]:
        from nixcell.sandbox import dockerimage, dockerseccomp, dockerspec

        user = cell_user(None)
        layout = dockerspec.layout(plan, user, "<cell dir>", _scratch_dir())
        try:
            seccomp = dockerseccomp.profile(tuple(plan.seccomp_profiles))
        except NixcellError as exc:
            seccomp = f"<refused: {exc.message}>"
        image = dockerimage.tag()
        network_mode = "none" if plan.network is None else "container:<network holder>"
        body = cell_body(plan, layout, image, user, network_mode, "<profile>", "<cell id>", True)
        out: dict[str, object] = {
            "api": "POST /v1.41/containers/create?name=nixcell-<cell id>",
            "image": f"{image} (FROM scratch + /pause, built locally)",
            "create": body,
            "seccomp_profile": json.loads(seccomp) if seccomp.startswith("{") else seccomp,
            "host_files": {k: v.decode() for k, v in layout.files.items()},
            "links": layout.links,
        }
        if os.geteuid() == 0:
            out["user_note"] = "User: the cell's own unprivileged host uid, allocated per run"
        if plan.network is not None:
            out["network_holder"] = holder_body(plan, image, user, "<profile>", "<cell id>")
        return out

    def open(self, plan: Plan, cell_id: str, host_id: tuple[int, int] | None) -> object:
        from nixcell.sandbox.dockercell import DockerCell

        return DockerCell(plan, cell_id, cell_user(host_id))


def _scratch_dir() -> str:
    from nixcell.sandbox.holder import scratch_dir

    return scratch_dir()


def sweep() -> list[str]:
    """Containers (and host directories) of dead nixcell processes, removed; cheap when there
    is no daemon (one failed connect)."""
    from nixcell.leftovers import _start_time
    from nixcell.sandbox import dockerapi, dockerhost

    removed: list[str] = []
    try:
        client = dockerapi.Client(timeout=2.0)
        found = []
        if os.path.exists(client.path):
            scope = f"{LABEL_PIDNS}={pid_scope()}"
            query = {"all": "1", "filters": json.dumps({"label": [LABEL_OWNER, scope]})}
            found = client.call("GET", "/containers/json", query=query)
    except NixcellError:
        found = []
    for item in found if isinstance(found, list) else []:
        labels = item.get("Labels") if isinstance(item, dict) else None
        ident = item.get("Id") if isinstance(item, dict) else None
        if not isinstance(labels, dict) or not isinstance(ident, str) or "/" in ident:
            continue  # a malformed answer: nothing of it is trusted
        owner = str(labels.get(LABEL_OWNER, ""))
        pid, _, start = owner.partition("-")
        if pid.isdigit() and str(_start_time(int(pid))) == start:
            continue
        try:
            client.call("DELETE", f"/containers/{ident}", query={"force": "1", "v": "1"})
            names = item.get("Names")
            name = names[0] if isinstance(names, list) and names else ident
            removed.append(dockerapi.clean(str(name)).lstrip("/"))
        except NixcellError:
            pass
    # the directories last: a container of theirs is gone by now
    return removed + [f"dir:{d}" for d in dockerhost.sweep()]


BACKEND = DockerBackend()
