"""Path normalisation and path patterns: the forms an attacker would use to dodge a path rule."""

from __future__ import annotations

import pytest

from nixcell.net.urlpath import PathPattern, normalize_path


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/a/b?x=1", "/a/b"),
        ("/a/b#frag", "/a/b"),
        ("?x=1", "/"),
        ("/a/./b", "/a/b"),
        ("/a/%2E/b", "/a/b"),
        ("/%2e%2e/admin", "/admin"),
        ("/repos/%2e%2E/admin", "/admin"),
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
        ("/a%2fb", "/a%2Fb", True),  # patterns are normalised like paths
        ("/a/./b", "/a/b", True),
        ("/%7Euser", "/~user", True),
        ("/repos/**", "/repos/a%2Fb", True),
        ("/repos/*", "/repos/a%2Fb", True),  # an encoded slash is not a separator
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
    ["/(", "re:", "re:[", "zen", "", "/a%zz", "/a#b", "/a\x00", "/..;/x"],
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
    assert not PathPattern.parse("/repos/**").matches(normalize_path(attack))
