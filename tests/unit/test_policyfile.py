"""Policy TOML: nix-jail's format as-is, the extensions, and one-line `file:line:` errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nixcell.errors import PolicyError
from nixcell.net.policy import Request, load_policy
from nixcell.net.tomllines import TomlLines


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write ``github.toml`` in a temporary working directory; messages then name it plainly."""
    monkeypatch.chdir(tmp_path)

    def _write(text: str, name: str = "github.toml") -> str:
        Path(name).write_text(textwrap.dedent(text).lstrip("\n"))
        return name

    return _write


def get(host: str, path: str = "/", method: str = "GET", port: int = 443) -> Request:
    return Request(method, "https", host, port, path)


NIX_JAIL = r"""
# Allow access to GitHub with credential injection

[[rules]]
action = "allow"
credential = "github"
[rules.pattern]
host = "api\\.github\\.com"

[[rules]]
action = "allow"
credential = "github"
[rules.pattern]
host = "github\\.com"
"""


def test_nix_jail_file_as_is(write) -> None:
    pol = load_policy(write(NIX_JAIL))
    assert [(r.index, r.origin, r.credential) for r in pol.rules] == [
        (1, "github.toml:3", "github"),
        (2, "github.toml:9", "github"),
    ]
    assert pol.source == "github.toml"
    assert pol.decide(get("api.github.com")).credential == "github"
    assert not pol.decide(get("evil-api.github.com.attacker.net")).allowed
    assert not pol.decide(get("gist.github.com")).allowed


EXTENDED = """
[[rules]]
action = "deny"
methods = ["DELETE"]
[rules.pattern]
host = "api.github.com"

[[rules]]
action = "allow"
port = [443, 8443]
[rules.pattern]
host = "*.github.com"
path = ["/repos/**", "/zen"]
methods = ["get", "POST"]

[[rules]]
action = "allow"
[rules.pattern]
cidr = "127.0.0.0/8"
port = 8080

[resolve]
"Upstream.Test." = "127.0.0.1"
"both.test" = ["10.0.0.1", "::1"]

[[credentials]]
name = "github"
source = "env:GITHUB_TOKEN"
hosts = ["api.github.com"]

[[credentials]]
name = "other"
source = "env:OTHER"
hosts = ["other.test"]
"""


def test_extensions(write) -> None:
    pol = load_policy(write(EXTENDED))
    deny, allow, cidr = pol.rules
    assert deny.methods == frozenset({"DELETE"}) and deny.ports is None
    assert allow.ports == frozenset({443, 8443}) and allow.methods == frozenset({"GET", "POST"})
    assert [str(p) for p in allow.paths or ()] == ["/repos/**", "/zen"]
    assert str(cidr.cidr) == "127.0.0.0/8" and cidr.ports == frozenset({8080})
    assert not pol.decide(get("api.github.com", "/repos/x", "DELETE")).allowed
    assert pol.decide(get("api.github.com", "/repos/x", "POST", 8443)).allowed
    assert not pol.decide(get("api.github.com", "/admin")).allowed
    assert pol.decide(get("127.0.0.1", port=8080)).allowed
    assert pol.resolve == {"upstream.test": ("127.0.0.1",), "both.test": ("10.0.0.1", "::1")}
    assert pol.credentials == (
        {
            "name": "github",
            "source": "env:GITHUB_TOKEN",
            "hosts": ["api.github.com"],
            "_line": 25,
            "_file": "github.toml",
        },
        {
            "name": "other",
            "source": "env:OTHER",
            "hosts": ["other.test"],
            "_line": 30,
            "_file": "github.toml",
        },
    )


def test_empty_file_denies_everything(write) -> None:
    pol = load_policy(write("# nothing\n"))
    assert pol.rules == () and not pol.decide(get("a.com")).allowed


def rules(*bodies: str) -> str:
    """A file of ``[[rules]]`` blocks: a good first rule, then ``bodies`` (line 6 onwards)."""
    good = '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "ok.com"\n\n'
    return good + "\n".join(textwrap.dedent(b).strip() + "\n" for b in bodies)


