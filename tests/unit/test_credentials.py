"""Credential config, sources, dummies and the on-the-wire swaps (bytes in, bytes out)."""

from __future__ import annotations

import base64
import json
import random
import shlex
import string
import sys
from pathlib import Path

import keyring
import pytest
from keyrings.alt.file import PlaintextKeyring

from nixcell.errors import CredentialError, PolicyError
from nixcell.net import credsource
from nixcell.net.credentials import (
    KNOWN_PREFIXES,
    CellCredentials,
    CredentialSpec,
    load_secret,
    make_dummy,
    parse_credentials,
)
from nixcell.net.rewrite import Rewriter, replace_all

REAL = "ghp_" + "R3alT0kenAbCdEfGhIjKlMnOpQrStUv1234"  # 40 characters, like a GitHub PAT


def spec(
    name: str = "github", hosts: tuple[str, ...] = ("api.github.com",), **kw
) -> CredentialSpec:
    table = {"name": name, "source": "env:NIXCELL_TEST_SECRET", "hosts": list(hosts), **kw}
    return parse_credentials([table], "test.toml")[0]


def cell(*pairs: tuple[CredentialSpec, str]) -> CellCredentials:
    return CellCredentials(pairs or [(spec(), REAL)])


def dummy_of(cc: CellCredentials, var: str = "GITHUB_TOKEN") -> str:
    return cc.cell_env()[var]


def stream(rewriter: Rewriter, chunks: list[bytes]) -> bytes:
    out = b"".join(rewriter.feed(c) for c in chunks) + rewriter.flush()
    assert len(out) == sum(map(len, chunks))
    return out


def splits(data: bytes, pieces: int) -> list[list[bytes]]:
    """Every way to cut ``data`` into 2 or 3 pieces (the cuts land everywhere)."""
    n = len(data)
    if pieces == 2:
        return [[data[:i], data[i:]] for i in range(1, n)]
    return [[data[:i], data[i:j], data[j:]] for i in range(1, n) for j in range(i + 1, n)]


def assert_hidden(exc: BaseException, *secrets: str) -> None:
    text = str(exc) + (getattr(exc, "detail", None) or "")
    assert "\n" not in str(exc)
    for secret in secrets:
        assert secret not in text


# -- config --------------------------------------------------------------------------------------


def test_parse_defaults() -> None:
    table = {"name": "github", "source": "keyring:github.com/me", "hosts": ["api.github.com"]}
    (s,) = parse_credentials([{**table, "_line": 7}], "policy.toml")
    assert (s.header, s.format, s.env, s.body) == (
        "Authorization",
        "Bearer {token}",
        "GITHUB_TOKEN",
        False,
    )
    assert s.origin == "policy.toml:7"
    assert [str(p) for p in s.hosts] == ["api.github.com"]


@pytest.mark.parametrize(
    ("name", "env"),
    [
        ("github", "GITHUB_TOKEN"),
        ("anthropic-api-key", "ANTHROPIC_API_KEY"),
        ("GH_TOKEN", "GH_TOKEN"),
        ("my.service", "MY_SERVICE_TOKEN"),
        ("1password", "_1PASSWORD_TOKEN"),
    ],
)
def test_default_env_name(name: str, env: str) -> None:
    assert spec(name).env == env


def test_env_can_be_set_or_disabled() -> None:
    assert spec(env="GH_TOKEN").env == "GH_TOKEN"
    assert cell((spec(env=""), REAL)).cell_env() == {}


