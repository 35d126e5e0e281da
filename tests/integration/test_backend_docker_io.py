"""The docker backend's stdio and daemon answers: a gone reader reaches the cell as SIGPIPE, a
slow reader gets every byte, and a daemon that answers nonsense, or stops answering, ends the
run with one line near its timeout. Real dockerd and cells (``dockerd.py``); the daemon's bad
answers come from a fake daemon on a unix socket (``fakedockerd.py``), never from the real one.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from tests.conftest import NIXCELL
from tests.integration import fakedockerd as fake

RUN = [NIXCELL, "run", "--backend", "docker", "-p", "coreutils", "-p", "bash", "-p", "python3"]
PY_FOREVER = "import sys\nwhile True: print('x' * 100, file=sys.%s)"

# (what writes for ever or once, the stream whose reader is gone)
GONE_READER = [
    (["yes"], 1),  # SIGPIPE's default: it dies at once
    (["bash", "-c", "yes >&2"], 2),
    (["bash", "-c", "echo a; sleep 1; echo c; echo wr=$? >&2"], 1),  # one write, then quiet
    (["python3", "-c", PY_FOREVER % "stdout"], 1),  # ignores SIGPIPE: killed, said so
    (["python3", "-c", PY_FOREVER % "stderr"], 2),
]


@pytest.mark.parametrize(("argv", "stream"), GONE_READER)
def test_a_gone_reader_ends_the_writer_as_sigpipe(dockerd, offline_set, argv, stream):
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the cell writes (`| true`)
    other = subprocess.PIPE
    try:
        proc = subprocess.run(
            [*RUN, "--", *argv],
            stdout=w if stream == 1 else other,
            stderr=w if stream == 2 else other,
            timeout=120,  # before the fix: for ever
        )
    finally:
        os.close(w)
    assert proc.returncode == 141, proc  # as bwrap's: death by SIGPIPE (128 + 13)
    if argv[0] == "python3":
        said = proc.stderr if stream == 1 else b""
        assert stream == 2 or b"ignores SIGPIPE" in said, said
    elif argv[0] == "bash" and stream == 1:
        assert b"wr=" not in proc.stderr  # it never wrote past the broken pipe


def test_head_of_yes_ends_at_once(dockerd, offline_set):
    proc = subprocess.Popen([*RUN, "--", "yes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    got = proc.stdout.read(100)
    proc.stdout.close()  # `| head -c 100`
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert (len(got), proc.returncode, err) == (100, 141, b""), err


def test_a_slow_reader_gets_every_byte(dockerd, offline_set):
    """The cell exits long before its reader reads (13 s: more than any fixed drain deadline)."""
    proc = subprocess.Popen(
        [*RUN, "--", "head", "-c", "1000000", "/dev/zero"], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        proc.wait(timeout=13)  # it cannot end before its output is read
        pytest.fail("the run reported its exit before its output was delivered")
    except subprocess.TimeoutExpired:
        pass
    data = proc.stdout.read()
    assert (len(data), proc.wait(timeout=60)) == (1000000, 0)


def test_the_timeout_bounds_a_never_read_output(dockerd, offline_set):
    r, w = os.pipe()  # a reader that never reads: the run ends by its timeout, saying so
    try:
        proc = subprocess.run(
            [*RUN, "--timeout", "3s", "--", "head", "-c", "1000000", "/dev/zero"],
            stdout=w,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(w)
        os.close(r)
    assert proc.returncode == 124 and b"timed out" in proc.stderr, proc


@pytest.fixture(scope="module")
def warm(offline_set):
    """The plan resolved once (bwrap): the runs below print only what the backend says."""
    subprocess.run([*RUN, "--backend", "bwrap", "--", "true"], check=True, capture_output=True)


def _daemon(tmp_path, route, name: str = "d.sock"):
    return fake.FakeDaemon(str(tmp_path / name), route)


def _kind(method: str, path: str) -> str:
    if path in ("/_ping", "/containers/json", "/containers/create"):
        return {"/_ping": "ping", "/containers/json": "list", "/containers/create": "create"}[path]
    if path.endswith(("/attach", "/wait")):
        return path.rsplit("/", 1)[1]
    return "inspect" if method == "GET" and path.endswith("/json") else "other"


DEFAULT = {
    "ping": fake.OK_PING,
    "list": fake.json_answer(b"[]"),
    "create": fake.json_answer(b'{"Id": "fake"}', 201),
    "attach": fake.UPGRADE,
}


def _routes(**special: fake.Answer):
    """A daemon that answers as dockerd would, but ``special``'s kinds of call as given."""

    def route(method: str, path: str) -> fake.Answer:
        kind = _kind(method, path)
        return special.get(kind, DEFAULT.get(kind, (204, "text/plain", b"")))

    return route


