# ruff: noqa: RUF001 - full-width and other look-alike characters are the point here
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
    explain_check,
    merge,
    numbered,
    parse_host_port,
    parse_policy,
    policy_from_flags,
)
from nixcell.net.urlpath import PathPattern, normalize_path


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


# --- semantics users rely on -----------------------------------------------------------------


@pytest.mark.parametrize("port", [80, 443, 8443, 22, 5432, 65535])
@pytest.mark.parametrize(
    "deny",
    ["evil.test", "EVIL.test.", "*.evil.test", "re:(.*\\.)?evil\\.test", "10.1.2.3", "0x0a010203"],
)
def test_deny_without_port_denies_every_port(deny: str, port: int) -> None:
    flags = policy_from_flags(["*.test:8443", "*:8443", "*", "10.1.2.3:" + str(port)], [deny], [])
    filed = merge(
        flags, parse_policy(f"[[rules]]\naction = 'deny'\n[rules.pattern]\nhost = '{deny}'\n", "f")
    )
    target = "x.evil.test" if deny.startswith(("*", "re:")) else normalize_host(deny)
    for pol in (flags, filed, merge(policy_from_flags([], [deny], []), filed)):
        assert not pol.decide_connect(target, port).allowed
        assert not pol.decide(req(target, port=port)).allowed
        assert pol.decide(req(target, port=port)).rule is not None  # the deny, not "no rule"


def test_deny_with_port_denies_only_that_port_and_allow_keeps_web_ports() -> None:
    pol = policy_from_flags(["*.test:8443", "*.test"], ["evil.test:8443"], [])
    assert not pol.decide_connect("evil.test", 8443).allowed
    assert pol.decide_connect("evil.test", 443).allowed
    allow_only = policy_from_flags(["ok.test"], [], [])
    assert allow_only.decide_connect("ok.test", 443).allowed
    assert allow_only.decide(req("ok.test", port=80)).allowed
    assert not allow_only.decide_connect("ok.test", 8443).allowed  # allows keep 80/443


@pytest.mark.parametrize(
    "text",
    [
        "x.*", "a|evil.test", "(a|b).com", "a+b.com", "^a.com", "a.com$", "a\\.b\\.com",
        "[a-z].com", "a?.com", "a{2}.com", "*x.com", "x*.com", "a.*.com", "*.*", "a/b",
        "a@b.com", "a b", "a%2eb.com", "a,b.com", "a;b.com", "re:", "re:(", "**", ".*",
    ],
)
def test_flags_take_host_patterns_not_regexes(text: str) -> None:
    for flag_args in (([text], []), ([], [text])):
        with pytest.raises(PolicyError) as err:
            policy_from_flags(*flag_args, [])
        assert "\n" not in str(err.value)
    with pytest.raises(PolicyError):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("text", "host", "allowed"),
    [
        ("re:x.*", "xevil.com", True),  # a regex only when asked for, and then anchored
        ("re:x.*", "a.xevil.com", False),
        ("re:a|evil\\.test", "evil.test", True),
        ("re:a|evil\\.test", "a", True),
        ("re:a|evil\\.test", "xa", False),
        ("re:api\\.github\\.com", "API.GITHUB.COM", True),
        ("re:api\\.github\\.com", "api.github.com.evil.test", False),
        ("re:api\\.github\\.com:8443", "api.github.com", True),
        ("*.x.com", "a.x.com", True),
        ("*.x.com", "xevil.com", False),
        ("*.x.com", "x.com", False),
        ("ａｐｉ．ｘ．ｃｏｍ", "api.x.com", True),
    ],
)
def test_flag_patterns_match_as_documented(text: str, host: str, allowed: bool) -> None:
    pol = policy_from_flags([text], [], [])
    port = 8443 if text.endswith(":8443") else 443
    assert pol.decide_connect(normalize_host(host), port).allowed is allowed


