"""Interactive jobs end to end: the real client (pexpect on a real pty) against the real daemon
(``jobsd``), real cells. Every root run is wrapped in ``test_terminal.Outer``, which checks
that the user's terminal modes come back and nothing was typed into the outer shell."""

from __future__ import annotations

import contextlib
import json
import os
import re
import time

import pexpect
import pytest
from tests.conftest import NIXCELL
from tests.integration.jobsd import jobsd  # noqa: F401 - the fixture
from tests.integration.test_jobs_auth import _config, users  # noqa: F401 - the fixture
from tests.integration.test_terminal import PROMPT, Outer

pytestmark = pytest.mark.integration
SHELL = ("-p", "bash", "-p", "coreutils", "--", "bash")


def _submit_i(d, *extra: str, size: tuple[int, int] = (24, 80)) -> tuple[Outer, int]:
    """``nixcell submit -i`` of a bash job; the outer terminal and the job's id."""
    outer = Outer("submit", "--server", d.server, "-i", *extra, *SHELL, size=size)
    outer.child.expect(PROMPT)
    jobs = d.call("GET", "/api/v1/jobs")["jobs"]
    return outer, max(j["id"] for j in jobs if j["interactive"])


def _as_user(d, name: str, *args: str) -> pexpect.spawn:
    argv = ["--reuid", name, "--regid", name, "--init-groups", NIXCELL, *args]
    argv[argv.index(args[0]) + 1 : argv.index(args[0]) + 1] = ["--server", d.server]
    env = {**os.environ, "TERM": "xterm", "HOME": "/"}
    return pexpect.spawn("setpriv", argv, env=env, cwd="/", timeout=60, encoding="utf-8")


def test_shell_detach_reattach_scrollback_and_exit_code(jobsd):  # noqa: F811
    d = jobsd()
    outer, ident = _submit_i(d, size=(30, 100))
    c = outer.child
    assert "job control" not in outer.seen()  # bash's "no job control in this shell"
    c.sendline("echo $((6*7))")
    c.expect("42\r\n")
    c.sendline("tty && test -t 0 && echo TTY-$((2+3))")
    c.expect("TTY-5\r\n")
    assert "not a tty" not in outer.seen()
    c.sendline("sleep 100 &")
    c.expect(PROMPT)
    c.sendline("jobs")
    c.expect(r"\[1\]\+\s+Running\s+sleep 100 &")
    c.sendline("stty size")
    c.expect("30 100\r\n")
    c.setwinsize(41, 123)  # SIGWINCH to the client: the cell's pty follows
    for _ in range(100):  # the resize and the next line travel apart: ask until it shows
        c.sendline("stty size")
        if c.expect(["41 123\r\n", r"30 100\r\n"]) == 0:
            break
    else:
        raise AssertionError("the resize never reached the cell")
    c.expect(PROMPT)
    c.send("~.")  # at the start of a line (after the prompt's newline-ended command)
    c.expect(f"detached from job {ident}; it goes on")
    assert outer.finish() == 0
    assert d.call("GET", f"/api/v1/jobs/{ident}")["job"]["state"] == "running"
    again = Outer("attach", "--server", d.server, str(ident), size=(41, 123))
    again.child.expect("42\r\n")  # the scrollback, replayed
    again.child.sendline("echo back-$((1+1))")
    again.child.expect("back-2\r\n")
    again.child.sendline("exit 3")
    assert again.finish() == 3
    job = d.call("GET", f"/api/v1/jobs/{ident}")["job"]
    assert (job["state"], job["exit_code"]) == ("failed", 3)
    lines = d.call("GET", f"/api/v1/jobs/{ident}/logs?stream=stdout")["lines"]
    assert any(line["text"].rstrip("\r") == "42" for line in lines)  # the log has the output


def test_cancel_while_attached_ends_the_client(jobsd):  # noqa: F811
    d = jobsd()
    outer, ident = _submit_i(d)
    outer.child.sendline("echo pid=$$; sleep 3011 &")
    outer.child.expect(PROMPT)
    for _ in range(200):  # bash prompts again before its background child has exec'd sleep
        if _sleeping():
            break
        time.sleep(0.05)
    assert _sleeping(), "the job's background sleep is not running"
    cancel = d.cli("cancel", str(ident))
    assert cancel.returncode == 0, cancel.stderr
    outer.child.expect(f"job {ident} cancelled")
    assert outer.finish() == 130
    assert d.call("GET", f"/api/v1/jobs/{ident}")["job"]["state"] == "cancelled"
    assert not _sleeping(), "a process of the cancelled job is still running"