BASE = {"name": "gh", "source": "env:GH", "hosts": ["api.github.com"], "_line": 12}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"name": None}, "needs a name"),
        ({"name": "bad name"}, "needs a name"),
        ({"source": None}, "source is required"),
        ({"source": "vault:x"}, "keyring:, env:, file: or command:"),
        ({"source": "keyring:onlyservice"}, "SERVICE/ACCOUNT"),
        ({"source": "env:1BAD"}, "variable name"),
        ({"source": "file:relative/token"}, "absolute path"),
        ({"source": "command:"}, "needs a command"),
        ({"source": "command:echo 'unterminated"}, "source command"),
        ({"hosts": None}, "hosts must be"),
        ({"hosts": []}, "hosts must be"),
        ({"hosts": "api.github.com"}, "hosts must be"),
        ({"hosts": ["*"]}, "any server"),
        ({"hosts": ["a*b.com"]}, "invalid host pattern"),
        ({"header": "Bad Header"}, "header"),
        ({"format": "Bearer"}, "{token}"),
        ({"format": "{token} {other}"}, "no placeholder"),
        ({"env": "1X"}, "env must be"),
        ({"body": "yes"}, "body must be"),
        ({"hots": ["x"]}, "unknown key(s) 'hots'"),
    ],
)
def test_parse_errors(change: dict, needle: str) -> None:
    table = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(PolicyError) as err:
        parse_credentials([table], "policy.toml")
    message = str(err.value)
    assert message.startswith("policy.toml:12: ") and needle in message and "\n" not in message


def test_duplicate_name_and_env_are_errors() -> None:
    with pytest.raises(PolicyError, match="defined twice"):
        parse_credentials([BASE, {**BASE, "_line": 20}], "p.toml")
    with pytest.raises(PolicyError, match=r"p\.toml:20: .*env GH_TOKEN is already used"):
        parse_credentials(
            [BASE, {**BASE, "name": "other", "env": "GH_TOKEN", "_line": 20}], "p.toml"
        )


def test_loader_metadata_is_accepted() -> None:
    (s,) = parse_credentials([{**BASE, "_file": "/etc/nixcell/policy.toml"}], "merged")
    assert s.origin == "/etc/nixcell/policy.toml:12"


def test_error_without_line_names_the_file() -> None:
    with pytest.raises(PolicyError, match=r"^cli: credential 'gh': hosts"):
        parse_credentials([{"name": "gh", "source": "env:X"}], "cli")


# -- sources -------------------------------------------------------------------------------------


def source_spec(source: str) -> CredentialSpec:
    return parse_credentials([{"name": "t", "source": source, "hosts": ["x.test"]}], "p.toml")[0]


def test_env_source(monkeypatch) -> None:
    monkeypatch.setenv("NIXCELL_TEST_SECRET", REAL)
    assert load_secret(source_spec("env:NIXCELL_TEST_SECRET")) == REAL
    assert load_secret(source_spec("env:OTHER"), {"OTHER": "x" * 10}) == "x" * 10
    monkeypatch.delenv("NIXCELL_TEST_SECRET")
    with pytest.raises(CredentialError, match="NIXCELL_TEST_SECRET is not set"):
        load_secret(source_spec("env:NIXCELL_TEST_SECRET"))


def test_file_source(tmp_path: Path) -> None:
    path = tmp_path / "token"
    for content in (REAL, REAL + "\n", REAL + "\r\n"):
        path.write_text(content)
        assert load_secret(source_spec(f"file:{path}")) == REAL
    path.write_text(REAL + "\n\n")  # only one newline is stripped: the rest is a broken secret
    with pytest.raises(CredentialError, match="line break") as err:
        load_secret(source_spec(f"file:{path}"))
    assert_hidden(err.value, REAL)
    with pytest.raises(CredentialError, match="cannot read") as err:
        load_secret(source_spec(f"file:{tmp_path / 'missing'}"))
    assert str(tmp_path / "missing") in str(err.value)


def test_empty_secret_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialError, match="empty"):
        load_secret(source_spec(f"file:{tmp_path / 'empty'}"))


def python_command(code: str) -> str:
    return "command:" + shlex.join([sys.executable, "-c", code])


def test_command_source() -> None:
    assert load_secret(source_spec(python_command(f"print({REAL!r})"))) == REAL


