"""Policy decisions: rule matching, CONNECT-level decisions, flags, merging and `policy check`."""

from __future__ import annotations

import ipaddress
import re

import pytest

from nixcell.errors import PolicyError
from nixcell.net.hosts import HostPattern, normalize_host
from nixcell.net.policy import (
    Policy,
    Request,
    Rule,
    merge,
    numbered,
    parse_host_port,
    parse_policy,
    policy_from_flags,
)
from nixcell.net.policycheck import explain_check
from nixcell.net.urlpath import PathPattern


def rule(
    action: str,
    host: str | None = None,
    *,
    cidr: str | None = None,
    ports: set[int] | None = None,
    methods: set[str] | None = None,
    paths: list[str] | None = None,
    credential: str | None = None,
    origin: str = "test",
) -> Rule:
    return Rule(
        action,
        HostPattern.parse(host, nix_jail=True) if host is not None else None,
        ipaddress.ip_network(cidr) if cidr is not None else None,
        frozenset(ports) if ports is not None else None,
        frozenset(methods) if methods is not None else None,
        tuple(PathPattern.parse(p, deny=action == "deny") for p in paths)
        if paths is not None
        else None,
        credential,
        origin,
    )


def policy(*rules: Rule) -> Policy:
    return Policy(numbered(list(rules)), source="test.toml")


def req(host: str, path: str = "/", method: str = "GET", port: int = 443) -> Request:
    return Request(method, "https" if port != 80 else "http", normalize_host(host), port, path)


# --- host matching -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("api.github.com", True),
        ("API.GitHub.COM.", True),  # case and one trailing dot are normalised away
        ("evil-api.github.com.attacker.net", False),  # nix-jail's unanchored-regex bypass
        ("api.github.com.attacker.net", False),
        ("xapi.github.com", False),
        ("apiXgithubXcom", False),
    ],
)
def test_regex_host_is_anchored(host: str, allowed: bool) -> None:
    pol = policy(rule("allow", r"api\.github\.com"))
    assert pol.decide(req(host)).allowed is allowed


@pytest.mark.parametrize(
    ("host", "allowed"),
    [("a.example.com", True), ("a.b.example.com", True), ("example.com", False)],
)
def test_suffix_pattern_excludes_the_apex(host: str, allowed: bool) -> None:
    assert policy(rule("allow", "*.example.com")).decide(req(host)).allowed is allowed


def test_first_match_wins_and_unmatched_is_denied() -> None:
    pol = policy(rule("deny", "evil.com", origin="--deny-host evil.com"), rule("allow", "*"))
    denied = pol.decide(req("evil.com"))
    assert not denied.allowed and denied.rule is pol.rules[0]
    assert denied.explain() == "denied by rule 1 (--deny-host evil.com)"
    assert pol.decide(req("good.com")).allowed
    flipped = policy(rule("allow", "*"), rule("deny", "evil.com"))
    assert flipped.decide(req("evil.com")).allowed
    assert not policy().decide(req("any.com")).allowed


def test_explain_and_hint() -> None:
    pol = policy(rule("deny", "evil.com"), rule("allow", "ok.com", origin="github.toml:9"))
    nothing = req("api.x.com", "/v1")
    decision = pol.decide(nothing)
    assert decision.explain() == "denied: GET https://api.x.com/v1 (no rule)"
    assert decision.hint(nothing) == "--allow-host api.x.com"
    odd_port = req("api.x.com", port=8443)
    assert pol.decide(odd_port).hint(odd_port) == "--allow-host api.x.com:8443"
    v6 = Request("GET", "http", "::1", 8080, "/")
    assert pol.decide(v6).hint(v6) == "--allow-host [::1]:8080"
    assert pol.decide(req("ok.com")).explain() == "allowed by rule 2 (github.toml:9)"
    assert pol.decide(req("ok.com")).hint(req("ok.com")) is None
    # no flag can override an explicit deny, so no hint is offered
    assert pol.decide(req("evil.com")).hint(req("evil.com")) is None


