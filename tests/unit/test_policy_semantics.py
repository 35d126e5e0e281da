# ruff: noqa: RUF001 - full-width and other look-alike characters are the point here
"""Policy semantics users rely on: a deny without a port covers every port, flags take host
patterns (regexes only with ``re:``), ambiguous paths are refused by the rule that cannot judge
them, and any allow cidr granting loopback sends loopback through the proxy."""

from __future__ import annotations

import pytest
from tests.unit.test_policy import policy, req, rule

from nixcell.errors import PolicyError
from nixcell.net.hosts import normalize_host
from nixcell.net.policy import (
    merge,
    parse_host_port,
    parse_policy,
    policy_from_flags,
)
from nixcell.net.policycheck import explain_check
from nixcell.net.urlpath import normalize_path


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
