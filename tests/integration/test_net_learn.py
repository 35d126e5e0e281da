"""``--learn`` through the real CLI: record a cell's requests, replay the policy it wrote.

Real cells, real proxy, real HTTPS against the loopback upstream of tests/integration/upstream.py
(``up.test``/``other.test``/``evil.test`` pinned to 127.0.0.1, loopback granted by a cidr rule).
"""

from __future__ import annotations

import pytest
from tests.conftest import cli

PINS = ("up.test", "other.test", "evil.test")


@pytest.fixture(autouse=True)
def _fresh(tls):
    tls.seen.clear()


LEARN = """
import sys, urllib.request, urllib.error
def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:  # a CONNECT refused by the proxy
        return 403 if "Tunnel connection failed: 403" in str(e) else repr(e)
for url in sys.argv[1:]:
    print("fetched", url, fetch(url))
"""


FLAGS = [
    "-p", "python3", "--allow-cidr=127.0.0.1/32", *(f"--resolve={h}:127.0.0.1" for h in PINS),
]  # fmt: skip
SCRIPT = ["--", "python3", "-c", LEARN]


def learned_urls(tls) -> list[str]:
    return [tls.url("/repos/me/a"), tls.url("/repos/me/b"), tls.url("/x", host="other.test")]


def test_learn_then_replay_the_learned_policy(offline_set, tls, tmp_path):
    from nixcell.net.policy import load_policy

    flags = [*FLAGS, f"--upstream-ca={tls.ca_file}"]
    urls = learned_urls(tls)
    script = SCRIPT

    learned = cli("run", "--learn", *flags, *script, *urls)
    assert learned.returncode == 0, learned
    policy_text = learned.stdout.decode()
    # stdout is only the policy; the cell's own output went to stderr.
    assert "fetched" not in policy_text and policy_text.startswith("# Written by nixcell --learn")
    assert [line for line in learned.stderr.decode().splitlines() if "fetched" in line] == [
        f"fetched {url} 200" for url in urls
    ]
    policy = tmp_path / "learned.toml"
    policy.write_text(policy_text)
    rules = load_policy(policy).rules
    assert sorted(r.host.value for r in rules) == ["other.test", "up.test"]
    assert 'path = ["/repos/me/**"]' in policy_text and 'path = ["/x"]' in policy_text
    assert tls.paths() == ["/repos/me/a", "/repos/me/b", "/x"]

    tls.seen.clear()
    replay = cli("run", "--policy", str(policy), *flags, *script, *urls)
    assert replay.returncode == 0, replay
    assert replay.stdout.decode().splitlines() == [f"fetched {url} 200" for url in urls]
    assert tls.paths() == ["/repos/me/a", "/repos/me/b", "/x"]

    tls.seen.clear()
    new = [tls.url("/repos/me/c"), tls.url("/y", host="evil.test"), tls.url("/admin")]
    widened = cli("run", "--policy", str(policy), *flags, *script, *new)
    assert widened.stdout.decode().splitlines() == [
        f"fetched {new[0]} 200",  # inside the learned /repos/me/**
        f"fetched {new[1]} 403",  # a new host
        f"fetched {new[2]} 403",  # a path the cell never used
    ], widened
    assert tls.paths() == ["/repos/me/c"]
    assert "evil.test" in widened.stderr.decode()


def test_learn_output_writes_the_file_and_keeps_stdout(offline_set, tls, tmp_path):
    from nixcell.net.policy import load_policy

    urls = learned_urls(tls)
    out_file = tmp_path / "out.toml"
    result = cli(
        "run", "--learn", f"--learn-output={out_file}", *FLAGS, f"--upstream-ca={tls.ca_file}",
        *SCRIPT, *urls,
    )  # fmt: skip
    assert result.returncode == 0, result
    assert result.stdout.decode().splitlines() == [f"fetched {url} 200" for url in urls]
    assert "[[rules]]" not in result.stdout.decode() + result.stderr.decode()
    text = out_file.read_text()
    assert text.startswith("# Written by nixcell --learn")
    assert sorted(r.host.value for r in load_policy(out_file).rules) == ["other.test", "up.test"]
    assert 'path = ["/repos/me/**"]' in text and 'path = ["/x"]' in text
