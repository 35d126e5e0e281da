"""Docker: ``nixcell run --backend docker`` against a bare ``docker run --rm`` of the same image
with the same mounts, limits and security flags (Debian's 20.10 client, ``/usr/bin/docker``, on
the same daemon): a daemon of the bench's own unless ``NIXCELL_DOCKER_HOST`` names one.

The bare run gets what nixcell gives the container: the closure read-only, the plan's data files
and symlink directories (written once to a temporary directory), the plan's tmpfs, the same
seccomp profile, ``--network none --cap-drop ALL --read-only --security-opt
no-new-privileges``, an unprivileged user. It lacks only nixcell's masked /proc paths (the CLI
has no flag for them) and nixcell's own work (planning, the private host directory, removal).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backends.common import NIXCELL, PACKAGES, ROOT, Skip, pss_kib
from backends.common import check as _check

__all__ = ["Skip", "bare", "memory", "nixcell", "setup", "teardown"]
DOCKER = "/usr/bin/docker"  # Debian's client, the daemon's version (not /usr/local/bin's 28)
USER = "65534:65534"


def setup() -> dict[str, object]:
    if os.geteuid() != 0:
        raise Skip("needs root (its own dockerd)")
    if not (os.access("/usr/sbin/dockerd", os.X_OK) and os.access(DOCKER, os.X_OK)):
        raise Skip("docker.io is not installed")
    sys.path.insert(0, str(ROOT))
    state: dict[str, object] = {}
    host = os.environ.get("NIXCELL_DOCKER_HOST")
    if host is None:
        from tests.integration.dockerd import start_daemon

        top = tempfile.mkdtemp(prefix="bench-dockerd-")
        state["daemon"], sock = start_daemon(top)
        state["top"] = top
        host = f"unix://{sock}"
    state["host"] = host
    os.environ["NIXCELL_DOCKER_HOST"] = host
    state["files"] = tempfile.mkdtemp(prefix="bench-docker-files-")
    state["bare_args"] = _bare_args(state)
    return state


def _bare_args(state: dict[str, object]) -> list[str]:
    """``docker run`` flags equal to what nixcell's plan gives the container."""
    out = subprocess.run(
        [NIXCELL, "run", "--backend", "docker", *PACKAGES, "--dry-run", "--json", "--", "true"],
        capture_output=True, check=True,
    )  # fmt: skip
    spec = json.loads(out.stdout)["backend_spec"]
    body, top = spec["create"], str(state["files"])
    for name, data in spec["host_files"].items():
        Path(top, name).parent.mkdir(parents=True, exist_ok=True)
        Path(top, name).write_text(data)
    for name, links in spec["links"].items():
        Path(top, name).mkdir(parents=True, exist_ok=True)
        for link, target in links.items():
            os.symlink(target, Path(top, name, link))
    profile = Path(top, "seccomp.json")
    profile.write_text(json.dumps(spec["seccomp_profile"]))
    hc = body["HostConfig"]
    args = ["--rm", "--network", "none", "--cap-drop", "ALL", "--read-only", "--user", USER]
    args += ["--security-opt", "no-new-privileges", "--security-opt", f"seccomp={profile}"]
    args += ["--ipc", "private", "--cgroupns", "private", "--log-driver", "none"]
    args += ["--hostname", body["Hostname"], "--workdir", body["WorkingDir"]]
    for m in hc["Mounts"]:
        src = m["Source"].replace("<cell dir>", top)
        args += ["--mount", f"type=bind,src={src},dst={m['Target']},readonly"]
    for dest, opts in hc["Tmpfs"].items():
        args += ["--tmpfs", f"{dest}:{opts}"]
    for env in body["Env"]:
        args += ["--env", env]
    image = spec["image"].split()[0]
    return [DOCKER, "-H", str(state["host"]), "run", *args, image]


def nixcell(state: dict[str, object], argv: list[str]):
    cmd = [NIXCELL, "run", "--backend", "docker", *PACKAGES, "--", *argv]
    return lambda: _check(cmd)


def bare(state: dict[str, object], argv: list[str]):
    cmd = [*state["bare_args"], *argv]  # type: ignore[misc]
    return lambda: _check(cmd)


def memory(state: dict[str, object]) -> float | None:
    """PSS of one running cell: nixcell's own process, the container's shim and the cell's
    processes (the daemon's own growth is not counted)."""
    proc = subprocess.Popen(
        [NIXCELL, "run", "--backend", "docker", *PACKAGES, "--", "sleep", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        cid = None
        while cid is None and time.monotonic() < deadline:
            out = subprocess.run(
                [DOCKER, "-H", str(state["host"]), "ps", "-q", "--no-trunc", "--filter",
                 "label=nixcell.role=cell"], capture_output=True, text=True,
            )  # fmt: skip
            cid = out.stdout.split()[0] if out.stdout.split() else None
            time.sleep(0.1)
        if cid is None:
            return None
        time.sleep(0.5)
        total = pss_kib(proc.pid)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                cgroup = Path(f"/proc/{entry}/cgroup").read_text()
            except OSError:
                continue
            if cid.encode() in cmdline or cid in cgroup:
                total += pss_kib(int(entry))
        return total / 1024
    finally:
        proc.send_signal(signal.SIGINT)  # nixcell removes its container on the way out
        proc.wait()


def teardown(state: dict[str, object]) -> None:
    if "daemon" in state:
        from tests.integration.dockerd import stop_daemon

        stop_daemon(state["daemon"], str(state["top"]))  # type: ignore[arg-type]
    shutil.rmtree(str(state["files"]), ignore_errors=True)
