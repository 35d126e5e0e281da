"""The web page's own files: nothing in them may run inline code, load from elsewhere, or put
text into the DOM as markup (the CSP would refuse the first two; these catch it before a
browser does, and name the line)."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from nixcell.jobs import web

WEB_DIR = Path(web.__file__).with_name("web")
REPO = Path(__file__).resolve().parents[2]


def test_every_file_is_in_the_table_and_the_table_is_on_disk() -> None:
    on_disk = {p.name for p in WEB_DIR.iterdir() if p.is_file()}
    assert on_disk == set(web.STATIC)


def test_package_data_ships_every_web_file() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["nixcell"]
    for name in web.STATIC:
        rel = f"jobs/web/{name}"
        assert any(fnmatch.fnmatch(rel, g) for g in globs), f"{rel} not in package-data"


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        where = f"line {self.getpos()[0]} <{tag}>"
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"{where}: inline handler {name}")
            if name == "style":
                self.problems.append(f"{where}: inline style")
            if value and re.search(r"(?i)^\s*(javascript:|data:|https?:|//)", value):
                self.problems.append(f"{where}: {name}={value!r} leaves the origin or runs code")
        if tag == "script":
            if not a.get("src"):
                self.problems.append(f"{where}: inline script")
            self._in_script = True
        if tag == "style":
            self.problems.append(f"{where}: inline <style>")
        if tag in ("iframe", "object", "embed", "base"):
            self.problems.append(f"{where}: <{tag}>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append(f"line {self.getpos()[0]}: script body")


@pytest.mark.parametrize("name", ["index.html"])
def test_pages_have_no_inline_code_and_no_foreign_urls(name: str) -> None:
    parser = _Collect()
    parser.feed((WEB_DIR / name).read_text())
    assert parser.problems == []


# Sinks that parse a string as markup or code; job text must never meet one.
SINKS = [
    r"\.innerHTML\b", r"\.outerHTML\b", r"insertAdjacentHTML", r"document\.write",
    r"\beval\s*\(", r"new\s+Function\b", r"setTimeout\s*\(\s*['\"`]", r"setInterval\s*\(\s*['\"`]",
    r"createContextualFragment", r"DOMParser", r"srcdoc", r"\.src\s*=", r"import\s*\(",
]  # fmt: skip


SCRIPTS = sorted(n for n in web.STATIC if n.endswith(".js"))


@pytest.mark.parametrize("pattern", SINKS)
def test_scripts_use_no_markup_or_code_sink(pattern: str) -> None:
    hits = [
        f"{name}:{n}: {line.strip()}"
        for name in SCRIPTS
        for n, line in enumerate((WEB_DIR / name).read_text().splitlines(), 1)
        if re.search(pattern, line) and not line.lstrip().startswith("//")
    ]
    assert hits == []


def test_the_page_loads_every_script_in_order() -> None:
    html = (WEB_DIR / "index.html").read_text()
    loaded = re.findall(r'<script src="/static/([^"]+)" defer></script>', html)
    assert loaded == [n for n in web.STATIC if n.endswith(".js")]
    assert loaded[-1] == "app.js"  # the one that starts the page, after what it calls


@pytest.mark.parametrize("name", sorted(web.STATIC))
def test_no_file_names_another_origin(name: str) -> None:
    text = (WEB_DIR / name).read_text()
    assert not re.search(r"(?i)\b(https?|wss?|ftp):|url\(\s*['\"]?//|@import", text), name


def test_csp_is_strict() -> None:
    directives = dict(d.split(" ", 1) for d in web.CSP.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert "unsafe" not in web.CSP and "*" not in web.CSP and "data:" not in web.CSP
    assert web.SECURITY_HEADERS["X-Content-Type-Options"] == "nosniff"
    assert web.SECURITY_HEADERS["Referrer-Policy"] == "no-referrer"