MALFORMED = [
    ({"wait": fake.json_answer(b"<html>not json")}, [], b"not JSON"),
    ({"wait": fake.json_answer(b"[1, 2]")}, [], b"StatusCode"),
    ({"wait": fake.json_answer(b'{"StatusCode": "abc"}')}, [], b"StatusCode"),
    (
        {
            "wait": fake.json_answer(b'{"StatusCode": 137}'),
            "inspect": fake.json_answer(b'{"State": []}'),
        },
        [],
        b"OOMKilled",
    ),
    (
        {"inspect": fake.json_answer(b'{"State": {"Pid": "abc"}}')},
        ["--allow-host", "up.test"],
        b"Pid",
    ),
    ({"inspect": fake.json_answer(b"[]")}, ["--allow-host", "up.test"], b"Pid"),
]


@pytest.mark.parametrize(("special", "flags", "names"), MALFORMED)
def test_a_malformed_daemon_answer_is_one_line(warm, tmp_path, special, flags, names):
    daemon = _daemon(tmp_path, _routes(**special))
    env = {**os.environ, "NIXCELL_DOCKER_HOST": f"unix://{daemon.path}"}
    try:
        proc = subprocess.run(
            [*RUN, "--timeout", "20s", *flags, "--", "true"],
            env=env,
            capture_output=True,
            timeout=120,
        )
    finally:
        daemon.close()
    err = proc.stderr
    assert proc.returncode != 0 and err.count(b"\n") == 1, err
    assert b"malformed" in err and names in err and b"internal error" not in err, err


def test_a_hung_daemon_ends_the_run_near_its_timeout_and_its_text_is_escaped(warm, tmp_path):
    everything = {k: fake.HANG for k in ("list", "create", "attach", "wait", "inspect", "other")}
    hung = _daemon(tmp_path, _routes(**everything))
    env = {**os.environ, "NIXCELL_DOCKER_HOST": f"unix://{hung.path}"}
    try:  # before: 60 s per call and 60 s more in cleanup (181 s)
        proc = subprocess.run(
            [*RUN, "--timeout", "5s", "--", "true"], env=env, capture_output=True, timeout=60
        )
    finally:
        hung.close()
    assert proc.returncode != 0 and b"did not answer" in proc.stderr, proc.stderr
    assert b"internal error" not in proc.stderr and b"Traceback" not in proc.stderr

    evil = b'{"message": "\\u001b]0;owned\\u0007boom \\u001b[31mred\\u009b2J"}'
    daemon = _daemon(tmp_path, _routes(create=fake.json_answer(evil, 500)), "evil.sock")
    env["NIXCELL_DOCKER_HOST"] = f"unix://{daemon.path}"
    try:
        proc = subprocess.run([*RUN, "--", "true"], env=env, capture_output=True, timeout=120)
    finally:
        daemon.close()
    err = proc.stderr
    assert proc.returncode != 0 and b"boom" in err and err.count(b"\n") == 1, err
    assert not any(c < 0x20 and c != 0x0A for c in err) and "\x9b".encode() not in err, err


NET_FACTS = """
import errno, socket
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(attempt(lambda: socket.socket().bind(("127.0.0.1", 80))))
print(attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)))
print(attempt(lambda: socket.socket().bind(("127.0.0.1", 1024))))
"""


@pytest.mark.parametrize("flags", [[], ["--allow-host", "up.test"]], ids=["none", "holder"])
def test_privileged_ports_and_icmp_sockets_are_refused_as_under_bwrap(dockerd, warm, flags):
    """Docker's netns defaults let any uid bind port 80 and open ICMP sockets; bwrap's not."""
    proc = subprocess.run(
        [*RUN, *flags, "--", "python3", "-c", NET_FACTS], capture_output=True, timeout=120
    )
    assert proc.stdout.decode().split() == ["EACCES", "EACCES", "ok"], proc