def test_failing_command_hides_its_output() -> None:
    code = f"import sys; print({REAL!r}); print('not logged in', file=sys.stderr); sys.exit(3)"
    with pytest.raises(CredentialError, match="exited with status 3") as err:
        load_secret(source_spec(python_command(code)))
    assert_hidden(err.value, REAL)
    assert err.value.detail == "not logged in"


def test_command_not_found_and_timeout(monkeypatch) -> None:
    with pytest.raises(CredentialError, match="command not found: /nonexistent/tool"):
        load_secret(source_spec("command:/nonexistent/tool --flag"))
    monkeypatch.setattr(credsource, "COMMAND_TIMEOUT", 0.3)
    with pytest.raises(CredentialError, match="timed out"):
        load_secret(source_spec(python_command("import time; time.sleep(5)")))


@pytest.fixture
def plaintext_keyring(tmp_path: Path):
    backend = PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    yield backend
    keyring.set_keyring(previous)


def test_keyring_source(plaintext_keyring) -> None:
    plaintext_keyring.set_password("github.com", "me@example.com", REAL)
    assert load_secret(source_spec("keyring:github.com/me@example.com")) == REAL
    with pytest.raises(CredentialError, match=r"no keyring entry for github\.com/nobody") as err:
        load_secret(source_spec("keyring:github.com/nobody"))
    assert_hidden(err.value, REAL)


def test_keyring_service_may_contain_slashes(plaintext_keyring) -> None:
    plaintext_keyring.set_password("https://github.com/x", "me", REAL)
    assert load_secret(source_spec("keyring:https://github.com/x/me")) == REAL


def test_load_fails_before_the_cell_starts_without_leaking(monkeypatch) -> None:
    monkeypatch.setenv("NIXCELL_TEST_SECRET", "Xy7q")
    with pytest.raises(CredentialError, match=r"credential 'github': .*too short") as err:
        CellCredentials.load([spec()])
    assert_hidden(err.value, "Xy7q")
    monkeypatch.setenv("NIXCELL_TEST_SECRET", REAL)
    assert dummy_of(CellCredentials.load([spec()])) != REAL


# -- dummies -------------------------------------------------------------------------------------


def shape(text: str) -> str:
    return "".join(
        "9" if c.isdigit() else "a" if c.islower() else "A" if c.isupper() else c for c in text
    )


@pytest.mark.parametrize("prefix", KNOWN_PREFIXES)
def test_dummy_keeps_known_prefix_and_shape(prefix: str) -> None:
    real = prefix + "Ab3dE_f6hI-jK9mNoPqR5tUvWxYz0"
    dummy = make_dummy(real)
    assert dummy.startswith(prefix) and len(dummy) == len(real) and dummy != real
    assert shape(dummy) == shape(real)


def test_dummy_keeps_a_short_generic_prefix_only() -> None:
    assert make_dummy("mytool_Ab3dEf6hIjK9mN").startswith("mytool_")
    assert make_dummy("xoxe-1-Ab3dEf6hIjK9mN").startswith("xoxe-")
    for real in (
        "averyverylongprefix_Ab3dEf6hIjK9mN",  # too long to be a type tag
        "deadbeef-0c1d-4e2f-8a9b-0123456789ab",  # a UUID's first group is secret
        "AbCdEfG_hIjK9mN0pQrStUv",  # random base64url that happens to contain '_'
    ):
        assert make_dummy(real)[:8] != real[:8]


def test_dummy_of_hex_stays_hex() -> None:
    real = "0123456789abcdef" * 2 + "deadbeef"
    dummy = make_dummy(real)
    assert set(dummy) <= set(string.hexdigits.lower()) and dummy != real


def test_dummy_never_equals_the_real() -> None:
    for _ in range(500):
        assert make_dummy("a1b2c3d4") != "a1b2c3d4"