R = '[[rules]]\naction = "allow"\n[rules.pattern]\n'  # the rule header is line 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            rules('[[rules]]\naction = "alow"\n[rules.pattern]\nhost = "a.com"'),
            """github.toml:7: unknown action 'alow' (expected "allow" or "deny")""",
        ),
        (
            rules('[[rules]]\n[rules.pattern]\nhost = "a.com"'),
            "github.toml:6: rule 2 has no action",
        ),
        (
            rules('[[rules]]\naction = "allow"'),
            "github.toml:6: rule 2 has no [rules.pattern] table",
        ),
        (rules('[[rules]]\naction = "allow"\npattern = "a.com"'), "github.toml:8: 'pattern' must"),
        (
            rules('[[rules]]\naction = "allow"\ncredentail = "x"\n[rules.pattern]\nhost = "a"'),
            "github.toml:8: unknown key 'credentail' (expected action, credential, methods, port, "
            "pattern)",
        ),
        (rules(R + 'hots = "a.com"'), "github.toml:9: unknown key 'hots'"),
        (rules(R + 'host = "a.com"\ncidr = "10.0.0.0/8"'), "github.toml:8: a pattern needs"),
        (rules(R + 'path = "/x"'), "github.toml:8: a pattern needs exactly one of 'host' and"),
        (rules(R + 'host = "api\\\\.github\\\\.(com"'), "github.toml:9: invalid host regex"),
        (rules(R + 'host = "exa mple.com"'), "github.toml:9: invalid host pattern 'exa mple.com'"),
        (rules(R + "host = 5"), "github.toml:9: host must be a string"),
        (rules(R + 'cidr = "10.0.0.0/33"'), "github.toml:9: invalid cidr '10.0.0.0/33'"),
        (rules(R + 'host = "a.com"\npath = "/(x"'), "github.toml:10: invalid path regex '/(x'"),
        (rules(R + 'host = "a.com"\npath = "zen"'), "github.toml:10: path pattern 'zen' must"),
        (rules(R + 'host = "a.com"\npath = []'), "github.toml:10: path must be a string or"),
        (
            rules(R + 'host = "a.com"\npath = "/a%2Fb"'),
            "github.toml:10: path pattern '/a%2Fb' holds an encoded '/' (%2F) (set allow_encoded",
        ),
        (rules(R + 'host = "a.com"\npath = "/a;b"'), "github.toml:10: path pattern '/a;b' holds"),
        (
            rules(R + 'host = "a.com"\nallow_encoded = 1\npath = "/a"'),
            "github.toml:10: allow_encoded must be true or false",
        ),
        (
            rules(R + 'host = "a.com"\nallow_encoded = true'),
            "github.toml:10: allow_encoded needs a 'path' in the same pattern",
        ),
        (rules(R + 'host = "a.com"\nmethods = ["G T"]'), "github.toml:10: invalid method 'G T'"),
        (rules(R + 'host = "a.com"\nmethods = []'), "github.toml:10: methods must be a non-empty"),
        (
            rules(R + 'host = "a.com"\nport = 0'),
            "github.toml:10: invalid port 0 (expected 1-65535)",
        ),
        (rules(R + 'host = "a.com"\nport = [443, 70000]'), "github.toml:10: invalid port 70000"),
        (rules(R + 'host = "a.com"\nport = "443"'), "github.toml:10: invalid port '443'"),
        (rules(R + 'host = "a.com"\nport = true'), "github.toml:10: invalid port True"),
        (
            rules('[[rules]]\naction = "allow"\nport = 1\n[rules.pattern]\nhost = "a"\nport = 2'),
            "github.toml:11: 'port' given both in the rule and in its pattern",
        ),
        (
            rules('[[rules]]\naction = "deny"\ncredential = "x"\n[rules.pattern]\nhost = "a"'),
            "github.toml:8: a deny rule cannot carry a credential",
        ),
        (
            rules('[[rules]]\naction = "allow"\npattern = { host = "a.com", bogus = 1 }'),
            "github.toml:8: unknown key 'bogus'",
        ),
        (
            'rule = "x"\n',
            "github.toml:1: unknown key 'rule' (expected rules, resolve, credentials)",
        ),
        ("rules = 1\n", "github.toml:1: 'rules' must be an array of tables ([[rules]])"),
        ("[resolve]\nx = 1\n", "github.toml:2: x: expected an IP address or a list of them"),
        ('[resolve]\nx = "1.2.3"\n', "github.toml:2: x: '1.2.3' is not an IP address"),
        ('[resolve]\n"a b" = "1.2.3.4"\n', "github.toml:2: invalid host 'a b'"),
        ('resolve = "x"\n', "github.toml:1: 'resolve' must be a table"),
        ("credentials = 1\n", "github.toml:1: 'credentials' must be an array of tables"),
        (rules("[[rules]]\naction = \n"), "github.toml:7: invalid value (column 9)"),
        ("[[rules]]\nmethods = [\n", "github.toml:2: "),
        ("[[rules]]\n[[rules]\n", "github.toml:2: "),
    ],
)
def test_errors_name_file_and_line(write, text: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(write(text))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_error_in_a_later_rule_points_at_that_rule(write) -> None:
    text = rules(R + 'host = "b.com"', R + 'host = "c.com"', '[[rules]]\naction = "nope"')
    with pytest.raises(PolicyError, match=r"^github.toml:17: unknown action 'nope'"):
        load_policy(write(text))


def test_multiline_values_do_not_confuse_line_numbers(write) -> None:
    text = rules(
        R + 'host = "a.com"\npath = [\n  "/a",\n  "/b",\n]',
        '[[rules]]\naction = "allow"\ncredential = """\n[[rules]]\n"""\n'
        '[rules.pattern]\nhost = "b"',
        '[[rules]]\naction = "bad"',
    )
    with pytest.raises(PolicyError) as err:
        load_policy(write(text))
    assert str(err.value).startswith("github.toml:")
    line = int(str(err.value).split(":")[1])
    assert text.splitlines()[line - 1] == 'action = "bad"'


def test_unreadable_files(write, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"^policy file github.toml: No such file or directory$"):
        load_policy("github.toml")
    with pytest.raises(PolicyError, match=r"^policy file .*: Is a directory$"):
        load_policy(tmp_path)
    Path("latin.toml").write_bytes(b'[[rules]]\naction = "allow"\n# caf\xe9\n')
    with pytest.raises(PolicyError, match=r"^latin.toml:3: not valid UTF-8$"):
        load_policy("latin.toml")


def test_toml_lines_locator() -> None:
    lines = TomlLines(
        textwrap.dedent(
            """\
            top = 1
            [[rules]]
            action = "allow"
            [rules.pattern]
            host = "a"
            [[rules]]
            'action' = "deny"
            [rules.pattern]
            "host" = "b" # comment
            a.b.c = 1
            [resolve]
            "x.y" = "1.2.3.4"
            """
        )
    )
    assert lines.line("top") == 1
    assert lines.line("rules") == 2
    assert lines.line("rules", 0) == 2
    assert lines.line("rules", 0, "pattern", "host") == 5
    assert lines.line("rules", 1) == 6
    assert lines.line("rules", 1, "action") == 7
    assert lines.line("rules", 1, "pattern") == 8
    assert lines.line("rules", 1, "pattern", "host") == 9
    assert lines.line("rules", 1, "pattern", "a", "b") == 10
    assert lines.line("rules", 1, "pattern", "missing") == 8
    assert lines.line("resolve", "x.y") == 12
    assert lines.line("nothing") == 1


def test_allow_encoded_is_an_explicit_opt_in(write) -> None:
    pol = load_policy(
        write(
            """
            [[rules]]
            action = "deny"
            [rules.pattern]
            host = "gitlab.test"
            path = "/Admin/**"
            allow_encoded = true

            [[rules]]
            action = "allow"
            [rules.pattern]
            host = "gitlab.test"
            path = "/api/v4/projects/*/merge_requests"
            allow_encoded = true

            [[rules]]
            action = "allow"
            [rules.pattern]
            host = "gitlab.test"
            path = "/api/**"
            """
        )
    )
    decide = pol.decide
    assert decide(get("gitlab.test", "/api/v4/projects/g%2Fp/merge_requests")).allowed
    assert decide(get("gitlab.test", "/api/v4/x")).allowed
    # the last rule is strict: it cannot judge an encoded slash, so that path is refused
    encoded_elsewhere = decide(get("gitlab.test", "/api/v4/groups/g%2Fp"))
    assert not encoded_elsewhere.allowed and "rule 3" in encoded_elsewhere.explain()
    # the deny opted in too: it denies every reading of the escapes, in any case
    for path in ("/admin/x", "/api/%2E%2E/ADMIN", "/x%2F..%2Fadmin", "/admin%2Fx", "/admin%5Cx",
                 "/admin%3Bx/y", "/admin%252Fx", "/api/v4/projects/x%2F..%2F..%2F..%2F..%2Fadmin"):
        assert not decide(get("gitlab.test", path)).allowed, path
    assert not decide(get("gitlab.test", "/api/v4/projects/g%00/merge_requests")).allowed
    # a strict deny first: encoded paths are refused before any allow is consulted
    strict = load_policy(write(
        '[[rules]]\naction = "deny"\n[rules.pattern]\nhost = "a.test"\npath = "/admin/**"\n'
        '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "a.test"\npath = "/**"\n'
        "allow_encoded = true\n", "strict.toml"))
    refused = strict.decide(get("a.test", "/x%2Fy"))
    assert not refused.allowed and "rule 1" in refused.explain() and "'/'" in refused.explain()