def test_request_url() -> None:
    assert str(req("a.com", "/x")) == "GET https://a.com/x"
    assert Request("GET", "http", "a.com", 8080, "/").url() == "http://a.com:8080/"
    assert Request("GET", "https", "::1", 443, "/").url() == "https://[::1]/"
    assert Request("GET", "https", "::1", 8443, "/").url() == "https://[::1]:8443/"


def test_ports_default_to_web_ports() -> None:
    pol = policy(rule("allow", "a.com"), rule("allow", "b.com", ports={8443}))
    assert pol.decide(req("a.com", port=443)).allowed
    assert pol.decide(req("a.com", port=80)).allowed
    assert not pol.decide(req("a.com", port=22)).allowed
    assert pol.decide(req("b.com", port=8443)).allowed
    assert not pol.decide(req("b.com", port=443)).allowed


def test_methods_and_paths() -> None:
    pol = policy(
        rule("allow", "api.com", methods={"GET"}, paths=["/repos/**", "/zen"], credential="gh")
    )
    ok = pol.decide(req("api.com", "/repos/a/b"))
    assert ok.allowed and ok.credential == "gh"
    assert pol.decide(req("api.com", "/repos/a", method="get")).allowed  # methods ignore case
    assert not pol.decide(req("api.com", "/repos/a", method="POST")).allowed
    assert not pol.decide(req("api.com", "/admin")).allowed
    assert pol.decide(req("api.com", "/zen")).allowed


def test_lower_case_method_cannot_dodge_a_method_deny() -> None:
    pol = policy(rule("deny", "api.com", methods={"DELETE"}), rule("allow", "api.com"))
    assert not pol.decide(req("api.com", method="delete")).allowed


def test_credential_only_on_allow() -> None:
    pol = policy(rule("allow", "a.com", credential="x"))
    assert pol.decide(req("a.com")).credential == "x"
    assert pol.decide(req("b.com")).credential is None


def test_cidr_rules_match_ip_literals_only() -> None:
    pol = policy(rule("allow", cidr="10.0.0.0/8"), rule("allow", cidr="fd00::/8"))
    assert pol.decide(req("10.1.2.3")).allowed
    assert pol.decide(req("fd00::5")).allowed
    assert not pol.decide(req("11.0.0.1")).allowed
    assert not pol.decide(req("ten.example")).allowed
    assert pol.decide(req("10.1.2.3", port=5432)).allowed  # a cidr rule without port: any port
    assert (
        not policy(rule("allow", cidr="10.0.0.0/8", ports={443}))
        .decide(req("10.0.0.1", port=80))
        .allowed
    )
    with pytest.raises(ValueError):
        Rule("allow", None, None, None, None, None, None, "x")


# --- CONNECT-level decisions -------------------------------------------------------------------


def test_connect_deny_all_first() -> None:
    pol = policy(rule("deny", "*"), rule("allow", "api.com"))
    decision = pol.decide_connect("api.com", 443)
    assert not decision.allowed and decision.rule is pol.rules[0]


def test_connect_path_restricted_allow_opens_the_tunnel() -> None:
    pol = policy(rule("allow", "api.com", paths=["/repos/**"]))
    decision = pol.decide_connect("api.com", 443)
    assert decision.allowed and decision.rule is pol.rules[0] and decision.credential is None
    assert not pol.decide(req("api.com", "/admin")).allowed  # each request is still checked


def test_connect_port_not_allowed() -> None:
    pol = policy(rule("allow", "api.com"))
    decision = pol.decide_connect("api.com", 22)
    assert not decision.allowed and decision.rule is None
    assert decision.explain() == "denied: CONNECT api.com:22 (no rule)"


def test_connect_passes_over_conditional_denies() -> None:
    pol = policy(rule("deny", "api.com", methods={"DELETE"}), rule("allow", "api.com"))
    assert pol.decide_connect("api.com", 443).rule is pol.rules[1]
    pol = policy(rule("deny", "api.com", paths=["/admin"]), rule("deny", "api.com"))
    denied = pol.decide_connect("api.com", 443)
    assert not denied.allowed and denied.rule is pol.rules[1]
    assert not policy(rule("allow", "other.com")).decide_connect("api.com", 443).allowed


