"""What a client may name for a clone: hostile URLs, refs and start paths, each one line, and
the ones git would have acted on refused before any git runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.jobs.contract import JobError
from nixcell.jobs.gitclone import Cloner
from nixcell.jobs.gitrefs import check_ref, check_subpath, check_url

ALL = ("https", "http", "file")

BAD_URLS = [
    ("ext::sh -c touch% /tmp/nixcell-pwned", "spaces"),
    ("ext::sh%20-c%20touch", "remote-helper"),
    ("ext::sh", "remote-helper"),
    ("fd::0", "remote-helper"),
    ("transport::https://x/y", "remote-helper"),
    ("-uhttps://x/y", "option"),
    ("--upload-pack=touch /tmp/x", "spaces"),
    ("--upload-pack=touch", "option"),
    ("git@github.com:org/repo.git", "scheme"),
    ("github.com:org/repo", "scheme"),
    ("ssh://git@github.com/org/repo", "not allowed"),
    ("git://github.com/org/repo", "not allowed"),
    ("ftp://host/repo", "not allowed"),
    ("https://user:hunter2@github.com/x.git", "password"),
    ("https://:tok@github.com/x.git", "password"),
    ("https://a@b@github.com/x.git", "user name"),
    ("https://github.com/x.git?upload-pack=evil", "query"),
    ("https://github.com/x.git#frag", "query"),
    ("https://github.com/x y.git", "spaces"),
    ("https://github.com/x\n.git", "control"),
    ("https://github.com/x\0.git", "control"),
    ("https://github.com\\@evil.com/x", "backslash"),
    ("https:///x.git", "plain host"),
    ("https://%65vil.com/x", "plain host"),
    ("https://github.com:0/x", "port"),
    ("https://github.com:99999/x", "port"),
    ("https://github.com:08/x", "port"),
    ("https://github.com:x/x", "port"),
    ("https://[::1/x", "IPv6"),
    ("https://a..b/x", "invalid host"),
    ("https://\uff47ithub.com/x", "punycode"),
    ("https://github\u3002com/x", "punycode"),
    ("file://otherhost/srv/repo", "name no host"),
    ("file:///srv/../etc/repo", "'..'"),
    ("file://relative/path", "name no host"),
    ("file:///srv/%2e%2e/x", "unescaped"),
    ("", "must be a URL"),
    ("h" * 3000, "longer than"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
def test_hostile_urls_are_refused_in_one_line(url, why):
    with pytest.raises(JobError) as info:
        check_url(url, ALL)
    assert why in str(info.value)
    assert "\n" not in str(info.value)
    assert "hunter2" not in str(info.value) and "tok@" not in str(info.value)


def test_schemes_come_from_the_server_config():
    assert check_url("https://github.com/x.git", ALL).host == "github.com"
    assert check_url("https://user@GitHub.COM.:8443/x.git", ALL).host == "github.com"
    assert check_url("file:///srv/repo.git", ALL).scheme == "file"
    with pytest.raises(JobError, match="scheme file is not allowed by this server"):
        check_url("file:///srv/repo.git", ("https",))
    with pytest.raises(JobError, match=r"allowed: none"):
        check_url("https://github.com/x", ("ssh",))  # unknown schemes never become allowed


BAD_REFS = [
    "-x", "--upload-pack=evil", "a..b", "+a:b", "a:b", "main@{1}", "@{-1}", "a b", "a\0b",
    "a\nb", "a\tb", "HEAD", "refs/heads/main", "/main", "main/", "main.lock", ".hidden",
    "a/.b", "a//b", "ma~1", "ma^", "ma*", "ma?", "[x]", "a\\b", "é", "x" * 300, "", "main.",
]  # fmt: skip


@pytest.mark.parametrize("ref", BAD_REFS)
def test_hostile_refs_are_refused(ref):
    with pytest.raises(JobError) as info:
        check_ref(ref)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("ref", ["main", "v1.2.3", "feature/x-y_z", "2024", "a" * 40, None])
def test_plain_refs_pass(ref):
    assert check_ref(ref) == ref


@given(st.text(min_size=1, max_size=40))
def test_any_ref_that_passes_cannot_be_an_option_or_refspec(ref):
    try:
        checked = check_ref(ref)
    except JobError:
        return
    assert checked is not None
    assert not checked.startswith("-")
    assert not any(c in checked for c in ":+^~@*?[\\ \0\n")
    assert ".." not in checked


BAD_PATHS = ["/etc", "../x", "a/../b", "a/./b", ".", "a//b", "a\0b", "a\nb", "a\\b", "x" * 2000]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_hostile_start_paths_are_refused(path):
    with pytest.raises(JobError) as info:
        check_subpath(path)
    assert "\n" not in str(info.value)


def test_start_path_parts():
    assert check_subpath("sub/dir/") == ("sub", "dir")
    assert check_subpath("with space") == ("with space",)
    assert check_subpath(None) == ()


def test_refused_before_git_runs(tmp_path: Path):
    """``ext::`` would run a shell: refused before any git starts (no marker file appears)."""
    marker = tmp_path / "pwned"
    cloner = Cloner(SimpleNamespace(state_dir=str(tmp_path / "state"), repo_schemes=ALL))
    for url in (f"ext::sh -c touch% {marker}", f"ext::sh%20-c%20touch%20{marker}"):
        with pytest.raises(JobError):
            cloner.clone(url, None, None)
    with pytest.raises(JobError):
        cloner.clone("file:///nonexistent", f"--upload-pack=touch {marker}", None)
    assert not marker.exists()
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").rglob("*.git"))


@given(st.text(max_size=200))
def test_what_git_or_its_server_says_becomes_one_printable_line(text):
    from nixcell.jobs.gitclone import _one_line, _reason

    for out in (_one_line(text), _reason(text), _reason("fatal: " + text)):
        assert "\n" not in out and "\r" not in out
        assert all(c.isprintable() for c in out), repr(out)


def test_terminal_escapes_from_a_server_are_neutralised():
    from nixcell.jobs.gitclone import _reason

    said = "remote: \x1b[2J\x1b]0;pwned\x07 hello\u202e\nfatal: bad \x1b[31mthing"
    assert _reason(said) == "bad \\x1b[31mthing"


URL_PART = st.sampled_from(
    ["github.com", "evil.com", "@", ":", "443", "[", "]", "::1", "%40", "#", "?", "\\", "/", ".",
     "user", "x", "127.0.0.1", "0x7f.1", "GITHUB.COM.", "\u3002", "\uff47ithub.com"]
)  # fmt: skip


@given(st.sampled_from(["https://", "http://"]), st.lists(URL_PART, max_size=6).map("".join))
def test_the_host_a_credential_is_matched_against_is_the_one_urllib_sees(scheme, rest):
    """No parser differential: a URL that passes names, for urllib (and so for curl, which
    agrees on every spelling that passes: no '\\', '%', '#', '?', passwords), the same host."""
    from urllib.parse import urlsplit

    from nixcell.net.hosts import normalize_host

    url = scheme + rest + "/repo.git"
    try:
        checked = check_url(url, ALL)
    except JobError as exc:
        assert "\n" not in str(exc)
        return
    hostname = urlsplit(url).hostname
    assert hostname is not None
    assert normalize_host(hostname) == checked.host