@pytest.mark.parametrize("real", ["", "abc", "seven77", "ghp_abcd", "!!!!ab-cd-ef!!!"])
def test_too_short_secret_is_refused(real: str) -> None:
    with pytest.raises(CredentialError) as err:
        make_dummy(real)
    assert_hidden(err.value, *([real] if real else []))


def test_dummies_of_a_cell_are_distinct() -> None:
    specs = [spec(f"c{i}", env=f"C{i}") for i in range(20)]
    cc = CellCredentials([(s, REAL[:-2] + f"{i:02d}") for i, s in enumerate(specs)])
    dummies = list(cc.cell_env().values())
    assert len(set(dummies)) == 20 and not set(dummies) & set(cc.secrets())


# -- the cell's view -----------------------------------------------------------------------------


def test_applies_to() -> None:
    cc = cell((spec(hosts=("*.github.com", "github.com")), REAL))
    assert cc.applies_to("api.github.com") and cc.applies_to("GitHub.com.")
    assert not cc.applies_to("github.com.evil.test") and not cc.applies_to("bad host")


def test_cell_env_holds_only_the_dummy() -> None:
    cc = cell()
    env = cc.cell_env()
    assert list(env) == ["GITHUB_TOKEN"]
    assert env["GITHUB_TOKEN"] != REAL and len(env["GITHUB_TOKEN"]) == len(REAL)
    assert REAL not in repr(env) and REAL not in repr(cc)
    assert cc.secrets() == [REAL]


# -- requests ------------------------------------------------------------------------------------


def test_header_swap_only_for_matching_hosts() -> None:
    cc = cell()
    dummy = dummy_of(cc).encode()
    headers = [(b"authorization", b"Bearer " + dummy), (b"x-other", dummy)]
    swapped = cc.rewrite_request_headers("api.github.com", headers)
    assert swapped == [(b"authorization", b"Bearer " + REAL.encode()), (b"x-other", REAL.encode())]
    assert cc.rewrite_request_headers("API.GitHub.com.", headers) == swapped
    for host in (
        "github.com",
        "evil.test",
        "api.github.com.evil.test",
        "bad host",
        "api.github.com:443",
    ):
        assert cc.rewrite_request_headers(host, headers) == headers


@pytest.mark.parametrize(
    ("before", "after", "swapped"),
    [
        (b"", b"", True),
        (b"token ", b",x", True),
        (b'"', b'"', True),
        (b"xx", b"", False),
        (b"", b"yy", False),
        (b"-", b"", False),
        (b"", b"_", False),
        (b"a", b"b", False),
    ],
)
def test_only_whole_tokens_are_swapped(before: bytes, after: bytes, swapped: bool) -> None:
    cc = cell()
    value = before + dummy_of(cc).encode() + after
    ((_, out),) = cc.rewrite_request_headers("api.github.com", [(b"x-token", value)])
    assert out == (before + REAL.encode() + after if swapped else value)


def test_every_occurrence_in_a_value_is_swapped() -> None:
    cc = cell()
    d = dummy_of(cc).encode()
    ((_, out),) = cc.rewrite_request_headers("api.github.com", [(b"x", d + b" " + d)])
    assert out == REAL.encode() + b" " + REAL.encode()


def test_basic_auth_is_swapped_inside_base64() -> None:
    cc = cell()
    user_pass = b"x-access-token:" + dummy_of(cc).encode()
    value = b"Basic " + base64.b64encode(user_pass)
    ((_, out),) = cc.rewrite_request_headers("api.github.com", [(b"authorization", value)])
    assert len(out) == len(value)
    assert base64.b64decode(out.split()[1]) == b"x-access-token:" + REAL.encode()
    assert cc.rewrite_request_headers("evil.test", [(b"authorization", value)])[0][1] == value


def test_request_target_is_swapped() -> None:
    cc = cell()
    target = b"/user?access_token=" + dummy_of(cc).encode() + b"&x=1"
    assert cc.rewrite_request_target("api.github.com", target) == target.replace(
        dummy_of(cc).encode(), REAL.encode()
    )
    assert cc.rewrite_request_target("evil.test", target) == target


