# ruff: noqa: E501 - the cells run embedded scripts; keeping their lines whole reads better
"""The no-network hint, for real: real programs in real cells through the real CLI (and MCP).

Names are ``.test`` ones: in a cell without a network their lookup goes to the cell's own
127.0.0.1:53, where nothing listens; with a policy, the proxy refuses them before resolving.
The only upstream is the loopback one of tests/integration/upstream.py.
"""

from __future__ import annotations

import pytest
from tests.conftest import cli
from tests.integration import upstream as up

pytestmark = pytest.mark.integration

NO_NET = "nixcell: the cell has no network; allow a host with --allow-host HOST, or --policy FILE"
URLLIB = "import urllib.request; urllib.request.urlopen('{url}', timeout=20)"


def last_line(result) -> str:
    return result.stderr.decode().rstrip("\n").rsplit("\n", 1)[-1]


def hints(result) -> int:
    return result.stderr.decode().count("nixcell: the cell has no network")


@pytest.mark.parametrize(
    ("packages", "argv"),
    [
        (["python3"], ["python3", "-c", URLLIB.format(url="https://pypi.test/simple/")]),
        (["curl"], ["curl", "-sS", "https://registry.example.test/x"]),
        (["git"], ["git", "clone", "-q", "https://forge.example.test/a/b.git"]),
        (
            ["nodejs"],
            [
                "node",
                "-e",
                "fetch('https://registry.npmjs.test/x').catch(e => { console.error(e.cause); process.exit(1) })",
            ],
        ),
        (
            ["nodejs"],
            [
                "npm",
                "install",
                "--fetch-retries=0",
                "--registry=https://registry.npmjs.test/",
                "left-pad",
            ],
        ),
        (
            ["python3"],
            ["python3", "-c", "import socket; socket.create_connection(('db.example.test', 5432))"],
        ),
    ],
    ids=["urllib", "curl", "git-clone-https", "node-fetch", "npm-install", "socket"],
)
def test_a_failed_network_attempt_ends_with_the_hint(offline_set, packages, argv):
    args = [a for p in packages for a in ("-p", p)]
    result = cli("run", *args, "--", *argv)
    assert result.returncode != 0, result
    assert last_line(result) == NO_NET, result.stderr.decode()
    assert hints(result) == 1


def test_pip_install_in_a_venv_ends_with_the_hint(offline_set):
    script = "python3 -m venv /tmp/v && /tmp/v/bin/pip install --retries 0 -q requests"
    result = cli("run", "-p", "python3", "--", "sh", "-c", script)
    assert result.returncode != 0
    assert last_line(result) == NO_NET, result.stderr.decode()


@pytest.mark.parametrize(
    ("packages", "argv", "code"),
    [
        (["python3"], ["python3", "-c", "raise SystemExit(3)"], 3),
        (
            ["python3"],
            ["python3", "-c", "import socket; socket.gethostbyname('localhost'); 1/0"],
            1,
        ),
        # the cell's own loopback is not "the network": a closed local port is the program's
        (
            ["python3"],
            ["python3", "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
            1,
        ),
        (["curl"], ["curl", "-sS", "http://localhost:9/"], 7),
        (["git"], ["git", "clone", "-q", "/nowhere", "/tmp/x"], 128),
    ],
    ids=["exit-3", "localhost-lookup", "closed-local-port", "curl-localhost", "git-local-missing"],
)
def test_a_failure_that_never_touched_the_network_gets_no_hint(offline_set, packages, argv, code):
    result = cli("run", *[a for p in packages for a in ("-p", p)], "--", *argv)
    assert result.returncode == code, result
    assert hints(result) == 0, result.stderr.decode()


def test_a_command_that_tried_and_then_succeeded_gets_no_hint(offline_set):
    code = "import urllib.request\ntry:\n    urllib.request.urlopen('https://pypi.test/', timeout=20)\nexcept OSError:\n    print('offline, fine')"
    result = cli("run", "-p", "python3", "--", "python3", "-c", code)
    assert result.returncode == 0 and result.stdout == b"offline, fine\n"
    assert hints(result) == 0


# -- with a policy: the proxy knows the host ------------------------------------------------


def net_flags(tls, *allow: str) -> list[str]:
    flags = ["--allow-cidr=127.0.0.1/32", f"--upstream-ca={tls.ca_file}"]
    flags += [f"--resolve={host}:127.0.0.1" for host in up.PINS]
    return flags + [f"--allow-host={host}" for host in allow]


@pytest.mark.parametrize("client", ["curl", "urllib", "node"])
def test_a_host_the_policy_lacks_is_named(offline_set, tls, client):
    """The cell may reach other.test only; up.test (the loopback upstream) is denied by no rule."""
    tls.seen.clear()
    url = tls.url("/x")
    argv = {
        "curl": ["curl", "-sS", url],
        "urllib": ["python3", "-c", URLLIB.format(url=url)],
        "node": [
            "node",
            "-e",
            f"fetch('{url}').then(r => process.exit(r.ok ? 0 : 1), e => {{ console.error(e.cause); process.exit(1) }})",
        ],
    }[client]
    package = {"curl": "curl", "urllib": "python3", "node": "nodejs"}[client]
    result = cli("run", "-p", package, *net_flags(tls, f"other.test:{tls.port}"), "--", *argv)
    assert result.returncode != 0, result
    want = f"nixcell: the cell has no network access to up.test:{tls.port}; allow with --allow-host up.test:{tls.port}"
    assert last_line(result) == want, result.stderr.decode()
    assert tls.seen == []  # refused before anything reached the upstream


def test_with_a_policy_the_allowed_host_works_and_a_failure_after_it_gets_no_hint(offline_set, tls):
    url = tls.url("/ok")
    code = URLLIB.format(url=url) + "; raise SystemExit(4)"
    result = cli(
        "run", "-p", "python3", *net_flags(tls, f"up.test:{tls.port}"), "--", "python3", "-c", code
    )
    assert result.returncode == 4
    assert hints(result) == 0 and b"no network" not in result.stderr


def test_an_explicitly_denied_host_is_not_offered_as_allow_host(offline_set, tls):
    flags = [*net_flags(tls), f"--deny-host=up.test:{tls.port}"]
    result = cli("run", "-p", "curl", *flags, "--", "curl", "-sS", tls.url("/x"))
    assert result.returncode != 0
    assert b"--allow-host up.test" not in result.stderr, result.stderr.decode()


def test_with_a_policy_a_direct_attempt_points_at_the_proxy(offline_set, tls):
    code = "import socket; socket.create_connection(('db.example.test', 5432))"
    result = cli(
        "run", "-p", "python3", *net_flags(tls, f"up.test:{tls.port}"), "--", "python3", "-c", code
    )
    assert result.returncode == 1
    assert last_line(result) == (
        "nixcell: a program in the cell tried to reach the network directly; the cell's only "
        "way out is its proxy (HTTPS_PROXY)"
    )


def test_the_api_result_carries_it(offline_set):
    import nixcell
    from nixcell.sandbox.nonet import NoNetwork

    spec = nixcell.CellSpec(command=["curl", "-sS", "https://x.example.test/"], packages=["curl"])
    result = nixcell.run(spec, capture_output=True)
    assert result.exit_code == 6 and result.no_network == NoNetwork((), False)
    ok = nixcell.run(
        spec.model_copy(update={"command": ["curl", "--version"]}), capture_output=True
    )
    assert ok.exit_code == 0 and ok.no_network is None