def _sleeping() -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and _cmd(p) == "sleep3011"]


def _cmd(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b"").decode(errors="replace")
    except OSError:
        return ""


def test_another_user_cannot_attach(jobsd, users):  # noqa: F811
    d = jobsd(config=_config(users))
    out = d.cli("submit", "-i", "--detach", *SHELL, user=users["a"])
    assert out.returncode == 0, out.stderr
    ident = int(out.stdout)
    assert d.wait_state(ident, {"running"})["state"] == "running"
    for who, job, why in (
        ("b", ident, f"no job {ident}"),  # the same answer as for a job that does not exist
        ("b", 999999, "no job 999999"),
        ("d", ident, "permission denied"),  # not in the socket group: not even connected
    ):
        refused = d.cli("attach", str(job), user=users[who])
        assert refused.returncode == 1
        assert refused.stderr.decode().strip().endswith(why), refused.stderr
    owner = _as_user(d, users["a"], "attach", str(ident))
    owner.expect(r"bash-[0-9.]+\$ ")  # the scrollback: the prompt bash printed at start
    owner.sendline("echo owner-$((2*3))")
    owner.expect("owner-6")
    admin = _as_user(d, users["c"], "attach", str(ident))  # in the admin group
    admin.expect("owner-6")  # scrollback; the admin is now the writer
    admin.sendline("exit 0")
    admin.expect(pexpect.EOF)
    owner.expect(pexpect.EOF)
    admin.close()
    owner.close()
    assert (admin.exitstatus, owner.exitstatus) == (0, 0)


def test_refusals_are_one_line(jobsd):  # noqa: F811
    d = jobsd()
    plain = d.cli("submit", "--detach", "-p", "coreutils", "--", "sleep", "600")
    ident = int(plain.stdout)
    d.wait_state(ident, {"running"})
    done = int(d.cli("submit", "-i", "--detach", "-p", "coreutils", "--", "true").stdout)
    d.wait_state(done, {"succeeded"})
    for args, code, message in (
        (("attach", str(ident)), 1, f"job {ident} is not interactive"),
        (("attach", str(done)), 1, f"job {done} has finished (succeeded)"),
        (("attach", "424242"), 1, "no job 424242"),
        (("attach", "abc"), 2, "job id 'abc'"),
        (("attach", "-1"), 2, ""),
    ):
        out = d.cli(*args)
        err = out.stderr.decode()
        assert out.returncode == code and message in err, (args, out)
        assert "Traceback" not in err and err.count("\n") <= 3
    # a job that fails to start (or ends) before submit -i attaches: shown as --follow does
    bad = d.cli("submit", "-i", "-p", "no-such-package", "--", "bash")
    assert bad.returncode == 1 and b"job error: unknown package" in bad.stderr, bad
    quick = d.cli("submit", "-i", "-p", "coreutils", "--", "sh", "-c", "exit 4")
    assert quick.returncode == 4, quick
    d.cli("cancel", str(ident))
    assert "Traceback" not in d.log()


def test_sigterm_timeout_and_shutdown_give_the_terminal_back(jobsd):  # noqa: F811
    import signal

    d = jobsd()
    outer, ident = _submit_i(d)
    os.kill(outer.nixcell_pid(), signal.SIGTERM)
    outer.child.expect(f"job {ident} goes on")
    assert outer.finish() == 128 + signal.SIGTERM
    assert d.call("GET", f"/api/v1/jobs/{ident}")["job"]["state"] == "running"
    d.cli("cancel", str(ident))
    outer, ident = _submit_i(d, "--timeout", "3s")  # bash waits at its prompt until killed
    outer.child.expect(f"job {ident} timed[_ ]out")
    assert outer.finish() == 124
    assert d.call("GET", f"/api/v1/jobs/{ident}")["job"]["state"] == "timed_out"
    outer, ident = _submit_i(d)  # the daemon stops (SIGTERM: its jobs are cancelled)
    assert d.stop() == 0
    outer.child.expect(f"job {ident} cancelled")
    assert outer.finish() == 130


