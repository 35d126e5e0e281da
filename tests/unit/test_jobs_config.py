"""server.toml: every key read strictly, every fault one line ``file:line: [table] key: why``;
tokens hashed and verified in constant time; the credential policy file round-trips through
the proxy's own policy reader."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_jobs_compile import SETTINGS

from nixcell.errors import UsageError
from nixcell.jobs.config import (
    ServerConfig,
    Token,
    credential_policy,
    credentials_toml,
    default_state_dir,
    listen_problem,
    load_config,
    new_token,
    toml_string,
)
from nixcell.net.policyfile import load_policy

FULL = """\
[server]
state_dir = "state"
listen = ["unix:/tmp/nixcell-test.sock", "127.0.0.1:7878", "[::1]:7879"]
concurrency = 8
per_user = 2
queue_limit = 50
backends = ["bwrap"]
default_backend = "bwrap"
profile_dir = "profiles"
retention = "24h"
log_limit = 5000
upload_limit = "100M"
shutdown = "finish"
shutdown_grace = "10s"
repo_schemes = ["https"]
nixpkgs = "nixos-24.11"
hardening = ["debugger"]

[defaults]
memory = "512M"
timeout = "10m"

[maxima]
memory = "2G"
timeout = "1h"
cpus = 4
pids = 500
disk = "1G"

[policies]
local = "local.toml"

[[credentials]]
name = "github"
source = "env:GITHUB_TOKEN"
hosts = ["api.github.com"]

