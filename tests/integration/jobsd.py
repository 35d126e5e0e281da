"""A REAL ``nixcell serve`` process for tests: its own state dir, unix socket and (optionally)
a loopback TCP listener with a token; stopped (SIGTERM) and checked at the end.

    from tests.integration.jobsd import jobsd          # the fixture (import it in your test)

    def test_x(jobsd):                                  # a daemon, started; stopped afterwards
        d = jobsd()                                     # or jobsd(config="...", tcp=True)
        d.call("POST", "/api/v1/jobs", {...})           # JSON over the unix socket (as root)
        d.cli("submit", "-p", "bash", "--follow", "--", "bash", "-c", "echo hi")
        d.cli("jobs", user="alice")                     # the client as another user (setpriv)
        d.request("GET", "/api/v1/whoami", tcp=True, token=d.token)   # raw HTTP over TCP
        d.stop()                                        # SIGTERM; returns its exit code

``root`` (``d.root``) is a fresh 0755 dir under /tmp (other users can reach the socket in
``root/run``); ``d.log()`` is the daemon's stderr. Needs root and a built offline set (the
fixture skips elsewhere, like every integration test). ``config`` is extra server.toml text; the
fixture adds ``[[tokens]]`` for ``d.token`` (admin) and ``d.user_token`` (not admin).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import NIXCELL

READY_WAIT = 120.0  # a bound on start-up, not a timing assertion


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hash(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


class Daemon:
    def __init__(self, root: Path, config: str = "", tcp: bool = False) -> None:
        self.root = root
        self.socket = str(root / "run" / "nixcell.sock")
        self.state_dir = str(root / "state")
        self.port = _free_port() if tcp else None
        self.token = secrets.token_urlsafe(32)
        self.user_token = secrets.token_urlsafe(32)
        self.config_path = root / "server.toml"
        self.config_text = config
        self.write_config(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = open(root / "daemon.log", "ab")  # noqa: SIM115 - closed in stop()

    @property
    def server(self) -> str:
        return f"unix:{self.socket}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, text: str) -> None:
        tokens = (
            f'\n[[tokens]]\nname = "admin"\nhash = "{_hash(self.token)}"\nadmin = true\n'
            f'\n[[tokens]]\nname = "user"\nhash = "{_hash(self.user_token)}"\n'
        )
        self.config_path.write_text(text + "\n" + tokens)

    def argv(self) -> list[str]:
        argv = [NIXCELL, "serve", "--config", str(self.config_path), "--state-dir", self.state_dir]
        argv += ["--listen", self.server]
        if self.port is not None:
            argv += ["--listen", f"127.0.0.1:{self.port}"]
        return argv

    def start(self) -> Daemon:
        self.proc = subprocess.Popen(
            self.argv(), stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nixcell serve exited {self.proc.returncode}: {self.log()}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise AssertionError(f"nixcell serve did not answer: {self.log()}")

    def _answers(self) -> bool:
        try:
            status, _, _ = self.request("GET", "/api/v1/whoami", timeout=5)
        except OSError:
            return False
        return status == 200

    def log(self) -> str:
        self._log.flush()
        return (self.root / "daemon.log").read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, wait: float = 120) -> int:
        """Stop the daemon (SIGTERM by default); its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        self._log.flush()
        return code

    # -- talking to it ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        tcp: bool = False,
        token: str | None = None,
        timeout: float = 60,
    ) -> tuple[int, dict[str, str], bytes]:
        """Raw HTTP (unix socket, or TCP with ``tcp=True``): (status, headers, body)."""
        from nixcell.jobs.client import _UnixConnection

        if tcp:
            assert self.port is not None, "start the daemon with tcp=True"
            conn: http.client.HTTPConnection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=timeout
            )
        else:
            conn = _UnixConnection(self.socket, timeout)
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return (
                response.status,
                {k.lower(): v for k, v in response.getheaders()},
                response.read(),
            )
        finally:
            conn.close()

    def call(self, method: str, path: str, data: Any = None, **kw: Any) -> Any:
        """JSON in, JSON out; asserts a 2xx answer."""
        body = None if data is None else json.dumps(data).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        status, _, raw = self.request(method, path, body, headers, **kw)
        assert 200 <= status < 300, (status, raw)
        return json.loads(raw)

    def cli(
        self,
        *args: str,
        user: str | None = None,
        input: bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[bytes]:
        """The real client (``--server`` this daemon), as root or as ``user`` (setpriv)."""
        command = [NIXCELL, *args]
        if "--server" not in args:
            command = [NIXCELL, args[0], "--server", self.server, *args[1:]] if args else command
        if user is not None:
            command = ["setpriv", "--reuid", user, "--regid", user, "--init-groups", *command]
        run_env = {**os.environ, **(env or {})}
        if user is not None:
            run_env["HOME"] = "/"
        return subprocess.run(
            command, input=input, capture_output=True, timeout=timeout, env=run_env, cwd="/"
        )

    def wait_state(self, job_id: int, states: set[str], wait: float = 300) -> dict[str, Any]:
        """Poll the job until its state is one of ``states`` (a bound, not a timing check)."""
        deadline = time.monotonic() + wait
        while True:
            job = self.call("GET", f"/api/v1/jobs/{job_id}")["job"]
            if job["state"] in states or time.monotonic() > deadline:
                return job
            time.sleep(0.05)


@pytest.fixture
def jobsd(offline_set):
    """``jobsd(config="", tcp=False) -> Daemon`` (started); every one is stopped at the end."""
    made: list[Daemon] = []

    def make(config: str = "", tcp: bool = False, start: bool = True) -> Daemon:
        root = Path(tempfile.mkdtemp(prefix="nixcell-jobsd-", dir="/tmp"))
        root.chmod(0o755)
        daemon = Daemon(root, config, tcp)
        made.append(daemon)
        return daemon.start() if start else daemon

    yield make
    for daemon in made:
        daemon.stop()
        daemon._log.close()
        remove_tree(daemon.root)


def remove_tree(root: Path, wait: float = 10) -> None:
    """Remove a daemon's directory, or fail saying what stayed (a process the daemon left
    writing there outlives it: that is a finding, not a thing to ignore)."""
    deadline = time.monotonic() + wait
    while True:
        shutil.rmtree(root, ignore_errors=True)
        if not root.exists():
            return
        if time.monotonic() > deadline:
            left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))[:10]
            raise AssertionError(f"{root} could not be removed; left: {left}")
        time.sleep(0.2)