def test_a_queued_interactive_job_is_waited_for(jobsd):  # noqa: F811
    d = jobsd(config="[server]\nconcurrency = 1\n")
    blocker = int(d.cli("submit", "--detach", "-p", "coreutils", "--", "sleep", "600").stdout)
    d.wait_state(blocker, {"running"})
    outer = Outer("submit", "--server", d.server, "-i", *SHELL)
    jobs = d.call("GET", "/api/v1/jobs?state=queued")["jobs"]
    for _ in range(200):  # the client has submitted and waits
        if jobs:
            break
        time.sleep(0.05)
        jobs = d.call("GET", "/api/v1/jobs?state=queued")["jobs"]
    assert [j["interactive"] for j in jobs] == [True]
    outer.child.send("echo typed-$((3+4)) early\r")  # typed while queued: kept for the shell
    assert d.cli("cancel", str(blocker)).returncode == 0
    outer.child.expect("typed-7 early")
    outer.child.sendline("exit 5")
    assert outer.finish() == 5


# -- the WebSocket itself: hostile frames, TCP, slow readers -------------------------------


HOSTILE_IDS = [
    ("abc", 4400), ("0", 4400), ("-1", 4400), ("1.0", 4400), ("0x1", 4400), ("+1", 4400),
    ("%20", 4400), ("1%00", 4400), ("%31", 4404),  # decoded first, as every other path
    ("99999999999999999999", 4400), ("9223372036854775807", 4404), ("424242", 4404),
]  # fmt: skip


def test_hostile_job_ids_on_the_attach_path(jobsd):  # noqa: F811
    d = jobsd()
    for ident, code in HOSTILE_IDS:
        with _ws(d, ident) as ws:  # type: ignore[arg-type]
            _to_the_end(ws)
        assert ws.close_code == code, (ident, ws.close_code, ws.close_reason)
        assert ws.close_reason.isprintable(), ident
    assert "Traceback" not in d.log()


def _ws(d, ident: int, *, tcp: bool = False, token: str | None = None, **kw):
    from websockets.sync.client import connect, unix_connect

    path = f"/api/v1/jobs/{ident}/attach"
    opts = {"proxy": None, "compression": None, "open_timeout": 30, **kw}
    if tcp:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return connect(f"ws://127.0.0.1:{d.port}{path}", additional_headers=headers, **opts)
    return unix_connect(d.socket, uri=f"ws://localhost{path}", **opts)


def _until(ws, marker: bytes) -> bytes:
    """Frames until ``marker`` (searched in the last 64 KiB only: floods are long)."""
    seen = b""
    while marker not in seen[-65536:]:
        frame = ws.recv(timeout=60)
        if isinstance(frame, bytes):
            seen = seen[-65536:] + frame
    return seen


def _until_logged(d, ident: int, text: str, wait: float = 120.0) -> None:
    deadline = time.monotonic() + wait
    while text not in json.dumps(d.call("GET", f"/api/v1/jobs/{ident}/logs?tail=5")):
        assert time.monotonic() < deadline, f"{text} never reached job {ident}'s log"
        time.sleep(0.2)


def _to_the_end(ws) -> list:
    """Every frame until the server closes."""
    from websockets.exceptions import ConnectionClosed

    frames = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            frames.append(ws.recv(timeout=60))
    return frames


BAD_CONTROLS = [
    "not json",
    "",
    "null",
    "[]",
    "{}",
    '{"resize": [24]}',
    '{"resize": [24, 80, 1]}',
    '{"resize": [0, 80]}',
    '{"resize": [24, -1]}',
    '{"resize": [99999, 80]}',
    '{"resize": [1180591620717411303424, 1]}',
    '{"resize": ["24", "80"]}',
    '{"resize": [24.0, 80]}',
    '{"resize": [true, 80]}',
    '{"resize": null}',
    '{"resize": {"rows": 24}}',
    '{"resize": [24, 80], "exit": 1}',
    '{"resize": [24, 80]}' + " " * 2000,
    '{"resize": [24, 80]}\n{"resize": [1, 1]}',
    "\x00\x1b[2J\r\n",
]


def _oversized_frame(d, ident: int) -> int:
    """Announce a 2 MiB binary frame (its header only) on a raw socket: the close code."""
    import base64
    import socket
    import struct

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)
        sock.connect(d.socket)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            f"GET /api/v1/jobs/{ident}/attach HTTP/1.1\r\nHost: localhost\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head
        rest = head.split(b"\r\n\r\n", 1)[1]
        sock.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, 2 << 20) + os.urandom(4))
        data = rest
        while True:  # frames from the server (the scrollback first), up to its close frame
            while len(data) < 2 or len(data) < _frame_len(data):
                chunk = sock.recv(65536)
                assert chunk, "closed without a close frame"
                data += chunk
            size = _frame_len(data)
            frame, data = data[:size], data[size:]
            if frame[0] & 0x0F == 0x8:  # a close frame: 2 header bytes, then its code
                return struct.unpack("!H", frame[2:4])[0]