def test_inject_for() -> None:
    cc = cell((spec(header="X-Api-Key", format="key {token}"), REAL))
    out = cc.inject_for("api.github.com", [(b"host", b"api.github.com")], "github")
    assert out == [(b"host", b"api.github.com"), (b"X-Api-Key", b"key " + REAL.encode())]
    present = [(b"x-api-key", b"mine")]
    assert cc.inject_for("api.github.com", present, "github") == present
    assert cc.inject_for("evil.test", [], "github") == []
    with pytest.raises(CredentialError, match="no credential named 'nope'"):
        cc.inject_for("api.github.com", [], "nope")


def test_body_rewriter_only_for_body_credentials_and_matching_hosts() -> None:
    assert cell().request_body_rewriter("api.github.com") is None
    cc = cell((spec(body=True), REAL))
    assert cc.request_body_rewriter("evil.test") is None
    assert cc.request_body_rewriter("api.github.com") is not None


@pytest.mark.parametrize("pieces", [2, 3])
def test_body_swap_across_chunk_boundaries(pieces: int) -> None:
    cc = cell((spec(body=True), REAL))
    body = b'{"token":"' + dummy_of(cc).encode() + b'"}'
    expected = body.replace(dummy_of(cc).encode(), REAL.encode())
    for chunks in splits(body, pieces):
        rewriter = cc.request_body_rewriter("api.github.com")
        assert rewriter is not None
        assert stream(rewriter, chunks) == expected


def test_body_swap_respects_token_boundaries_across_chunks() -> None:
    cc = cell((spec(body=True), REAL))
    d = dummy_of(cc).encode()
    cases = {
        b"x" + d: False,  # the byte before sits in an earlier chunk
        d + b"y": False,  # the byte after arrives in a later chunk
        b"=" + d: True,
        d: True,  # stream start and end are boundaries
    }
    for body, swapped in cases.items():
        expected = body.replace(d, REAL.encode()) if swapped else body
        for chunks in splits(body, 2):
            rewriter = cc.request_body_rewriter("api.github.com")
            assert rewriter is not None
            assert stream(rewriter, chunks) == expected


def test_rewriter_holds_back_at_most_the_longest_needle() -> None:
    cc = cell((spec(body=True), REAL))
    rewriter = cc.request_body_rewriter("api.github.com")
    assert rewriter is not None
    out = rewriter.feed(b"a" * 1000)
    assert 1000 - len(REAL) - 2 <= len(out) < 1000  # the needle, its boundaries either side
    rewriter.flush()
    with pytest.raises(RuntimeError):
        rewriter.feed(b"x")


@pytest.mark.parametrize("bounded", [True, False])
def test_streaming_equals_whole_buffer_replacement(bounded: bool) -> None:
    """Random texts built from needles and neighbours, cut at random: same result as one pass."""
    rng = random.Random(1234)
    pairs = {b"abcDEF123": b"xyzUVW987", b"Q1w2E3r4t5Y6": b"m0N9b8V7c6X5", b"abcDEF12": b"zzzZZZ00"}
    pieces = [*pairs, b"-", b"_", b" ", b"a", b"Z", b"9", b"=", b"\n", b"abc", b"Q1w2"]
    for _ in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randint(0, 5))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert stream(Rewriter(pairs, bounded=bounded), chunks) == replace_all(
            data, pairs, bounded=bounded
        )


def test_rewriter_refuses_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        Rewriter({b"abc": b"abcd"}, bounded=True)