def test_policy_files_keep_nix_jail_regexes_anchored() -> None:
    text = '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "x.*"\n'
    pol = parse_policy(text, "f.toml")
    assert pol.rules[0].host is not None and pol.rules[0].host.kind == "regex"
    assert pol.decide(req("xevil.com")).allowed
    assert not pol.decide(req("a.xevil.com")).allowed


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("/admin;x/secret", "';' parameter"),
        ("/admin%2Fsecret", "'/'"),
        ("/admin%5Csecret", "'\\'"),
        ("/%2Fadmin", "'/'"),
        ("/admin%00/", "control byte"),
        ("/admin%252Fsecret", "double encoding"),
        ("/admin%C0%AFsecret", "overlong"),
        ("/admin%3F/x", "'?'"),
    ],
)
def test_ambiguous_path_is_denied_naming_the_rule(attack: str, reason: str) -> None:
    pol = policy(rule("deny", "api.test", paths=["/admin/**"]), rule("allow", "api.test"))
    decision = pol.decide(req("api.test", normalize_path(attack)))
    assert not decision.allowed and decision.rule is pol.rules[0]
    assert reason in decision.explain() and "rule 1" in decision.explain()
    other = pol.decide(req("api.test", normalize_path("/ok")))
    assert other.allowed
    # a host without path rules is not affected by its paths
    free = policy(rule("deny", "api.test", paths=["/admin/**"]), rule("allow", "free.test"))
    assert free.decide(req("free.test", normalize_path(attack))).allowed


def test_deny_path_rules_ignore_case() -> None:
    pol = policy(rule("deny", "api.test", paths=["/admin/**"]), rule("allow", "api.test"))
    for path in ("/ADMIN", "/Admin/x", "/aDmIn/"):
        assert not pol.decide(req("api.test", path)).allowed
    strict = policy(rule("allow", "api.test", paths=["/public/**"]))
    assert not strict.decide(req("api.test", "/PUBLIC/x")).allowed


# --- NO_PROXY: loopback granted by any allow cidr, flag or file, goes through the proxy ------


@pytest.mark.parametrize(
    ("cidr", "through_proxy"),
    [
        ("127.0.0.0/8", True),
        ("127.0.0.1/32", True),
        ("127.0.0.0/8:8080", True),
        ("0.0.0.0/0", True),
        ("0.0.0.0/1", True),
        ("64.0.0.0/2", True),
        ("::1/128", True),
        ("::/0", True),
        ("[::1/128]:80", True),
        ("::ffff:127.0.0.0/104", True),
        ("10.0.0.0/8", False),
        ("128.0.0.0/1", False),
        ("fd00::/8", False),
    ],
)
def test_proxy_env_routes_granted_loopback_through_the_proxy(cidr: str, through_proxy: bool):
    from nixcell.plan import proxy_env

    net = cidr.split("]:")[0].strip("[") if cidr.startswith("[") else cidr.rsplit(":8080", 1)[0]
    as_flag = policy_from_flags([], [], [cidr]).proxied_cidrs()
    as_file = parse_policy(
        f'[[rules]]\naction = "allow"\n[rules.pattern]\ncidr = "{net}"\n', "f.toml"
    ).proxied_cidrs()
    for cidrs in (as_flag, as_file):
        env = proxy_env(3128, cidrs)
        assert (env["NO_PROXY"] == "") is through_proxy, (cidr, env["NO_PROXY"])
    denied = parse_policy(f'[[rules]]\naction = "deny"\n[rules.pattern]\ncidr = "{net}"\n', "f")
    assert proxy_env(3128, denied.proxied_cidrs())["NO_PROXY"] != ""


def test_explain_check_names_an_ambiguous_path_and_a_canonical_host() -> None:
    pol = policy(rule("deny", "api.test", paths=["/admin/**"]), rule("allow", "*"))
    ok, text = explain_check(pol, "https://api.test/admin%2fx")
    assert not ok and "holds an encoded '/' (%2F), which rule 1 (test) cannot judge" in text
    ok, text = explain_check(pol, "http://0x7f.1:8080/")
    assert not ok and "request: GET http://127.0.0.1:8080/" in text
    with pytest.raises(PolicyError, match="percent-encoded"):
        explain_check(pol, "https://%61pi.test/")