def _frame_len(data: bytes) -> int:
    """The length of the unmasked server frame at the start of ``data`` (header included)."""
    import struct

    n = data[1] & 0x7F
    if n == 126:
        return 4 + struct.unpack("!H", data[2:4])[0] if len(data) >= 4 else 1 << 62
    if n == 127:
        return 10 + struct.unpack("!Q", data[2:10])[0] if len(data) >= 10 else 1 << 62
    return 2 + n


def test_hostile_frames_close_that_client_only(jobsd):  # noqa: F811
    d = jobsd()
    ident = int(d.cli("submit", "-i", "--detach", *SHELL).stdout)
    d.wait_state(ident, {"running"})
    for text in BAD_CONTROLS:
        with _ws(d, ident) as ws:
            ws.send(text)
            _to_the_end(ws)
        assert ws.close_code == 4400, (text, ws.close_code, ws.close_reason)
        assert ws.close_reason.isprintable() and ws.close_reason, text
    assert _oversized_frame(d, ident) == 1009  # a frame over the limit: closed at its header
    with _ws(d, ident) as ws:  # terminal bytes are just bytes: any of them reach the shell
        ws.send(bytes(range(1, 32)).replace(b"\x03", b"").replace(b"\x04", b"") + b"\x15")
        ws.send(json.dumps({"resize": [12, 34]}))
        ws.send(b"stty size\r")
        assert b"12 34\r\n" in _until(ws, b"12 34\r\n")
        ws.send(b"exit 7\r")
        frames = _to_the_end(ws)
    assert ws.close_code == 1000
    ends = [json.loads(f) for f in frames if isinstance(f, str)]
    assert ends == [{"exit": {"state": "failed", "exit_code": 7, "reason": None}}]
    assert "Traceback" not in d.log()


def test_tcp_needs_the_token(jobsd):  # noqa: F811
    from websockets.exceptions import InvalidStatus

    d = jobsd(tcp=True)
    ident = int(d.cli("submit", "-i", "--detach", *SHELL).stdout)
    d.wait_state(ident, {"running"})
    for token in (None, "wrong"):
        with pytest.raises(InvalidStatus):
            _ws(d, ident, tcp=True, token=token)
    with pytest.raises(InvalidStatus):  # another site's page cannot attach (Origin)
        _ws(d, ident, tcp=True, token=d.token, origin="http://evil.example")
    with _ws(d, ident, tcp=True, token=d.token) as ws:
        ws.send(b"echo over-$((4*4))\r")
        _until(ws, b"over-16")
    out = d.cli("attach", "--server", d.url, str(ident), env={"NIXCELL_TOKEN": "wrong"})
    assert out.returncode == 1 and b"refused" in out.stderr, out
    assert d.call("GET", f"/api/v1/jobs/{ident}")["job"]["state"] == "running"


def test_a_client_that_stops_reading_is_dropped_the_job_goes_on(jobsd):  # noqa: F811
    d = jobsd()
    # The flood starts on a key and no reader of ours is attached while it runs: only the
    # stalled client, so no test reader can fall behind on a loaded machine and be dropped too.
    flood = (
        "read -r go; head -c 8000000 /dev/zero | tr '\\0' x; echo; echo BIG-$((1+1)); read -r end"
    )
    ident = int(d.cli("submit", "-i", "--detach", *SHELL[:-1], "bash", "-c", flood).stdout)
    d.wait_state(ident, {"running"})
    with _ws(d, ident, max_queue=1) as stalled:
        with _ws(d, ident) as starter:  # attached last: it writes; it detaches at once
            starter.send(b"go\r")
        _until_logged(d, ident, "BIG-2")  # the whole flood went by; stalled read none of it
        _to_the_end(stalled)
        assert stalled.close_code == 4409 and "behind" in stalled.close_reason
    with _ws(d, ident) as late:  # the job went on: its output's tail is in the scrollback
        _until(late, b"BIG-2")
        late.send(b"done\r")
        _to_the_end(late)
    assert d.wait_state(ident, {"succeeded"})["state"] == "succeeded"
    assert re.search(r"BIG-2", json.dumps(d.call("GET", f"/api/v1/jobs/{ident}/logs?tail=5")))