# -- responses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pieces", [2, 3])
def test_response_scrubbing_across_chunks(pieces: int) -> None:
    other = spec("gitlab", ("gitlab.com",))
    real2 = "glpat-" + "Zz9Yy8Xx7Ww6Vv5Uu4Tt"
    cc = cell((spec(), REAL), (other, real2))
    body = b"xx" + REAL.encode() + b"yy|" + real2.encode()
    expected = (
        b"xx" + dummy_of(cc).encode() + b"yy|" + dummy_of(cc, "GITLAB_TOKEN").encode()
    )  # not token-bounded: every copy of a secret goes
    for chunks in splits(body, pieces):
        assert stream(cc.response_scrubber(), chunks) == expected


def test_scrub_headers() -> None:
    cc = cell()
    headers = [(b"x-echo", b"you sent " + REAL.encode()), (b"content-type", b"text/plain")]
    assert cc.scrub_headers(headers) == [
        (b"x-echo", b"you sent " + dummy_of(cc).encode()),
        (b"content-type", b"text/plain"),
    ]


def test_redact() -> None:
    cc = cell()
    assert cc.redact(f"GET /?t={REAL} ok") == "GET /?t=[REDACTED] ok"


# -- OAuth ---------------------------------------------------------------------------------------


def oauth_cell() -> CellCredentials:
    s = spec("example", ("auth.example.com", "api.example.com"), body=True)
    return cell((s, "rt-initial-" + "Q1w2E3r4T5y6U7i8"))


def test_oauth_tokens_end_to_end() -> None:
    cc = oauth_cell()
    access, refresh = "ya29.A0" + "b1C2d3E4f5G6h7I8j9K0", "1//0g" + "Lm9Nn8Oo7Pp6Qq5Rr4"
    body = json.dumps(
        {"access_token": access, "expires_in": 3599, "refresh_token": refresh}
    ).encode()
    assert cc.wants_token_response("auth.example.com", "application/json; charset=utf-8")
    seen = cc.observe_token_response("auth.example.com", body, "application/json; charset=utf-8")
    assert len(seen) == len(body)
    doc = json.loads(seen)
    new_access, new_refresh = doc["access_token"], doc["refresh_token"]
    assert doc["expires_in"] == 3599
    assert new_access != access and shape(new_access) == shape(access)
    assert new_refresh != refresh and shape(new_refresh) == shape(refresh)
    assert access.encode() not in seen and refresh.encode() not in seen

    # the cell uses the dummies; the proxy puts the real tokens back, for the credential's hosts
    headers = [(b"authorization", b"Bearer " + new_access.encode())]
    assert (
        cc.rewrite_request_headers("api.example.com", headers)[0][1] == b"Bearer " + access.encode()
    )
    assert cc.rewrite_request_headers("evil.test", headers) == headers
    form = b"grant_type=refresh_token&refresh_token=" + new_refresh.encode()
    rewriter = cc.request_body_rewriter("auth.example.com")
    assert rewriter is not None
    assert stream(rewriter, [form[:-10], form[-10:]]) == form.replace(
        new_refresh.encode(), refresh.encode()
    )
    # and the new real tokens never reach the cell, nor a log
    echoed = b"token=" + access.encode()
    assert stream(cc.response_scrubber(), [echoed]) == b"token=" + new_access.encode()
    assert {access, refresh} <= set(cc.secrets())
    assert access not in cc.redact(f"saw {access}")
    # seeing the same token again keeps its dummy
    again = json.loads(cc.observe_token_response("auth.example.com", body, "application/json"))
    assert again["access_token"] == new_access


def test_oauth_form_response_and_escaped_slashes() -> None:
    cc = oauth_cell()
    access = "gho_" + "Ab1/Cd2+Ef3=Gh4Ij5Kl6"
    form = (
        b"access_token="
        + access.replace("/", "%2F").replace("+", "%2B").replace("=", "%3D").encode()
    )
    form += b"&scope=repo&token_type=bearer"
    out = cc.observe_token_response("auth.example.com", form, "application/x-www-form-urlencoded")
    assert (
        len(out) == len(form) and b"Ab1%2FCd2" not in out and out.startswith(b"access_token=gho_")
    )
    escaped = (
        json.dumps({"refresh_token": "ab/cd/" + "Ef3Gh4Ij5Kl6Mn7"}).replace("/", "\\/").encode()
    )
    out = cc.observe_token_response("auth.example.com", escaped, "application/json")
    assert len(out) == len(escaped)
    assert json.loads(out)["refresh_token"] != "ab/cd/Ef3Gh4Ij5Kl6Mn7"


