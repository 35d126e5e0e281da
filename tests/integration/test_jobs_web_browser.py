"""The web page in a real browser: Debian's headless Chromium (driven by Playwright, no browser
download) against a real ``nixcell serve`` on 127.0.0.1 running real cells.

Every test also checks that each request the browser made went to the daemon's own address.
"""

from __future__ import annotations

import http.server
import json
import shutil
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.jobsd import Daemon as TcpDaemon
from tests.integration.webrig import Attacker, Recorder, chromium

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
    "--disable-client-side-phishing-detection", "--disable-domain-reliability", "--no-pings",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,"
    "NetworkTimeServiceQuerying,OptimizationGuideModelDownloading,CertificateTransparencyComponentUpdater",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # a safety net, not the check
    # Chromium's own services (component updates, Google sign-in) pointed at a dead loopback
    # port; with them quiet, the recorder below must see nothing at all.
    "--component-updater=url-source=http://127.0.0.1:9/", "--google-base-url=http://127.0.0.1:9/",
    "--gaia-url=http://127.0.0.1:9/", "--lso-url=http://127.0.0.1:9/",
]  # fmt: skip
WAIT = 90_000  # ms: an upper bound for real cells on a loaded machine, not a timing assertion
TERMINAL = ("succeeded", "failed", "cancelled", "timed_out", "error")


@pytest.fixture(scope="module")
def tcp_daemon(offline_set: Any) -> Iterator[TcpDaemon]:
    """One real daemon for the module, on a unix socket and 127.0.0.1 (token: ``d.token``)."""
    root = Path(tempfile.mkdtemp(prefix="nixcell-web-", dir="/tmp"))
    root.chmod(0o755)
    daemon = TcpDaemon(root, "", tcp=True)
    try:
        yield daemon.start()
    finally:
        daemon.stop()
        daemon._log.close()
        shutil.rmtree(root, ignore_errors=True)


def _api(d: TcpDaemon, method: str, path: str, data: Any = None) -> tuple[int, Any]:
    """JSON over TCP with the daemon's admin token, as the page's own caller."""
    body = None if data is None else json.dumps(data).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    status, _, raw = d.request(method, path, body, headers, tcp=True, token=d.token)
    return status, json.loads(raw)


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    server = Recorder()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser_exe() -> str:
    """Chromium's path; skips (before any daemon starts) where it or Playwright is missing."""
    exe = chromium()
    if exe is None:
        pytest.skip("needs Debian's chromium: run ./setup")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("needs the playwright Python package: pip install -e '.[dev]'")
    return exe


@pytest.fixture(scope="module")
def browser_context(
    browser_exe: str,
    tmp_path_factory: pytest.TempPathFactory,
    tcp_daemon: TcpDaemon,
    recorder: Recorder,
) -> Iterator:
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=browser_exe,
            headless=True,
            args=[
                *CHROMIUM_FLAGS,
                f"--proxy-server=http://127.0.0.1:{recorder.server_address[1]}",
            ],
        )
        ctx.recorder = recorder  # type: ignore[attr-defined]
        ctx.set_default_timeout(WAIT)
        ctx.requests = []  # type: ignore[attr-defined]
        ctx.allowed = set()  # type: ignore[attr-defined]  # netlocs a test served itself
        ctx.on("request", lambda r: ctx.requests.append(r.url))  # type: ignore[attr-defined]
        try:
            yield ctx
        finally:
            ctx.close()


def _only_loopback(ctx: Any, base: str) -> None:
    ours = urllib.parse.urlsplit(base).netloc
    allowed = tuple(ctx.allowed)
    foreign = [
        url
        for url in ctx.requests
        if urllib.parse.urlsplit(url).netloc not in (ours, *allowed)
        and not url.startswith(("about:", "data:"))
    ]
    assert foreign == [], f"the browser asked elsewhere: {foreign[:5]}"
    hosts = {urllib.parse.urlsplit(u).hostname for u in ctx.requests if u.startswith("http")}
    assert hosts == {"127.0.0.1"}, hosts
    assert ctx.recorder.lines == [], f"the browser tried to leave loopback: {ctx.recorder.lines}"
    assert ctx.requests, "no request was recorded at all"


@pytest.fixture
def page(browser_context: Any, tcp_daemon: TcpDaemon) -> Iterator[Any]:
    """A signed-in page (the first use signs in through the form)."""
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(tcp_daemon.url + "/")
    page.wait_for_selector("#list-view:not([hidden]), #login:not([hidden])")
    if page.is_visible("#login"):
        page.fill("#token", tcp_daemon.token)
        page.click("#login-submit")
        page.wait_for_selector("#list-view:not([hidden])")
    page.errors = errors
    yield page
    page.close()
    assert errors == [], f"uncaught errors in the page: {errors}"
    _only_loopback(browser_context, tcp_daemon.url)


