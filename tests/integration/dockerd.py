"""A Docker daemon of the suite's own (issue 12, part 3).

Debian's ``dockerd`` (docker.io 20.10, installed by ./setup) on its own socket, data root and
exec root in a temporary directory, with no bridge and no iptables rules (cells use network
``none`` or a holder container's namespace: nothing of the host's network changes). nixcell is
pointed at it with ``NIXCELL_DOCKER_HOST``; at the end the daemon is stopped (its containerd
with it) and everything it mounted or wrote is removed. (dockerd 20.10 itself keeps a trust key
in /etc/docker/key.json, as any first start of docker.io does: no flag moves it.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

DOCKERD = "/usr/sbin/dockerd"


def _mounts_under(top: str) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return sorted((p for p in points if p == top or p.startswith(top + "/")), key=len, reverse=True)


def _answers(sock: str) -> bool:
    from nixcell.sandbox import dockerapi

    try:
        dockerapi.Client(sock, timeout=1.0).ping(timeout=1.0)
    except dockerapi.DockerError:
        return False
    return True


def start_daemon(top: str) -> tuple[subprocess.Popen[bytes], str]:
    sock = f"{top}/docker.sock"
    with open(f"{top}/daemon.json", "w") as f:  # not the host's /etc/docker/daemon.json
        f.write("{}\n")
    log = open(f"{top}/dockerd.log", "wb")  # noqa: SIM115 - the daemon writes it until the end
    argv = [
        DOCKERD, "--host", f"unix://{sock}", "--data-root", f"{top}/data",
        "--exec-root", f"{top}/exec", "--pidfile", f"{top}/dockerd.pid", "--bridge", "none",
        "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--userland-proxy=false",
        "--log-level", "warn", "--config-file", f"{top}/daemon.json",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    deadline = time.monotonic() + 60
    while not _answers(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daemon(proc, top)
            with open(f"{top}/dockerd.log", errors="replace") as f:
                tail = f.read()[-800:]
            pytest.fail(f"dockerd did not come up: {tail}")
        time.sleep(0.05)
    return proc, sock


def stop_daemon(proc: subprocess.Popen[bytes], top: str) -> None:
    from nixcell.sandbox import dockerapi

    sock = f"{top}/docker.sock"
    if proc.poll() is None and os.path.exists(sock):
        with contextlib.suppress(dockerapi.DockerError, TypeError):
            client = dockerapi.Client(sock, timeout=10)
            for item in client.call("GET", "/containers/json", query={"all": "1"}) or []:  # type: ignore[union-attr]
                client.call("DELETE", f"/containers/{item['Id']}", query={"force": "1"})
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for point in _mounts_under(top):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    shutil.rmtree(top, ignore_errors=True)


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the suite's dockerd needs root"
    if not os.access(DOCKERD, os.X_OK):
        return f"{DOCKERD} is not installed (./setup installs docker.io)"
    return None


@pytest.fixture(scope="session")
def dockerd():
    """The socket path of a running daemon of our own; NIXCELL_DOCKER_HOST points at it."""
    reason = skip_reason()
    if reason is not None:
        print(f"dockerd: skipped: {reason}")
        pytest.skip(reason)
    from nixcell.sandbox import backends

    top = tempfile.mkdtemp(prefix="suite-dockerd-")
    os.chmod(top, 0o711)
    proc, sock = start_daemon(top)
    old = os.environ.get("NIXCELL_DOCKER_HOST")
    os.environ["NIXCELL_DOCKER_HOST"] = f"unix://{sock}"
    backends._cache.clear()
    try:
        yield sock
    finally:
        if old is None:
            os.environ.pop("NIXCELL_DOCKER_HOST", None)
        else:
            os.environ["NIXCELL_DOCKER_HOST"] = old
        backends._cache.clear()
        stop_daemon(proc, top)