def test_oauth_ignores_other_hosts_not_media_types() -> None:
    """The media type is the server's word: a credential host's tokens are mapped whatever it
    says; other hosts' responses are only scrubbed."""
    cc = oauth_cell()
    real = "ya29.A0b1C2d3E4f5G6h7I8j9K0"
    body = json.dumps({"access_token": real}).encode()
    assert not cc.wants_token_response("evil.test", "application/json")
    assert cc.wants_token_response("auth.example.com", "text/html")
    assert cc.observe_token_response("evil.test", body, "application/json") == body
    assert real.encode() not in cc.observe_token_response("auth.example.com", body, "text/plain")
    assert cc.observe_token_response("auth.example.com", b"[1]", "application/json") == b"[1]"
    assert cc.observe_token_response("auth.example.com", b"{bad", "application/json") == b"{bad"


def test_oauth_short_token_fails_closed() -> None:
    cc = oauth_cell()
    body = json.dumps({"access_token": "abc"}).encode()
    with pytest.raises(CredentialError) as err:
        cc.observe_token_response("auth.example.com", body, "application/json")
    assert_hidden(err.value, "abc")


@pytest.mark.parametrize("user", ["", "x", "xy", "x-access-token"])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_secret_inside_base64_is_scrubbed(user: str, urlsafe: bool) -> None:
    """An upstream echoing ``Basic base64(user:real)`` (what the proxy sent it, e.g. for git)
    must not hand the real token to the cell, at any alignment, standard or URL-safe."""
    cc = cell()
    dummy = dummy_of(cc)
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    for pieces in (1, 2):
        echoed = b'{"authorization": "Basic ' + encode(f"{user}:{REAL}".encode()) + b'"}'
        chunks = [echoed] if pieces == 1 else [echoed[:40], echoed[40:]]
        for out in (
            stream(cc.response_scrubber(), chunks),
            cc.scrub_headers([(b"x", echoed)])[0][1],
        ):
            blob = out.split(b"Basic ", 1)[1].split(b'"', 1)[0]
            decoded = (base64.urlsafe_b64decode if urlsafe else base64.b64decode)(blob)
            token = decoded.decode("latin-1").split(":", 1)[1]
            assert len(token) == len(REAL)
            # Everything but (at most) the last two characters is the dummy's now.
            assert token[:-2] == dummy[:-2], (token, dummy)
            assert REAL[4:-2] not in token


@pytest.mark.parametrize(
    ("target", "swapped"),
    [
        (b"/x?access_token=D", b"/x?access_token=R"),
        (b"/x?a=1&ACCESS_TOKEN=D&b=2", b"/x?a=1&ACCESS_TOKEN=R&b=2"),
        (b"/x?access%5Ftoken=D", b"/x?access%5Ftoken=R"),
        (b"/x?private_token=D&token=D", b"/x?private_token=R&token=R"),
        (b"/repos/me/contents/D", b"/repos/me/contents/D"),  # a path: never
        (b"/D?access_token=D", b"/D?access_token=R"),
        (b"/x?note=D", b"/x?note=D"),  # a parameter that is not a credential's
        (b"/x?note=access_token=D", b"/x?note=access_token=D"),
        (b"/x?access_token", b"/x?access_token"),
        (b"/x", b"/x"),
    ],
)
def test_dummies_are_swapped_only_in_credential_parameters(target, swapped):
    from nixcell.net.requestswap import swap_in_target

    assert swap_in_target(target, {b"D": b"R"}) == swapped