def _line_script(n: int, text: str = "line") -> str:
    return f'for i in $(seq 1 {n}); do echo "{text} $i"; sleep 0.2; done\n'


def _submit(d: TcpDaemon, **request: Any) -> int:
    request.setdefault("packages", ["bash", "coreutils"])
    status, body = _api(d, "POST", "/api/v1/jobs", request)
    assert status == 201, body
    return int(body["job"]["id"])


def _state(d: TcpDaemon, job_id: int) -> str:
    status, body = _api(d, "GET", f"/api/v1/jobs/{job_id}")
    assert status == 200, body
    return str(body["job"]["state"])


def _texts(page: Any, stream: str, count: int) -> list[str]:
    """The texts of a stream's lines once ``count`` of them are shown (the state field can say
    "succeeded" from the first GET, before the log stream has delivered anything)."""
    page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length >= n",
        arg=[f"#log .line.stream-{stream}", count],
    )
    return page.eval_on_selector_all(
        f"#log .line.stream-{stream} .text", "els => els.map(e => e.textContent)"
    )


# Records, in the page, every state a row or the job page's state field ever showed and how many
# log lines were there at each change, so a test can tell "grew while running" from the history
# instead of from timing.
_WATCH = """() => {
  window.__seen = [];
  const note = () => {
    const st = document.querySelector('#state');
    window.__seen.push({state: st ? st.textContent : null,
                        lines: document.querySelectorAll('#log .line').length,
                        rows: [...document.querySelectorAll('#jobs tr')].map(
                                 r => r.dataset.id + ':' + r.dataset.state)});
  };
  new MutationObserver(note).observe(document.body,
      {subtree: true, childList: true, characterData: true, attributes: true});
  note();
}"""


