"""The page's routes over real HTTP (uvicorn on 127.0.0.1): every answer carries the security
headers, only the package's own files are served, and no request path reaches the filesystem."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette

from nixcell.jobs import web


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(Starlette(routes=web.web_routes()), log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)  # the path goes out byte for byte
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


PAGES = [
    ("/", "index.html", "text/html"),
    ("/jobs/1", "index.html", "text/html"),
    ("/jobs/99999999999999999999", "index.html", "text/html"),
    ("/static/index.html", "index.html", "text/html"),
    ("/static/app.js", "app.js", "text/javascript"),
    ("/static/util.js", "util.js", "text/javascript"),
    ("/static/list.js", "list.js", "text/javascript"),
    ("/static/job.js", "job.js", "text/javascript"),
    ("/static/style.css", "style.css", "text/css"),
]


@pytest.mark.parametrize(("path", "name", "ctype"), PAGES)
def test_pages_are_the_package_files_with_security_headers(
    port: int, path: str, name: str, ctype: str
) -> None:
    status, headers, body = get(port, path)
    assert status == 200
    assert body == (Path(web.__file__).with_name("web") / name).read_bytes()
    assert headers["content-type"].startswith(ctype)
    for key, value in web.SECURITY_HEADERS.items():
        assert headers[key.lower()] == value


def test_head_answers_headers_only(port: int) -> None:
    status, headers, body = get(port, "/static/app.js", "HEAD")
    assert status == 200 and body == b""
    assert headers["content-security-policy"] == web.CSP


SECRET_MARKERS = (b"[project]", b"def web_routes", b"root:", b"import ")

# Every way a path could name a file outside the table: traversal in its spellings, other
# package files, case, trailing bytes, directories, absolute paths, NULs, backslashes.
HOSTILE = [
    "/static/../pyproject.toml", "/static/..%2f..%2fpyproject.toml", "/static/%2e%2e/web.py",
    "/static/%2e%2e%2fweb.py", "/static/..%5cweb.py", "/static/..\\web.py", "/static/web.py",
    "/static/../web.py", "/static/%252e%252e%252fweb.py", "/static/APP.JS", "/static/app.js%00",
    "/static/app.js%00.css", "/static/app.js/", "/static/app.js.", "/static/.app.js",
    "/static/", "/static", "/static/.", "/static/..", "/static/%2fetc%2fpasswd",
    "/static//etc/passwd", "/static/~/.ssh", "/static/app.js;x", "/static/app%2ejs%2f..",
    "/static/__init__.py", "/static/contract.py", "/static/job.html", "/jobs/abc", "/jobs/-1",
    "/jobs/1/../../web.py", "/jobs/", "/jobs/1.0", "/static/app.js?../../pyproject.toml#",
]  # fmt: skip


@pytest.mark.parametrize("path", HOSTILE)
def test_no_path_reaches_another_file(port: int, path: str) -> None:
    status, _, body = get(port, path)
    if path.startswith("/static/app.js?"):  # a query is not part of the name
        assert (
            status == 200 and body == (Path(web.__file__).with_name("web") / "app.js").read_bytes()
        )
        return
    assert status in (404, 405, 307), (path, status)
    for marker in SECRET_MARKERS:
        assert marker not in body, (path, marker)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_pages_are_read_only(port: int, method: str) -> None:
    for path in ("/", "/jobs/1", "/static/app.js"):
        status, _, _ = get(port, path, method)
        assert status == 405, (method, path)