def test_connect_allow_before_deny() -> None:
    pol = policy(rule("allow", "api.com", paths=["/x"]), rule("deny", "*"))
    assert pol.decide_connect("api.com", 443).allowed
    assert not pol.decide_connect("other.com", 443).allowed
    assert not pol.decide_connect("::1", 443).allowed


# --- flags and merging -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value", "ports"),
    [
        ("api.github.com", "exact", "api.github.com", None),
        ("api.github.com:8443", "exact", "api.github.com", {8443}),
        ("*.example.com", "suffix", "example.com", None),
        ("*.example.com:444", "suffix", "example.com", {444}),
        ("[::1]:8080", "ip", "::1", {8080}),
        ("[::1]", "ip", "::1", None),
        ("::1", "ip", "::1", None),
        ("10.0.0.1:81", "ip", "10.0.0.1", {81}),
        (r"re:api\.github\.com", "regex", r"api\.github\.com", None),
        ("re:a|evil.test", "regex", "a|evil.test", None),
        ("0x7f000001:8080", "ip", "127.0.0.1", {8080}),
    ],
)
def test_parse_host_port(text: str, kind: str, value: str, ports: set[int] | None) -> None:
    pattern, parsed_ports = parse_host_port(text)
    assert (pattern.kind, pattern.value) == (kind, value)
    assert parsed_ports == (frozenset(ports) if ports else None)


@pytest.mark.parametrize(
    "text", ["a.com:0", "a.com:65536", "a.com:http", "a.com:", "[::1", "[::1]x", "a b", "", "a*b"]
)
def test_parse_host_port_errors(text: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_host_port(text)
    assert "\n" not in str(err.value)


def test_policy_from_flags() -> None:
    pol = policy_from_flags(["api.github.com", "x.com:8443"], ["evil.com"], ["127.0.0.0/8:8080"])
    assert [(r.index, r.action, r.origin) for r in pol.rules] == [
        (1, "deny", "--deny-host evil.com"),
        (2, "allow", "--allow-host api.github.com"),
        (3, "allow", "--allow-host x.com:8443"),
        (4, "allow", "--allow-cidr 127.0.0.0/8:8080"),
    ]
    assert pol.rules[3].ports == frozenset({8080}) and pol.source is None
    assert pol.decide(req("x.com", port=8443)).allowed
    v6 = policy_from_flags([], [], ["[fd00::/8]:443", "fd00::/8", "10.0.0.5/8"]).rules
    assert v6[0].ports == frozenset({443}) and v6[1].ports is None
    assert str(v6[2].cidr) == "10.0.0.0/8"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((["a.com:0"], [], []), "--allow-host a.com:0: invalid port '0' (expected 1-65535)"),
        (([], ["bad host"], []), "--deny-host bad host: invalid host pattern 'bad host'"),
        (([], [], ["10.0.0.0/33"]), "--allow-cidr 10.0.0.0/33: invalid cidr '10.0.0.0/33'"),
        (([], [], ["nope"]), "--allow-cidr nope: invalid cidr 'nope'"),
    ],
)
def test_policy_from_flags_errors(args: tuple, message: str) -> None:
    with pytest.raises(PolicyError, match="^" + re.escape(message)):
        policy_from_flags(*args)


FILE = """
[[rules]]
action = "deny"
[rules.pattern]
host = "blocked.com"

[[rules]]
action = "allow"
credential = "gh"
[rules.pattern]
host = "api.github.com"

[resolve]
"upstream.test" = "127.0.0.1"

[[credentials]]
name = "gh"
source = "env:GH_TOKEN"
hosts = ["api.github.com"]
"""