def test_sign_in_uses_an_httponly_cookie(browser_context: Any, tcp_daemon: TcpDaemon) -> None:
    browser_context.clear_cookies()
    page = browser_context.new_page()
    page.goto(tcp_daemon.url + "/")
    page.wait_for_selector("#login:not([hidden])")
    assert page.is_hidden("#list-view")
    page.fill("#token", "not-the-token")
    page.click("#login-submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "token" in page.text_content("#error")
    assert page.is_hidden("#list-view")
    page.fill("#token", tcp_daemon.token)
    page.click("#login-submit")
    page.wait_for_selector("#list-view:not([hidden])")
    cookies = browser_context.cookies(tcp_daemon.url)
    assert cookies and all(c["httpOnly"] and c["sameSite"] == "Strict" for c in cookies)
    assert page.evaluate("document.cookie") == ""  # scripts cannot read the session
    assert tcp_daemon.token not in page.url
    assert tcp_daemon.token not in page.content()
    page.close()
    _only_loopback(browser_context, tcp_daemon.url)


def test_list_shows_a_new_job_and_updates_when_it_finishes(
    page: Any, tcp_daemon: TcpDaemon
) -> None:
    page.evaluate(_WATCH)
    # 3 s of output: the row appears on the job's first event, long before it ends
    job_id = _submit(tcp_daemon, script=_line_script(15, "tick"), name="web-list-job")
    row = f"#jobs tr[data-id='{job_id}']"
    page.wait_for_selector(row)  # appeared without a reload
    assert "web-list-job" in page.text_content(row)
    page.wait_for_selector(f"{row}[data-state='succeeded']")
    assert _state(tcp_daemon, job_id) == "succeeded"
    seen = [s for entry in page.evaluate("window.__seen") for s in entry["rows"]]
    states = [s.split(":", 1)[1] for s in seen if s.startswith(f"{job_id}:")]
    assert any(s not in TERMINAL for s in states), states  # it was shown before it finished
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_logs_stream_live(page: Any, tcp_daemon: TcpDaemon) -> None:
    job_id = _submit(tcp_daemon, script=_line_script(30), name="web-log-job")
    page.goto(f"{tcp_daemon.url}/jobs/{job_id}")
    page.wait_for_selector("#job-view:not([hidden])")
    page.evaluate(_WATCH)
    page.wait_for_selector("#state:text-is('succeeded')")
    texts = _texts(page, "stdout", 30)
    assert texts == [f"line {i}" for i in range(1, 31)]  # every line, once, in order
    seen = page.evaluate("window.__seen")
    running = {e["lines"] for e in seen if e["state"] == "running"}
    assert len(running) >= 2, f"no growth seen while running: {sorted(running)}"
    # streams are coloured apart and can be hidden; the text filter narrows what is left
    colour = "el => getComputedStyle(el).color"
    stdout_colour = page.eval_on_selector("#log .line.stream-stdout .text", colour)
    assert page.eval_on_selector("#log .line.stream-system .text", colour) != stdout_colour
    page.uncheck("#show-stdout")
    assert page.is_hidden("#log .line.stream-stdout") and page.is_visible(
        "#log .line.stream-system"
    )
    page.check("#show-stdout")
    page.fill("#log-search", "line 3")
    shown = page.eval_on_selector_all(
        "#log .line:not([hidden]) .text", "els => els.map(e => e.textContent)"
    )
    assert shown == ["line 3", "line 30"]


def test_cancel_from_the_page(page: Any, tcp_daemon: TcpDaemon) -> None:
    job_id = _submit(tcp_daemon, script="echo started; sleep 600\n", name="web-cancel-job")
    cell = f"#jobs tr[data-id='{job_id}'][data-state='running'] .duration"
    page.wait_for_selector(cell)
    first = page.text_content(cell)
    page.wait_for_function(  # the running job's duration ticks without any new data
        "([sel, first]) => { const c = document.querySelector(sel);"
        " return c && c.textContent !== '' && c.textContent !== first; }",
        arg=[cell, first],
    )
    page.goto(f"{tcp_daemon.url}/jobs/{job_id}")
    page.wait_for_selector("#log .line .text:text-is('started')")
    page.click("#cancel")
    page.wait_for_selector("#state:text-is('cancelled')")
    assert page.is_hidden("#cancel")
    assert _state(tcp_daemon, job_id) == "cancelled"
    page.goto(tcp_daemon.url + "/")
    page.wait_for_selector(f"#jobs tr[data-id='{job_id}'][data-state='cancelled']")


def _until(page: Any, check: Any) -> None:
    """Poll ``check`` while the page runs (a held request reaches its route handler only while
    Playwright is waiting on something: hence the page's own wait, not a sleep)."""
    import time

    deadline = time.monotonic() + WAIT / 1000
    while not check():
        assert time.monotonic() < deadline, "never got there"
        page.wait_for_timeout(50)


class _Held:
    """Requests matching ``pattern`` are held (not sent) until ``release``."""

    def __init__(self, page: Any, pattern: str) -> None:
        import re

        self.page, self.url, self.routes = page, re.compile(pattern), []
        page.route(self.url, lambda route: self.routes.append(route))

    def release(self) -> None:
        """Send what was held, and stop holding: a reconnect of the stream must go through."""
        for route in self.routes:  # (unroute lets go of whatever is held after these)
            route.continue_()
        self.page.unroute(self.url)


def test_a_job_made_before_the_list_streams_is_still_listed(
    page: Any, tcp_daemon: TcpDaemon
) -> None:
    """The list is a GET and then a stream: a job created, and running, between the two was in
    neither, and never showed (seen in CI). The stream is held back here to open that gap."""
    held = _Held(page, r"/api/v1/events(\?|$)")
    page.reload()
    _until(page, lambda: held.routes)  # the first GET is done: the stream is asked for after it
    job_id = _submit(tcp_daemon, script="echo started; sleep 600\n", name="web-gap-job")
    try:
        _until(page, lambda: _state(tcp_daemon, job_id) == "running")
        held.release()
        page.wait_for_selector(f"#jobs tr[data-id='{job_id}'][data-state='running']")
    finally:
        _api(tcp_daemon, "POST", f"/api/v1/jobs/{job_id}/cancel")
    page.wait_for_selector(f"#jobs tr[data-id='{job_id}'][data-state='cancelled']")


HOSTILE_LINES = [
    "<script>window.PWNED=1</script>",
    "<img src=x onerror=window.PWNED=2>",
    '<svg onload="window.PWNED=3"></svg>',
    '"><iframe src="javascript:window.PWNED=4"></iframe>',
    "</div><b>bold</b>&amp;&lt;",
]


def test_hostile_output_is_shown_as_text(page: Any, tcp_daemon: TcpDaemon) -> None:
    lines = "".join(f"printf '%s\\n' {json.dumps(s)}\n" for s in HOSTILE_LINES)
    script = lines + "printf 'esc \\033[31mred\\rforged line\\n'\n"
    job_id = _submit(
        tcp_daemon,
        script=script,
        name="<img src=x onerror=window.PWNED=5>",
        env={"API_KEY": "sk-web-secret-value"},
        secret_env=["API_KEY"],
    )
    page.wait_for_selector(f"#jobs tr[data-id='{job_id}'][data-state='succeeded']")
    assert page.text_content(f"#jobs tr[data-id='{job_id}'] .cmd") == (
        "<img src=x onerror=window.PWNED=5>"
    )
    page.goto(f"{tcp_daemon.url}/jobs/{job_id}")
    page.wait_for_selector("#state:text-is('succeeded')")
    texts = _texts(page, "stdout", len(HOSTILE_LINES) + 1)
    assert texts[: len(HOSTILE_LINES)] == HOSTILE_LINES
    assert texts[len(HOSTILE_LINES)] == "esc \\x1b[31mred\\x0dforged line"
    assert page.evaluate("typeof window.PWNED") == "undefined"
    for tag in ("img", "script", "svg", "iframe", "b"):
        assert page.eval_on_selector_all(f"main {tag}", "els => els.length") == 0, tag
    assert "sk-web-secret-value" not in page.content()
    assert page.text_content("dd[data-field='env']") == "API_KEY=<secret>"


def test_policy_decisions_are_shown(page: Any, tcp_daemon: TcpDaemon) -> None:
    # .invalid never resolves: the proxy denies by name and nothing leaves the machine.
    script = (
        "curl -sS -o /dev/null http://blocked.invalid/x-path\n"
        "curl -sS -o /dev/null https://blocked.invalid/\n"
    )
    job_id = _submit(
        tcp_daemon, packages=["bash", "curl"], allow_hosts=["allowed.invalid"], script=script
    )
    page.goto(f"{tcp_daemon.url}/jobs/{job_id}")
    page.wait_for_selector("#state:text-is('failed')")
    page.wait_for_selector("#audit tr:nth-child(2)")
    rows = page.eval_on_selector_all(
        "#audit tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    shown = {(r[1], r[2], r[3], r[4]) for r in rows}
    assert ("deny", "GET", "blocked.invalid", "/x-path") in shown, rows
    assert ("deny", "CONNECT", "blocked.invalid", "") in shown, rows
    assert all(r[0] and "Invalid" not in r[0] for r in rows), rows  # the time was understood
    assert page.is_hidden("#audit-empty")


def test_a_cross_site_page_cannot_cancel(page: Any, tcp_daemon: TcpDaemon) -> None:
    job_id = _submit(tcp_daemon, script="echo started; sleep 600\n", name="web-csrf-job")
    page.goto(f"{tcp_daemon.url}/jobs/{job_id}")
    page.wait_for_selector("#log .line .text:text-is('started')")
    handler = type("H", (Attacker,), {"target": f"{tcp_daemon.url}/api/v1/jobs/{job_id}/cancel"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    evil = f"127.0.0.1:{server.server_address[1]}"
    page.context.allowed.add(evil)  # loopback too: the one other server the browser may see
    try:
        attack = page.context.new_page()
        with attack.expect_response(
            lambda r: (
                r.request.method == "POST"
                and r.url.endswith(f"/api/v1/jobs/{job_id}/cancel")
                and r.request.resource_type == "document"
            )
        ) as answer:
            attack.goto(f"http://{evil}/")
        assert answer.value.status == 403
        attack.wait_for_url(f"**/api/v1/jobs/{job_id}/cancel")  # the refusal page has loaded
        attack.close()
    finally:
        server.shutdown()
        server.server_close()
    assert _state(tcp_daemon, job_id) == "running"
    status, body = _api(tcp_daemon, "POST", f"/api/v1/jobs/{job_id}/cancel")
    assert status == 200, body


def test_pages_carry_the_security_headers(page: Any, tcp_daemon: TcpDaemon) -> None:
    from nixcell.jobs.web import SECURITY_HEADERS

    for path in ("/", "/jobs/1", "/static/app.js"):
        response = page.goto(tcp_daemon.url + path)
        headers = response.headers
        for key, value in SECURITY_HEADERS.items():
            assert headers.get(key.lower()) == value, (path, key)


def test_the_recorder_sees_what_would_leave(browser_context: Any) -> None:
    """The control for the recorder: a request to another host does reach it (and no further)."""
    page = browser_context.new_page()
    from playwright.sync_api import Error

    with pytest.raises(Error, match="ERR_"):  # the recorder's 403 (it connects nowhere)
        page.goto("http://web-test.invalid/probe")
    page.close()
    assert browser_context.recorder.lines == ["GET http://web-test.invalid/probe HTTP/1.1"]
    browser_context.recorder.lines.clear()
    browser_context.requests.clear()
