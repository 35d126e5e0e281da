"""Scale-out inputs that cross a trust boundary (issue 13), attacked by class:

- the store URI (the admin's, read by nixcell and by libpq): refused when two readers could
  disagree (spaces, control characters), and its password never shown in any spelling;
- host names (``on_host`` from any client, ``host_name`` from the admin): one strict grammar,
  the same one the database role is made from;
- the cluster keys of server.toml: every fault one line naming the key;
- the binary caches nix may be told about: only URLs nix and a shell read alike, only with keys.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.errors import UsageError
from nixcell.jobs import routing
from nixcell.jobs.compile import check_routing
from nixcell.jobs.config import load_config, store_problem, store_shown
from nixcell.jobs.contract import JobError
from nixcell.jobs.model import JobRequest
from nixcell.jobs.pgconn import redact
from nixcell.jobs.pgroles import role_of

KEY = "cache.example-1:" + "A" * 43 + "="


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:/var/lib/nixcell/jobs.db",
        "postgresql://jobs@db.example/nixcell",
        "postgres://jobs@127.0.0.1:5432/nixcell?passfile=/etc/nixcell/pgpass",
        "postgresql:///nixcell?host=/run/postgresql",
    ],
)
def test_store_uris_that_are_taken(uri: str) -> None:
    assert store_problem(uri) is None


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "sqlite:jobs.db",  # relative: whose cwd?
        "sqlite:",
        "postgresql://jobs@db/nixcell host=evil",  # libpq would read a second parameter
        "postgresql://jobs@db/nixcell\nhost=evil",
        "postgresql://jobs@db/nix\x00cell",
        "postgresql://jobs@db/nix\tcell",
        "mysql://jobs@db/nixcell",
        "http://db/nixcell",
        "host=db dbname=nixcell",  # key=value form: spaces decide what is a value
        " postgresql://jobs@db/nixcell",
    ],
)
def test_store_uris_two_readers_could_read_differently_are_refused(uri: str) -> None:
    assert store_problem(uri) is not None


_PASSWORDS = st.text(
    alphabet=string.ascii_letters + string.digits + "!$&'()*+,;=-._~%", min_size=8, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(password=_PASSWORDS, user=st.sampled_from(["jobs", "nixcell_host_w1", "u"]))
def test_a_store_password_is_never_shown(password: str, user: str) -> None:
    for uri in (
        f"postgresql://{user}:{password}@db.example:5432/nixcell",
        f"postgres://{user}:{password}@[::1]/nixcell?sslmode=require",
    ):
        for shown in (store_shown(uri), redact(uri)):
            assert password not in shown, (uri, shown)
    keyword = f"host=db user={user} password={password} dbname=nixcell"
    assert password not in redact(keyword)


@pytest.mark.parametrize(
    "name",
    ["", "-w1", ".w1", "_w1", "w 1", "w1\n", "../w1", "w/1", "w1;drop", "w" * 65, "é", "w1\x00"],
)
def test_a_bad_on_host_is_a_400_and_never_a_role(name: str) -> None:
    with pytest.raises(JobError) as caught:
        check_routing(JobRequest(command=["true"], on_host=name))
    assert caught.value.status == 400 and "\n" not in caught.value.message
    with pytest.raises(UsageError):
        role_of(name)


@pytest.mark.parametrize("retry", [-1, 11, True, 10**9])
def test_a_bad_retry_is_refused(retry: object) -> None:
    try:
        request = JobRequest(command=["true"], retry=retry)  # type: ignore[arg-type]
    except ValueError:
        return  # the model refuses it (a 400 at the HTTP layer)
    with pytest.raises(JobError):
        check_routing(request)


def test_routing_reads_the_request() -> None:
    body = JobRequest(command=["true"], packages=["b", "a"], on_host="w2", retry=2).model_dump()
    assert (routing.target(body), routing.retries(body)) == ("w2", 2)
    same = JobRequest(command=["x"], packages=["a", "b"]).model_dump()
    other = JobRequest(command=["true"], packages=["a", "c"]).model_dump()
    assert routing.closure_key(body) == routing.closure_key(same)  # order and argv: no matter
    assert routing.closure_key(body) != routing.closure_key(other)
    assert routing.target({"on_host": ""}) is None and routing.retries({"retry": True}) == 0


def _config(tmp_path, text: str):
    path = tmp_path / "server.toml"
    path.write_text(text)
    return load_config(str(path))


def test_the_cluster_keys_are_read(tmp_path) -> None:
    config = _config(
        tmp_path,
        '[server]\nstore = "postgresql://jobs@db/nixcell"\nstore_key = "/etc/nixcell/jobs.key"\n'
        'host_name = "build-1"\nheartbeat = "500ms"\nhost_timeout = "5s"\nclosure_hint = "1s"\n'
        f'substituters = ["file:///srv/cache", "https://cache.example"]\n'
        f'trusted_public_keys = ["{KEY}"]\nnix_root = "roots/build-1"\n',
    )
    assert config.nix_root == str(tmp_path / "roots/build-1")  # (relative: to the file's dir)
    assert (config.store, config.store_key, config.host_name) == (
        "postgresql://jobs@db/nixcell",
        "/etc/nixcell/jobs.key",
        "build-1",
    )
    assert (config.heartbeat, config.host_timeout, config.closure_hint) == (0.5, 5.0, 1.0)
    assert config.substituters == ("file:///srv/cache", "https://cache.example")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('store = "sqlite:rel.db"', "store"),
        ('store = "postgresql://u:secret-pw@db/x y"', "store"),
        ('host_name = "../x"', "host_name"),
        ('heartbeat = "1s"\nhost_timeout = "2s"', "host_timeout"),
        ('heartbeat = "10m"', "heartbeat"),
        ('substituters = ["ftp://cache"]\ntrusted_public_keys = ["' + KEY + '"]', "substituters"),
        ('substituters = ["file:///srv/ca che"]', "substituters"),
        ('substituters = ["file:///srv/cache"]', "substituters"),  # no keys: never unsigned
        ('substituters = ["file:///c"]\ntrusted_public_keys = ["not a key"]', "trusted_public"),
        (
            'substituters = ["https://u:secret-pw@cache"]\ntrusted_public_keys = ["' + KEY + '"]',
            "substituters",
        ),
        (
            'substituters = ["https://secret-pw@cache/x"]\ntrusted_public_keys = ["' + KEY + '"]',
            "substituters",
        ),
        ("nix_root = 3", "nix_root"),
        ('cache_url = "http://build-1:7878/nix-cache/"', "cache_url"),
        ('cache_url = "http://u:secret-pw@build-1/nix-cache"', "cache_url"),
        ('cache_url = "http://build-1/a http://b"', "cache_url"),
    ],
)
def test_a_bad_cluster_key_is_one_line_naming_it(tmp_path, text: str, key: str) -> None:
    with pytest.raises(UsageError) as caught:
        _config(tmp_path, f"[server]\n{text}\n")
    message = caught.value.message
    assert "\n" not in message and key in message, message
    assert "secret-pw" not in message


def test_a_postgresql_store_needs_the_shared_key(tmp_path) -> None:
    with pytest.raises(UsageError, match="store_key"):
        _config(tmp_path, '[server]\nstore = "postgresql://jobs@db/nixcell"\n')


def test_nix_is_told_of_binary_caches_only_with_keys(monkeypatch) -> None:
    from nixcell.nix.resolve import NIX_OPTIONS, nix_options

    monkeypatch.delenv("NIXCELL_SUBSTITUTERS", raising=False)
    assert nix_options() == NIX_OPTIONS == ("--option", "substituters", "")
    monkeypatch.setenv("NIXCELL_SUBSTITUTERS", "file:///srv/cache")
    monkeypatch.setenv("NIXCELL_TRUSTED_PUBLIC_KEYS", KEY)
    assert nix_options() == (
        "--option", "substituters", "file:///srv/cache", "--option", "trusted-public-keys", KEY,
        "--option", "require-sigs", "true", "--option", "narinfo-cache-positive-ttl", "0",
        "--option", "narinfo-cache-negative-ttl", "0",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("given_", "server"),
    [
        ("build-1", "http://build-1:7878"),
        ("build-1:9000", "http://build-1:9000"),
        ("10.0.0.7", "http://10.0.0.7:7878"),
        ("unix:/run/nixcell/nixcell.sock", "unix:/run/nixcell/nixcell.sock"),
        ("http://build-1:7878", "http://build-1:7878"),
    ],
)
def test_a_bare_server_name_is_that_hosts_tcp_listener(given_: str, server: str) -> None:
    from nixcell.jobs.client import Client

    assert Client(given_).server == server


@pytest.mark.parametrize(
    "given_", ["a b", "-x", "build-1:0", "build-1:99999", "build-1:", "[::1]", "b@h", "h/x"]
)
def test_a_bad_bare_server_name_is_one_line(given_: str) -> None:
    from nixcell.jobs.client import Client, ClientError

    with pytest.raises(ClientError) as caught:
        Client(given_)
    assert "\n" not in str(caught.value)
