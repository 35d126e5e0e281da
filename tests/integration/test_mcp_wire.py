"""Malformed JSON-RPC gets a JSON-RPC error, never silence or a 500; end of input ends the server.

One table of malformed messages, sent as raw bytes to a real ``nixcell mcp`` over stdio (one
line each) and over HTTP (one POST body each): each gets its error code and id, and the server
answers a valid request afterwards. Notifications with bad params get no answer and do no harm.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import NIXCELL
from tests.integration.mcp_http import INIT, Raw, http_server, server_env, text

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("offline_set")]

PARSE, INVALID, NO_METHOD = -32700, -32600, -32601


def _m(**fields: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **fields}).encode()


PING = {"id": 7, "method": "ping"}
# (name, raw message, error code, id the error carries)
MALFORMED: list[tuple[str, bytes, int, Any]] = [
    ("truncated JSON", b'{"jsonrpc": "2.0", "id": 7,', PARSE, None),
    ("not JSON at all", b"hello", PARSE, None),
    ("empty message", b"", PARSE, None),
    (
        "invalid UTF-8",
        b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"a":"\xc3\x28"}}',
        PARSE,
        None,
    ),
    ("latin-1 bytes", '{"jsonrpc":"2.0","id":7,"method":"pïng"}'.encode("latin-1"), PARSE, None),
    ("UTF-8 BOM", b"\xef\xbb\xbf" + _m(**PING), PARSE, None),
    ("lone high surrogate", _m(id=7, method="ping").replace(b'"ping"', b'"\\ud800"'), PARSE, None),
    (
        "lone low surrogate in params",
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
        b'"params":{"name":"run","arguments":{"code":"\\udc00","env":"python"}}}',
        PARSE,
        None,
    ),
    (
        "reversed surrogate pair",
        b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"\\udc00\\ud800":1}}',
        PARSE,
        None,
    ),
    ("duplicate id", b'{"jsonrpc":"2.0","id":7,"id":8,"method":"ping"}', PARSE, None),
    (
        "duplicate method",
        b'{"jsonrpc":"2.0","id":7,"method":"ping","method":"tools/list"}',
        PARSE,
        None,
    ),
    ("NaN", b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"x":NaN}}', PARSE, None),
    (
        "infinite number",
        b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"x":1e999}}',
        PARSE,
        None,
    ),
    ("NUL after the message", _m(**PING) + b"\x00", PARSE, None),
    ("NUL inside a string", _m(**PING).replace(b"ping", b"pi\x00ng"), PARSE, None),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, PARSE, None),
    ("batch", b"[" + _m(**PING) + b"]", INVALID, None),
    ("empty batch", b"[]", INVALID, None),
    ("a string", b'"ping"', INVALID, None),
    ("a number", b"7", INVALID, None),
    ("null", b"null", INVALID, None),
    ("missing jsonrpc", b'{"id":7,"method":"ping"}', INVALID, 7),
    ("jsonrpc 1.0", _m(**PING).replace(b'"2.0"', b'"1.0"'), INVALID, 7),
    ("jsonrpc as a number", _m(**PING).replace(b'"2.0"', b"2.0"), INVALID, 7),
    ("boolean id", _m(id=True, method="ping"), INVALID, None),
    ("fractional id", _m(id=7.5, method="ping"), INVALID, None),
    ("object id", _m(id={"a": 1}, method="ping"), INVALID, None),
    ("null id", _m(id=None, method="ping"), INVALID, None),
    ("numeric method", _m(id=7, method=5), INVALID, 7),
    ("empty method", _m(id=7, method=""), INVALID, 7),
    ("params as a list", _m(id=7, method="ping", params=[1]), INVALID, 7),
    ("params as a string", _m(id=7, method="ping", params="x"), INVALID, 7),
    ("request and response at once", _m(id=7, method="ping", result={}), INVALID, 7),
    ("unknown member", _m(id=7, method="ping", extra=1), INVALID, 7),
    ("response without id", _m(result={}), INVALID, None),
    ("response with a non-object result", _m(id=99, result=5), INVALID, None),
    ("neither request nor response", _m(id=7), INVALID, None),
    ("unknown method", _m(id=7, method="no/such/method"), NO_METHOD, 7),
]
BAD_NOTIFICATIONS = [
    _m(method="notifications/cancelled", params={"requestId": {"x": 1}}),
    _m(method="notifications/progress", params={"progressToken": [], "progress": "x"}),
    _m(method="notifications/initialized", params={"_meta": 5}),
    _m(method="notifications/no-such-thing", params={"a": 1}),
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project").mkdir()
    (tmp_path / "xdg").mkdir()
    return tmp_path / "project"


class Stdio:
    """``nixcell mcp`` over raw pipes: bytes in, one JSON line out."""

    def __init__(self, project: Path) -> None:
        self.proc = subprocess.Popen(
            [NIXCELL, "mcp"],
            cwd=project,
            env=server_env(project),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # no Python-side buffer: select() below sees everything pending
        )

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def answer(self) -> Any:
        """The next line the server writes; silence fails the test instead of hanging it."""
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert readable, "the server stayed silent"
        line = self.proc.stdout.readline()
        assert line.endswith(b"\n"), f"no answer; stderr: {self.finish()}"
        return json.loads(line)

    def ping(self, request_id: int) -> None:
        self.send(_m(id=request_id, method="ping") + b"\n")
        assert self.answer() == {"jsonrpc": "2.0", "id": request_id, "result": {}}

    def finish(self) -> str:
        _, err = self.proc.communicate(timeout=60)
        return err.decode()


def _is_error(answer: Any, code: int, request_id: Any) -> None:
    assert answer.get("jsonrpc") == "2.0" and answer.get("id") == request_id, answer
    assert answer["error"]["code"] == code, answer
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]


def test_stdio_answers_every_malformed_message_and_keeps_serving(project):
    server = Stdio(project)
    server.send(_m(id=0, method="initialize", params=INIT) + b"\n")
    assert server.answer()["id"] == 0
    server.send(_m(method="notifications/initialized") + b"\n")
    for n, (name, data, code, request_id) in enumerate(MALFORMED, start=100):
        server.send(data + b"\n")
        answer = server.answer()
        assert answer.get("id") == request_id and "error" in answer, (name, answer)
        _is_error(answer, code, request_id)
        server.ping(n)  # still serving, and nothing else was queued for it
    for data in BAD_NOTIFICATIONS:
        server.send(data + b"\n")
        server.ping(1)  # no answer to the notification came before the ping's
    server.send(b"a" * ((64 << 20) + 10) + b"\n")  # past the line limit
    _is_error(server.answer(), INVALID, None)
    server.ping(2)
    server.send(b'{"jsonrpc": "2.0", "id": 3')  # the last line has no newline
    server.proc.stdin.close()  # type: ignore[union-attr]
    server.proc.stdin = None  # communicate() must not flush it
    _is_error(server.answer(), PARSE, None)
    err = server.finish()
    assert server.proc.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("stdin", ["devnull", "closed", "empty-file", "garbage-file"])
def test_end_of_input_exits_zero(project, tmp_path, stdin):
    """``nixcell mcp < /dev/null`` (or ``<&-``, or a file) ends at once with exit 0; a file's
    malformed content is still answered."""
    if stdin == "closed":  # `nixcell mcp <&-`: fd 0 not open at all
        proc = subprocess.run(
            ["sh", "-c", f"exec {NIXCELL} mcp <&-"],
            cwd=project,
            env=server_env(project),
            capture_output=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout == b"" and b"Traceback" not in proc.stderr
        return
    if stdin == "devnull":
        source = os.open(os.devnull, os.O_RDONLY)
    else:
        path = tmp_path / "in"
        path.write_bytes(b"" if stdin == "empty-file" else b"{oops\n[1]")
        source = os.open(path, os.O_RDONLY)
    try:
        proc = subprocess.run(
            [NIXCELL, "mcp"],
            cwd=project,
            env=server_env(project),
            stdin=source,
            capture_output=True,
            timeout=30,
        )
    finally:
        os.close(source)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    if stdin == "garbage-file":
        assert [a["error"]["code"] for a in answers] == [PARSE, INVALID]
    else:
        assert answers == []


def test_http_answers_every_malformed_body_with_a_json_rpc_error(project):
    with http_server(project) as url:
        raw = Raw(url)
        raw.initialize()
        for name, data, code, request_id in MALFORMED:
            status, _, messages = raw.request("POST", data)
            expected = 200 if code == NO_METHOD else 400
            assert status == expected, (name, status, messages)
            assert len(messages) == 1, (name, messages)
            _is_error(messages[0], code, request_id)
        for data in BAD_NOTIFICATIONS:
            status, _, messages = raw.request("POST", data)
            assert status == 202 and messages == [], (data, status, messages)
        status, _, messages = raw.request("POST", b"x" * ((4 << 20) + 1))
        assert status == 413 and messages[0]["error"]["code"] == INVALID
        fresh = Raw(url)  # malformed bodies without a session id are refused the same way
        for name, data, code, request_id in MALFORMED:
            status, _, messages = fresh.request("POST", data)
            if code != NO_METHOD:
                assert status == 400, (name, status)
                _is_error(messages[0], code, request_id)
        for headers, status_wanted in [
            ({"Content-Type": "text/plain"}, 400),
            ({"Host": "evil.example"}, 421),
            ({"Origin": "http://evil.example"}, 403),
        ]:
            status, _, messages = raw.request("POST", _m(**PING), **headers)
            assert status == status_wanted, (headers, status)
            _is_error(messages[0], INVALID, None)
        result = raw.tool("run", {"code": "print(6 * 7)", "env": "python"})
        assert text(result) == "42\nexit code: 0"


def test_a_client_that_stops_reading_cannot_keep_the_server_alive(project):
    """Answers fill the stdout pipe nobody reads; SIGTERM still ends the server, exit 0."""
    import fcntl
    import signal
    import termios
    import time

    server = Stdio(project)
    server.send(_m(id=0, method="initialize", params=INIT) + b"\n")
    assert server.answer()["id"] == 0
    server.send(_m(method="notifications/initialized") + b"\n")
    server.send(b"".join(_m(id=n, method="tools/list") + b"\n" for n in range(1, 200)))
    pending, sizes = bytearray(4), [-1]
    deadline = time.monotonic() + 60
    while len(sizes) < 20 or len(set(sizes[-20:])) > 1 or sizes[-1] <= 0:
        # until the unread answers stop growing: the pipe is full, the server's writes wait
        fcntl.ioctl(server.proc.stdout, termios.FIONREAD, pending)
        sizes.append(int.from_bytes(pending, "little"))
        assert time.monotonic() < deadline, "the answers never filled the pipe"
        time.sleep(0.05)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0


def test_a_client_that_closes_its_end_of_stdout_ends_the_server(project):
    server = Stdio(project)
    server.ping(1)  # ping needs no initialize
    server.proc.stdout.close()  # type: ignore[union-attr]
    server.proc.stdout = None
    server.send(_m(id=2, method="ping") + b"\n")  # its answer meets a closed pipe
    assert server.proc.wait(timeout=60) == 0


@pytest.mark.parametrize("stdin", [b"", b"{oops\n\xff\n[1]\n" + _m(id=5, method="ping", x=1)])
def test_an_ordinary_user_gets_the_same_answers_and_exit(user_home, stdin):
    """The wire handling does not depend on who runs the server (uid 65534 here): malformed
    lines answered, end of input ends it with exit 0. No cell is needed for either."""
    nobody = 65534
    os.chown(user_home, nobody, nobody)
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", NIXCELL, "mcp"],
        input=stdin,
        capture_output=True,
        cwd=user_home,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(user_home),
            "NIXCELL_HOME": str(user_home / "state"),
            "XDG_CONFIG_HOME": str(user_home / "xdg"),
            "LANG": "C.UTF-8",
        },
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    answers = [json.loads(line) for line in proc.stdout.splitlines()]
    codes = [(a["id"], a["error"]["code"]) for a in answers]
    assert codes == (
        [] if not stdin else [(None, PARSE), (None, PARSE), (None, INVALID), (5, INVALID)]
    )
