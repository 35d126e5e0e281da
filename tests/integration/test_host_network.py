"""--host-network (project mode "host"): the cell keeps the host's network namespace, on both
executors. A loopback server on the host is reached from a host-network cell and not from a
default one (loopback only: nothing else is ever contacted); no proxy variables; the host's
resolver config read-only; the no-network hint stays quiet."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tests.conftest import cli

FETCH = "curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/host-net-{tag}"


def _run(home: Path, *flags: str, command: str):
    env = {"NIXCELL_HOME": str(home)}
    return cli("run", *flags, "-p", "bash", "-p", "curl", "-p", "coreutils", "--",
               "bash", "-c", command, env=env, input=b"")  # fmt: skip


def _entry(home: Path) -> tuple[int, int]:
    (entry,) = (home / "cache" / "plans").iterdir()
    st = entry.stat()
    return st.st_ino, st.st_mtime_ns


def test_a_host_network_cell_reaches_a_host_loopback_server(offline_set, plain, tmp_path):
    home = tmp_path / "home"
    for tag in ("normal", "warm"):  # the second run is the warm executor's (direct.py)
        out = _run(home, "--host-network", command=FETCH.format(port=plain.port, tag=tag))
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"200"
        assert f"/host-net-{tag}" in plain.paths()
        if tag == "normal":
            cached = _entry(home)
    assert _entry(home) == cached, "the warm path ran it"


def test_a_default_cell_does_not_reach_it(offline_set, plain, tmp_path):
    home = tmp_path / "home"
    out = _run(home, command=FETCH.format(port=plain.port, tag="default"))
    assert out.returncode == 7, out  # connection refused: the cell's own, empty loopback
    assert "/host-net-default" not in plain.paths()


def test_host_network_cell_has_no_proxy_and_the_host_resolver(offline_set, tmp_path):
    home = tmp_path / "home"
    script = (
        "env; echo ---; test -e /etc/resolv.conf && echo RESOLV; "
        "echo x >> /etc/resolv.conf 2>/dev/null || echo READONLY; cat /etc/hostname"
    )
    out = _run(home, "--host-network", command=script)
    assert out.returncode == 0, out.stderr
    env, _, rest = out.stdout.decode().partition("---\n")
    assert "proxy" not in env.lower() and "PATH=" in env  # no *_PROXY variable at all
    lines = rest.split()
    has_resolv = os.path.isfile(os.path.realpath("/etc/resolv.conf"))
    assert ("RESOLV" in lines) == has_resolv
    if has_resolv:
        assert "READONLY" in lines
    assert lines[-1] == "cell"  # its own hostname still (uts namespace)


@pytest.mark.parametrize("warm", [False, True])
def test_the_no_network_hint_stays_quiet(offline_set, tmp_path, warm):
    home = tmp_path / "home"
    # a datagram to a closed port moves the counters the hint reads (sandbox/nonet.py): on the
    # host's network they are the host's, which nothing of the cell's own may be told about
    command = "echo x > /dev/udp/127.0.0.1/9; exit 7"
    if warm:
        assert _run(home, "--host-network", command="true").returncode == 0
    out = _run(home, "--host-network", command=command)
    assert out.returncode == 7
    assert b"no network" not in out.stderr and b"--allow-host" not in out.stderr, out.stderr
    default = _run(tmp_path / "other", command=command)  # the default cell does hint
    assert default.returncode == 7 and b"the cell has no network" in default.stderr


def test_host_network_and_a_proxy_network_exclude_each_other(offline_set, tmp_path):
    out = _run(tmp_path / "home", "--host-network", "--allow-host", "up.test", command="true")
    assert out.returncode == 2 or out.returncode == 1
    last = out.stderr.decode().splitlines()[-1]
    assert "exclude each other" in last and "Traceback" not in out.stderr.decode()