def test_merge_order() -> None:
    flags = policy_from_flags(["blocked.com", "extra.com"], ["api.github.com"], [])
    pol = merge(flags, parse_policy(FILE, "p.toml"))
    assert [(r.index, r.action, r.origin) for r in pol.rules] == [
        (1, "deny", "--deny-host api.github.com"),
        (2, "deny", "p.toml:2"),
        (3, "allow", "p.toml:7"),
        (4, "allow", "--allow-host blocked.com"),
        (5, "allow", "--allow-host extra.com"),
    ]
    assert not pol.decide(req("api.github.com")).allowed  # a deny flag beats the file's allow
    assert not pol.decide(req("blocked.com")).allowed  # an allow flag cannot beat a file's deny
    assert pol.decide(req("extra.com")).allowed
    assert pol.resolve == {"upstream.test": ("127.0.0.1",)}
    assert [c["name"] for c in pol.credentials] == ["gh"]
    assert pol.source == "p.toml"


def test_merge_resolve_conflict() -> None:
    other = parse_policy('[resolve]\n"upstream.test" = "10.0.0.1"\n', "q.toml")
    with pytest.raises(PolicyError, match=re.escape("conflicting [resolve] entries for 'upstream")):
        merge(parse_policy(FILE, "p.toml"), other)
    assert merge(parse_policy(FILE, "p.toml"), parse_policy(FILE, "p.toml")).source == (
        "p.toml, p.toml"
    )


# --- `nixcell policy check` --------------------------------------------------------------------


def test_explain_check_allowed() -> None:
    pol = merge(parse_policy(FILE, "p.toml"))
    ok, text = explain_check(pol, "https://API.GitHub.com./repos/../zen?x=1", "get")
    assert ok
    assert text.splitlines() == [
        "request: GET https://api.github.com/zen",
        "tunnel: CONNECT api.github.com:443: allowed by rule 2 (p.toml:7)",
        "rule: matched rule 2 (p.toml:7): allow",
        "address: checked when api.github.com resolves (local and private ones refused)",
        "result: allowed",
    ]


def test_explain_check_denied_with_hint() -> None:
    ok, text = explain_check(parse_policy(FILE, "p.toml"), "http://api.x.com:8080/v1", "POST")
    assert not ok
    assert "tunnel:" not in text  # plain http: no CONNECT
    assert "rule: no rule matched: denied by default" in text
    assert text.endswith("result: denied\nhint: --allow-host api.x.com:8080")


def test_explain_check_schemes_and_addresses() -> None:
    pol = parse_policy(FILE, "p.toml")
    assert "request: GET http://upstream.test/" in explain_check(pol, "ws://upstream.test")[1]
    assert "tunnel: CONNECT upstream.test:443" in explain_check(pol, "wss://upstream.test/")[1]
    ok, text = explain_check(policy(rule("allow", "*")), "http://169.254.169.254/latest/")
    assert not ok and "address: 169.254.169.254 is link-local (the cloud metadata" in text
    loop = merge(pol, policy_from_flags(["upstream.test"], [], ["127.0.0.0/8"]))
    ok, text = explain_check(loop, "https://upstream.test/")
    assert ok and "address: 127.0.0.1 allowed by rule" in text
    ok, text = explain_check(
        merge(pol, policy_from_flags(["upstream.test"], [], [])), "https://upstream.test/"
    )
    assert not ok and "address: 127.0.0.1 is loopback" in text


def test_explain_check_userinfo() -> None:
    ok, text = explain_check(parse_policy(FILE, "p.toml"), "https://api.github.com@evil.com/")
    assert not ok
    assert "note: 'api.github.com' before '@' is userinfo; the host is evil.com" in text


@pytest.mark.parametrize(
    ("url", "method", "message"),
    [
        ("ftp://a.com/", "GET", "unsupported URL 'ftp://a.com/'"),
        ("a.com/x", "GET", "unsupported URL"),
        ("https://exa mple.com/", "GET", "invalid URL"),
        ("https://a.com/%zz", "GET", "invalid URL 'https://a.com/%zz': invalid percent escape"),
        ("https://a.com:99999/", "GET", "invalid port '99999'"),
        ("https:///x", "GET", "invalid URL"),
        ("https://a.com/", "G ET", "invalid method 'G ET'"),
    ],
)
def test_explain_check_errors(url: str, method: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        explain_check(Policy(), url, method)
    assert message in str(err.value) and "\n" not in str(err.value)
