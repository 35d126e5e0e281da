"""Path normalisation and path patterns: the forms an attacker would use to dodge a path rule."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.net.urlpath import PathPattern, normalize_path, path_problem


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a/b?x=1", "/a/b"),
        ("/a/b#frag", "/a/b"),
        ("?x=1", "/"),
        ("/a/./b", "/a/b"),
        ("/a%2E/b", "/a%2E/b"),  # an escaped dot stays escaped (path_problem refuses it)
        ("/repos/x/../../../admin", "/admin"),
        ("/..", "/"),
        ("//admin", "/admin"),
        ("/a///b//", "/a/b/"),
        ("/a/b/", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/%7euser/%61bc", "/~user/abc"),
        ("/a%2fb", "/a%2Fb"),
        ("/a%2Fb/c", "/a%2Fb/c"),
        ("/x%3a%40", "/x%3A%40"),
        ("/%25", "/%25"),
        ("/a;x/b", "/a;x/b"),
        ("/%c0%af", "/%C0%AF"),
        ("/a*b", "/a*b"),
        ("*", "*"),
    ],
)
def test_normalize_path(target: str, expected: str) -> None:
    assert normalize_path(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/a\x00b",
        "/a\tb",
        "/a\nb",
        "/a b",
        "/caf\u00e9",
        "/a\x7f",
        "/%zz",
        "/%4",
        "/a%",
        "/%g0",
        "a/b",
        "http://host/a",
        "/a\\..\\admin",
        "/repos/..;/admin",
        "/repos/.;x/admin",
        "/repos/..%2Fadmin",
        "/repos/%2e%2e%2fadmin",
        "/repos/x%5C..",
        "/a/%2E/b",
        "/%2e%2e/admin",
        "/repos/%2e%2E/admin",
        "/ok/..%3B/denied",
        "/ok/..%3b/denied",
        "/ok/%252e%252e/denied",
        "/ok/%25252e./denied",
        "/ok/.%2e/denied",
        "/ok/a%2F..%2F..%2Fdenied",
    ],
)
def test_normalize_path_refuses(target: str) -> None:
    with pytest.raises(ValueError):
        normalize_path(target)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/zen", "/zen", True),
        ("/zen", "/zen/", False),
        ("/zen", "/zenith", False),
        ("/zen", "/a/zen", False),
        ("/repos/*", "/repos/x", True),
        ("/repos/*", "/repos/x/y", False),
        ("/repos/*/issues", "/repos/x/issues", True),
        ("/repos/*.json", "/repos/a.json", True),
        ("/repos/*.json", "/repos/a/b.json", False),
        ("/repos/**", "/repos", True),
        ("/repos/**", "/repos/", True),
        ("/repos/**", "/repos/x/y", True),
        ("/repos/**", "/reposx", False),
        ("/repos/**", "/other/repos/x", False),
        ("/a/**/b", "/a/b", True),
        ("/a/**/b", "/a/x/y/b", True),
        ("/a/**/b", "/a/x/c", False),
        ("/**", "/", True),
        ("/**", "/anything/at/all", True),
        ("/", "/", True),
        ("/", "/x", False),
        ("/a.b", "/aXb", False),  # a dot in a glob is literal
        ("/a/./b", "/a/b", True),
        ("/%7Euser", "/~user", True),  # patterns are normalised like paths
        ("/a%20b", "/a%20b", True),  # a strict pattern matches the decoded path
        ("/a@b", "/a%40b", True),
    ],
)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    parsed = PathPattern.parse(pattern)
    assert parsed.kind == "glob"
    assert parsed.matches(path) is expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/repos/.*", "/repos/x/y", True),
        ("/repos/.*", "/other/repos/x", False),  # anchored: never a substring match
        ("/api/v[0-9]+/users", "/api/v2/users", True),
        ("/api/v[0-9]+/users", "/api/v2/users/1", False),
        ("^/a$", "/a", True),
        ("^/a", "/ab", False),  # fullmatch even without a trailing $
        ("re:/a/b", "/a/b", True),
        ("re:/a/b", "/a/bc", False),
        ("re:/x\\*y", "/x*y", True),
        ("/(a|b)", "/b", True),
        ("/a?", "/", True),  # "?" makes it a regex: an optional "a"
    ],
)
def test_regex(pattern: str, path: str, expected: bool) -> None:
    parsed = PathPattern.parse(pattern)
    assert parsed.kind == "regex"
    assert parsed.matches(path) is expected


@pytest.mark.parametrize(
    "pattern",
    ["/(", "re:", "re:[", "zen", "", "/a%zz", "/a#b", "/a\x00", "/..;/x", "/a%2fb", "/a;x",
     "/a%00", "/a%2A", "/caf%C3%A9"],
)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError):
        PathPattern.parse(pattern)


def test_pattern_str_is_its_text() -> None:
    assert str(PathPattern.parse("/repos/**")) == "/repos/**"


@pytest.mark.parametrize(
    "attack",
    ["/repos/../admin", "/repos/%2e%2e/admin", "/repos/./../admin", "//repos/../admin"],
)
def test_dot_segments_cannot_escape_a_path_rule(attack: str) -> None:
    try:
        path = normalize_path(attack)
    except ValueError:
        return  # refused outright
    assert not PathPattern.parse("/repos/**").matches(path)


# --- the class: a spelling some server decodes to a path the rule did not check ---------------

# Each row: a path that some server (Tomcat, nginx, IIS, a C string, a double-decoding proxy…)
# reads as /admin/…; a path rule must refuse it (problem) or see /admin (deny matches).
DODGES = [
    "/admin;x/secret",
    "/admin;/secret",
    "/admin%2Fsecret",
    "/admin%2fsecret",
    "/admin%5Csecret",
    "/admin%5csecret",
    "/%2Fadmin",
    "/%2fadmin/x",
    "/admin%00/",
    "/admin%00.png",
    "/ok/..%3B/admin",
    "/ok/..%3b/admin",
    "/admin%252Fsecret",
    "/admin%252fsecret",
    "/ok%2F..%2Fadmin",
    "/ok/%2E%2E/admin",
    "/ok/.%2e/admin",
    "/ok/%252E%252E/admin",
    "/admin%3F/x",
    "/admin%23/x",
    "/admin%C0%AFsecret",
    "/admin%c0%afsecret",
    "/admin%E0%80%AFx",
    "/ok/..%C0%AF../admin",
    "/admin%09/x",
    "/admin%0A/x",
    "/admin%7F/x",
    "/ADMIN/secret",
    "/Admin/secret",
    "/%61dmin/secret",
    "//admin/secret",
    "/./admin/secret",
    "/ok/../admin/secret",
    "/admin%2e/secret",
    "/admin%EF%BC%8Fsecret",  # full-width solidus: IIS best-fit maps it to '/'
    "/admin./secret",  # Windows drops trailing dots and spaces
    "/admin%20/secret",
    "/admin.%20./secret",
]


def _judged(path_text: str, pattern: PathPattern) -> str:
    try:
        path = normalize_path(path_text)
    except ValueError:
        return "refused"
    if pattern.problem(path) is not None:
        return "refused"
    return "matched" if pattern.matches(path) else "passed"


@pytest.mark.parametrize("attack", DODGES)
def test_deny_rule_is_never_dodged(attack: str) -> None:
    deny = PathPattern.parse("/admin/**", deny=True)
    assert _judged(attack, deny) in ("refused", "matched")
    assert _judged(attack, PathPattern.parse("re:/admin(/.*)?", deny=True)) != "passed"


@pytest.mark.parametrize("attack", DODGES)
def test_allow_rule_never_lets_a_dodge_through(attack: str) -> None:
    assert _judged(attack, PathPattern.parse("/ok/**")) != "matched"


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("/a%2Fb", "'/'"),
        ("/a%5Cb", "'\\'"),
        ("/a%2Eb", "'.'"),
        ("/a%3Bb", "';'"),
        ("/a;b", "';' parameter"),
        ("/a%3Fb", "'?'"),
        ("/a%23b", "'#'"),
        ("/a%252F", "double encoding"),
        ("/a%00", "control byte"),
        ("/a%1F", "control byte"),
        ("/a%C0%AF", "overlong"),
        ("/a%FF", "invalid"),
        ("/caf%C3%A9", "non-ASCII"),
    ],
)
def test_path_problem_names_what_it_refuses(path: str, problem: str) -> None:
    found = path_problem(path)
    assert found is not None and problem in found


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        ("/a%2Fb", False),
        ("/a;b", False),
        ("/a%252F", False),
        ("/caf%C3%A9", False),
        ("/a%00", True),  # control bytes and broken UTF-8: never, opt-in or not
        ("/a%C0%AF", True),
        ("/a%ED%A0%80", True),  # an encoded surrogate
    ],
)
def test_allow_encoded_opts_in_to_escapes_only(path: str, refused: bool) -> None:
    assert (path_problem(path, allow_encoded=True) is not None) is refused


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/repos/*", "/repos/a%2Fb", True),  # an encoded slash is data inside one segment
        ("/repos/*/mr", "/repos/g%2Fp/mr", True),
        ("/repos/*", "/repos/a/b", False),
        ("/a%2fb", "/a%2Fb", True),  # patterns are normalised like paths
        ("/a%2Fb", "/a/b", False),
        ("re:/p/[^/]+", "/p/x%2Fy", True),
    ],
)
def test_allow_encoded_matches_the_canonical_form(pattern: str, path: str, expected: bool) -> None:
    parsed = PathPattern.parse(pattern, allow_encoded=True)
    assert parsed.problem(path) is None
    assert parsed.matches(path) is expected


def test_deny_patterns_ignore_ascii_case_allow_patterns_do_not() -> None:
    assert PathPattern.parse("/Admin/**", deny=True).matches("/admin/x")
    assert PathPattern.parse("/admin/**", deny=True).matches("/ADMIN")
    assert not PathPattern.parse("/admin/**").matches("/ADMIN")


# --- property: what is forwarded means the same to every server as what was checked ----------

PIECES = [
    "admin", "ADMIN", "ok", "x", "/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c",
    "%3b", "%3B", ";", "%00", "%25", "%252f", "%c0%af", "%3f", "%23", "%61", "%41", "%20",
    "%40", "%7e", "?", "#", "a", "%2e%2e",
]


def _dots(path: str) -> str:
    out: list[str] = []
    for seg in path.split("/")[1:]:
        if seg == "..":
            if out:
                out.pop()
        elif seg not in ("", "."):
            out.append(seg)
    return "/" + "/".join(out)


def _unquote(text: str) -> str:
    return unquote_to_bytes(text).decode("latin-1")


# How various servers read a forwarded path (each a known decoder behaviour).
SERVERS = {
    "literal": lambda p: _dots(p),
    "decode": lambda p: _dots(_unquote(p)),
    "decode-twice": lambda p: _dots(_unquote(_unquote(p))),
    "backslash": lambda p: _dots(_unquote(p).replace("\\", "/")),
    "params": lambda p: _dots("/".join(s.split(";")[0] for s in _unquote(p).split("/"))),
    "params-raw": lambda p: _dots(_unquote("/".join(s.split(";")[0] for s in p.split("/")))),
    "c-string": lambda p: _dots(_unquote(p).split("\x00")[0]),
    "query-after-decode": lambda p: _dots(_unquote(p).split("?")[0].split("#")[0]),
    "case-insensitive": lambda p: _dots(_unquote(p)).lower(),
    "utf8-overlong": lambda p: _dots(_unquote(p).replace("\xc0\xaf", "/")),
    "windows": lambda p: _dots("/".join(s.rstrip(". ") if s not in (".", "..") else s
                                        for s in _unquote(p).replace("\\", "/").split("/"))),
}


def _under(path: str, root: str) -> bool:
    return path.lower() == root or path.lower().startswith(root + "/")


@pytest.mark.parametrize("attack", DODGES)
def test_deny_that_opted_in_to_escapes_still_denies_every_dodge(attack: str) -> None:
    deny = PathPattern.parse("/admin/**", allow_encoded=True, deny=True)
    assert _judged(attack, deny) in ("refused", "matched")


def _check_deny_readings(target: str, forwarded: str) -> None:
    """A deny that opted in to escapes judges every reading some server makes of them."""
    deny = PathPattern.parse("/admin/**", allow_encoded=True, deny=True)
    if deny.problem(forwarded) is not None:
        return
    for name, server in SERVERS.items():
        seen = server(forwarded)
        if _under(seen, "/admin"):
            assert deny.matches(forwarded), (target, forwarded, name, seen)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map(lambda ps: "/" + "".join(ps)))
def test_no_server_reads_a_forwarded_path_differently(target: str) -> None:
    deny = PathPattern.parse("/admin/**", deny=True)
    allow = PathPattern.parse("/ok/**")
    try:
        forwarded = normalize_path(target)
    except ValueError:
        return
    assert normalize_path(forwarded) == forwarded  # idempotent
    _check_deny_readings(target, forwarded)
    if deny.problem(forwarded) is not None:
        assert allow.problem(forwarded) is not None  # refused by any strict path rule
        return
    for name, server in SERVERS.items():
        seen = server(forwarded)
        if _under(seen, "/admin"):
            assert deny.matches(forwarded), (target, forwarded, name, seen)
        if allow.matches(forwarded):
            assert seen.startswith("/ok") or name == "case-insensitive", (target, name, seen)
            assert _under(seen, "/ok"), (target, forwarded, name, seen)
