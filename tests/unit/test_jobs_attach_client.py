"""The attach client's reading of the server: exit frames, close codes, refusals, and that the
WebSocket never goes through an HTTP proxy named in the environment (the token would)."""

from __future__ import annotations

import socket
import threading

import pytest

from nixcell.jobs.attach_client import Outcome, connect
from nixcell.jobs.client import Client, ClientError, UsageRefused

EXIT = '{"exit": {"state": "failed", "exit_code": 3, "reason": null}}'


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([EXIT], {"state": "failed", "exit_code": 3, "reason": None}),
        (["not json", EXIT], {"state": "failed", "exit_code": 3, "reason": None}),
        (['{"exit": 3}'], None),
        (['{"exit": [1]}'], None),
        (["[1, 2]"], None),
        (["null"], None),
        (['"exit"'], None),
        (['{"resize": [1, 2]}'], None),
        (["\x00\x1b[2J"], None),
    ],
)
def test_only_an_exit_object_is_an_exit(frames, expected):
    outcome = Outcome()
    for frame in frames:
        outcome.take(frame)
    assert outcome.exit == expected


@pytest.mark.parametrize(
    ("code", "reason", "cls", "text"),
    [
        (4404, "no job 7", ClientError, "no job 7"),
        (4409, "job 7 is not interactive", ClientError, "job 7 is not interactive"),
        (4400, "bad job id", UsageRefused, "bad job id"),
        (4400, "", UsageRefused, "the daemon refused to attach (code 4400)"),
        (4404, "no job 7\r\n[fake] line\x1b[2J", ClientError, "no job 7??[fake] line?[2J"),
        (1011, "", ClientError, "internal error"),
        (1012, "", ClientError, "the daemon shut down"),
        (1001, "", ClientError, "the daemon shut down"),
        (1000, "", ClientError, "broke off"),  # closed with no exit frame
        (1006, "", ClientError, "broke off"),
        (None, "", ClientError, "broke off"),
    ],
)
def test_close_codes_are_one_line_errors(code, reason, cls, text):
    outcome = Outcome(code=code, reason=reason)
    error = outcome.error()
    assert type(error) is cls and text in error.message
    assert error.message.isprintable()


def test_an_exit_or_a_detach_is_no_error():
    assert Outcome(exit={"state": "succeeded"}, code=1000).error() is None
    assert Outcome(detached=True, code=1006).error() is None


def _listener() -> tuple[socket.socket, list[bytes]]:
    """A loopback listener that records what each connection sent and answers HTTP 403."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    seen: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                seen.append(data)
                body = b'{"error": "a token is required"}'
                conn.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )

    threading.Thread(target=serve, daemon=True).start()
    return sock, seen


def test_the_websocket_ignores_proxy_variables(monkeypatch):
    proxy, via_proxy = _listener()
    daemon, direct = _listener()
    try:
        url = f"http://127.0.0.1:{proxy.getsockname()[1]}"
        for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setenv("NIXCELL_TOKEN", "s3cret-token")
        client = Client(f"http://127.0.0.1:{daemon.getsockname()[1]}")
        with pytest.raises(ClientError, match="a token is required"):
            connect(client, 5)
        assert via_proxy == []
        assert len(direct) == 1 and b"GET /api/v1/jobs/5/attach " in direct[0]
        assert b"Authorization: Bearer s3cret-token" in direct[0]
    finally:
        proxy.close()
        daemon.close()