[[tokens]]
name = "ci"
hash = "sha256:{h}"
admin = true
"""
HASH = "ab" * 32
POLICY = '[[rules]]\naction = "allow"\n[rules.pattern]\nhost = "example.com"\n'


@pytest.fixture
def conf(tmp_path: Path):
    """write(text) -> path of a server.toml in a dir holding a policy and a profile dir."""
    (tmp_path / "local.toml").write_text(POLICY)
    (tmp_path / "profiles").mkdir()
    os.chmod(tmp_path, 0o755)

    def write(text: str) -> str:
        path = tmp_path / "server.toml"
        path.write_text(text.replace("{h}", HASH))
        path.chmod(0o644)
        return str(path)

    return write


def test_defaults_without_a_file():
    config = load_config(None)
    assert config.concurrency == 4 and config.queue_limit == 10000
    assert config.backends == ("bwrap",) and config.default_backend == "bwrap"
    assert config.listen and config.listen[0].startswith("unix:/")
    assert config.shutdown == "cancel" and config.tokens == () and config.source is None


def test_every_key_is_read(conf, tmp_path):
    config = load_config(conf(FULL))
    assert config.state_dir == str(tmp_path / "state")
    assert config.listen == ("unix:/tmp/nixcell-test.sock", "127.0.0.1:7878", "[::1]:7879")
    assert (config.concurrency, config.per_user, config.queue_limit) == (8, 2, 50)
    assert config.profile_dir == str(tmp_path / "profiles")
    assert (config.retention, config.log_limit, config.upload_limit) == (86400.0, 5000, 100 << 20)
    assert (config.shutdown, config.shutdown_grace) == ("finish", 10.0)
    assert config.repo_schemes == ("https",) and config.nixpkgs == "nixos-24.11"
    assert config.hardening == ("debugger",)
    assert config.defaults == {"memory": 512 << 20, "timeout": 600.0}
    assert config.maxima == {
        "memory": 2 << 30,
        "timeout": 3600.0,
        "cpus": 4.0,
        "pids": 500,
        "disk": 1 << 30,
    }
    assert config.policies == {"local": str(tmp_path / "local.toml")}
    assert config.credential("github")["hosts"] == ["api.github.com"]
    assert config.tokens == (Token("ci", f"sha256:{HASH}", True),)
    assert config.source == str(tmp_path / "server.toml")


def _with(line_from: str, line_to: str) -> str:
    assert line_from in FULL
    return FULL.replace(line_from, line_to, 1)


BAD = [
    ("concurrency = 8", 'concurrency = "8"', r":4: \[server\] concurrency: must be a whole"),
    ("concurrency = 8", "concurrency = 0", r":4: \[server\] concurrency:"),
    ("concurrency = 8", "concurrency = true", r":4: \[server\] concurrency:"),
    ("per_user = 2", "per_user = -1", r":5: \[server\] per_user:"),
    ("queue_limit = 50", "queue_limit = 5.5", r":6: \[server\] queue_limit:"),
    ('backends = ["bwrap"]', 'backends = ["lxc"]', r":7: \[server\] backends: 'lxc'"),
    ('backends = ["bwrap"]', "backends = []", r":7: \[server\] backends:"),
    ('default_backend = "bwrap"', 'default_backend = "gvisor"', r":8: \[server\] default_b"),
    ('profile_dir = "profiles"', 'profile_dir = "nope"', r":9: \[server\] profile_dir: .* not a"),
    ('retention = "24h"', 'retention = "forever"', r":10: \[server\] retention: invalid"),
    ('retention = "24h"', "retention = nan", r":10: \[server\] retention:"),
    ("log_limit = 5000", "log_limit = 1", r":11: \[server\] log_limit:"),
    ('upload_limit = "100M"', 'upload_limit = "-1"', r":12: \[server\] upload_limit:"),
    ('shutdown = "finish"', 'shutdown = "ignore"', r":13: \[server\] shutdown: must be one"),
    ('shutdown_grace = "10s"', "shutdown_grace = []", r":14: \[server\] shutdown_grace:"),
    ('repo_schemes = ["https"]', 'repo_schemes = ["ext"]', r":15: \[server\] repo_schemes:"),
    ('repo_schemes = ["https"]', 'repo_cidrs = ["10/8"]', r":15: \[server\] repo_cidrs:"),
    ('repo_schemes = ["https"]', 'repo_cidrs = "10.0.0.0/8"', r":15: \[server\] repo_cidrs:"),
    ('nixpkgs = "nixos-24.11"', 'nixpkgs = "nixos-99"', r":16: \[server\] nixpkgs:"),
    ('hardening = ["debugger"]', 'hardening = ["root"]', r":17: \[server\] hardening: unknown"),
    ("concurrency = 8", "concurency = 8", r":4: \[server\] concurency: unknown key"),
    ('memory = "512M"', 'memory = "3G"', r":20: \[defaults\] memory: the default is above"),
    ('memory = "512M"', 'memory = "1K"', r":20: \[defaults\] memory: .*at least 4M"),
    ('memory = "512M"', 'memroy = "512M"', r":20: \[defaults\] memroy: unknown key"),
    ("cpus = 4", "cpus = nan", r":26: \[maxima\] cpus:"),
    ("pids = 500", "pids = 1", r":27: \[maxima\] pids:"),
    ('local = "local.toml"', 'local = "missing.toml"', r":31: \[policies\] local: .*missing"),
    ('local = "local.toml"', '"a/b" = "local.toml"', r":31: \[policies\] a/b: a policy name"),
    ('hosts = ["api.github.com"]', "hosts = []", r":33: credential 'github': hosts must"),
    ('hosts = ["api.github.com"]', 'hosts = ["*"]', r":33: credential 'github': hosts = \["),
    ('source = "env:GITHUB_TOKEN"', 'source = "vault:x"', r":33: credential 'github': source"),
    ('name = "ci"', 'name = "c i"', r":39: \[\[tokens\]\] name: a token name"),
    ('hash = "sha256:{h}"', 'hash = "md5:00"', r":40: \[\[tokens\]\] hash: must be sha256"),
    ("admin = true", 'admin = "yes"', r":41: \[\[tokens\]\] admin: must be true or false"),
    ("admin = true", "role = 1", r":41: \[\[tokens\]\] role: unknown key"),
    ("[server]", "[serve]", r":1: serve: unknown key"),
    ("[server]", "x = 1\n[server]", r":1: x: unknown key"),
    ("[[tokens]]", "[tokens]", r"\[\[tokens\]\]\)|tokens: must be an array"),
    ('listen = ["unix:/tmp/nixcell-test.sock"', 'listen = ["unix:rel.sock"', r":3: \[server\] li"),
    ('"127.0.0.1:7878"', '"127.0.0.1:99999"', r":3: \[server\] listen: 127.0.0.1:99999"),
    ('"[::1]:7879"', '"::1:7879"', r":3: \[server\] listen: ::1:7879: an IPv6"),
    ('state_dir = "state"', 'state_dir = ""', r":2: \[server\] state_dir:"),
    ("concurrency = 8", "concurrency = 8\nconcurrency = 9", r"server.toml:5: not valid TOML"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD, ids=[b[1][:30] for b in BAD])
def test_each_fault_is_one_line_naming_file_line_and_key(conf, old, new, message):
    with pytest.raises(UsageError, match=message) as info:
        load_config(conf(_with(old, new)))
    text = str(info.value)
    assert "\n" not in text and "server.toml" in text


def test_two_credentials_named_alike_and_a_policy_redefining_one(conf, tmp_path):
    twice = FULL + '\n[[credentials]]\nname = "github"\nsource = "env:X"\nhosts = ["a.b"]\n'
    with pytest.raises(UsageError, match=r"server.toml:43: credential 'github' is defined twice"):
        load_config(conf(twice))
    (tmp_path / "local.toml").write_text(
        POLICY + '\n[[credentials]]\nname = "github"\nsource = "env:Y"\nhosts = ["a.b"]\n'
    )
    with pytest.raises(UsageError, match=r"\[policies\] local: credential 'github' is also"):
        load_config(conf(FULL))


def test_a_policy_that_does_not_parse_names_both_files(conf, tmp_path):
    (tmp_path / "local.toml").write_text('[[rules]]\naction = "maybe"\n')
    with pytest.raises(UsageError) as info:
        load_config(conf(FULL))
    assert "server.toml:31: [policies] local:" in str(info.value)
    assert "local.toml:2" in str(info.value)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another uid needs root")
def test_files_someone_else_could_write_are_refused(conf, tmp_path):
    path = conf(FULL)
    os.chmod(path, 0o664)
    with pytest.raises(UsageError, match="writable by group or others"):
        load_config(path)
    os.chmod(path, 0o644)
    os.chown(path, 12345, 12345)
    with pytest.raises(UsageError, match="owned by uid 12345"):
        load_config(path)
    os.chown(path, 0, 0)
    os.chmod(tmp_path / "local.toml", 0o666)
    with pytest.raises(UsageError, match=r"\[policies\] local: .*writable by group or others"):
        load_config(path)


def test_a_symlinked_config_fifo_or_directory_is_refused(conf, tmp_path):
    real = conf(FULL)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    with pytest.raises(UsageError, match="symbolic link"):
        load_config(str(link))
    os.mkfifo(tmp_path / "fifo.toml")
    with pytest.raises(UsageError, match="not a regular file"):
        load_config(str(tmp_path / "fifo.toml"))
    with pytest.raises(UsageError, match=r"not a regular file|Is a directory"):
        load_config(str(tmp_path))
    with pytest.raises(UsageError, match="No such file"):
        load_config(str(tmp_path / "missing.toml"))


def test_not_utf8_and_not_toml(conf, tmp_path):
    path = tmp_path / "server.toml"
    path.write_bytes(b'[server]\nstate_dir = "\xff"\n')
    with pytest.raises(UsageError, match=r"server.toml:2: not valid UTF-8"):
        load_config(str(path))
    path.write_text("[server\n")
    with pytest.raises(UsageError, match=r"server.toml:1: not valid TOML"):
        load_config(str(path))


def test_overrides_from_serve_flags(conf, tmp_path):
    config = load_config(conf(FULL), overrides={"listen": ["127.0.0.1:9"], "state_dir": "/srv/s"})
    assert config.listen == ("127.0.0.1:9",) and config.state_dir == "/srv/s"
    assert load_config(None, overrides={"listen": None}).listen == load_config(None).listen
    with pytest.raises(UsageError, match=r"--listen 1\.2\.3\.4: expected"):
        load_config(None, overrides={"listen": ["1.2.3.4"]})
    with pytest.raises(UsageError, match="unknown server override"):
        load_config(None, overrides={"tokens": []})


def test_the_state_dir_may_not_be_nixcells_own(conf, monkeypatch, tmp_path):
    from nixcell import paths

    own = paths.state_root()
    for inside in (own, os.path.join(own, "server"), os.path.dirname(own)):
        with pytest.raises(UsageError, match="nixcell's own state"):
            load_config(None, overrides={"state_dir": inside})
    assert not default_state_dir().startswith(own.rstrip("/") + "/")


@pytest.mark.parametrize(
    "text",
    ["unix:", "unix:rel", "unix:/" + "x" * 200, "host", ":80", "host:", "host:-1", "host:1e3",
     "::1:80", "[::1", "a b:80", "", "h:80\n", 5],
)  # fmt: skip
def test_listen_problems(text):
    assert listen_problem(text) is not None


@pytest.mark.parametrize("text", ["unix:/run/x.sock", "127.0.0.1:0", "[::1]:7878", "host:80"])
def test_listen_ok(text):
    assert listen_problem(text) is None


# -- tokens -------------------------------------------------------------------------------------


def test_new_token_round_trips_through_the_config(conf):
    token, table = new_token("ci")
    assert len(token) >= 43 and token not in table
    config = load_config(conf(FULL.split("[[tokens]]")[0] + table + "\n"))
    assert config.token(token) is not None and config.token(token).name == "ci"
    assert config.token(token + "x") is None and config.token("") is None
    assert config.token(token.upper()) is None
    with pytest.raises(UsageError):
        new_token("a b")


def test_token_verify_refuses_everything_else():
    token, table = new_token()
    digest = tomllib.loads(table)["tokens"][0]["hash"]
    t = Token("x", digest)
    assert t.verify(token)
    for other in ("", token[:-1], token + "\n", " " + token, token.encode().hex(), "\udcff"):
        assert not t.verify(other)


# -- the credential policy ----------------------------------------------------------------------


def test_credential_policy_is_private_and_reads_back(tmp_path):
    tables = (
        {"name": "github", "source": "env:GH", "hosts": ["api.github.com", "*.github.com"]},
        {"name": "npm", "source": "file:/etc/npm-token", "hosts": ["registry.npmjs.org"],
         "env": "NPM_TOKEN", "header": "Authorization", "format": "Bearer {token}",
         "body": True, "allow_plaintext": False},
    )  # fmt: skip
    config = ServerConfig(state_dir=str(tmp_path), credentials=tables)
    directory = tmp_path / "private"
    path = credential_policy(config, str(directory))
    assert path == str(directory / "credentials.toml")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    policy = load_policy(path)
    assert policy.rules == ()
    assert [{k: v for k, v in c.items() if not k.startswith("_")} for c in policy.credentials] == [
        dict(t) for t in tables
    ]
    assert credential_policy(ServerConfig(state_dir=str(tmp_path)), str(directory)) is None


@SETTINGS
@given(st.text())
def test_toml_strings_round_trip(text):
    assert tomllib.loads(f"v = {toml_string(text)}")["v"] == text


@SETTINGS
@given(st.lists(st.text(min_size=1), min_size=1, max_size=3), st.text())
def test_credential_tables_round_trip(hosts, source):
    text = credentials_toml(({"name": "n", "source": source, "hosts": hosts, "body": True},))
    assert tomllib.loads(text)["credentials"] == [
        {"name": "n", "source": source, "hosts": hosts, "body": True}
    ]
