"""A clone connects only where the proxy's address guard (or the server's repo_cidrs) allows.

The daemon's git runs on the host, outside any cell: without this, ``workspace.repo`` would make
it fetch from the server's own loopback services and LAN for any client. Attacked here with
every spelling of a special address the URL check lets through, and through a real listener
that must never see a connection.
"""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from nixcell.jobs.contract import JobError
from nixcell.jobs.gitclone import Cloner
from nixcell.jobs.gitrefs import check_url
from nixcell.jobs.repoaddr import pin

SPECIAL = [
    "http://127.0.0.1/x.git",
    "http://127.1.2.3:8080/x.git",
    "http://localhost/x.git",  # a name (/etc/hosts) resolving to loopback
    "http://LOCALHOST./x.git",
    "http://[::1]/x.git",
    "http://[::ffff:127.0.0.1]/x.git",
    "http://[::ffff:7f00:1]/x.git",
    "http://[64:ff9b::7f00:1]/x.git",  # NAT64 of loopback
    "http://0.0.0.0/x.git",
    "http://10.0.0.1/x.git",
    "http://192.168.1.1/x.git",
    "http://172.16.0.1/x.git",
    "http://100.64.0.1/x.git",
    "http://169.254.169.254/x.git",  # cloud metadata
    "http://[fd00::1]/x.git",
    "http://[fe80::1]/x.git",
    "https://127.0.0.1/x.git",
]


@pytest.mark.parametrize("repo", SPECIAL)
def test_special_addresses_are_refused_without_repo_cidrs(repo):
    try:
        url = check_url(repo, ("http", "https"))
    except JobError:
        return  # refused by the URL check already: fine
    with pytest.raises(JobError) as info:
        pin(url.url, url.host, ())
    message = str(info.value)
    assert "\n" not in message and "repo_cidrs" in message


def test_repo_cidrs_open_exactly_what_they_name():
    url = check_url("http://127.0.0.1:8080/x.git", ("http",))
    assert pin(url.url, url.host, ("127.0.0.1/32",)) is None  # a literal: nothing to pin
    with pytest.raises(JobError):
        pin(url.url, url.host, ("127.0.0.2/32", "10.0.0.0/8"))
    named = check_url("http://localhost:8080/x.git", ("http",))
    assert pin(named.url, named.host, ("127.0.0.0/8",)) == "localhost:8080:127.0.0.1"
    v6 = check_url("http://[::1]:81/x.git", ("http",))
    assert pin(v6.url, v6.host, ("::1/128",)) is None


def test_a_refused_clone_never_connects(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        cloner = Cloner(SimpleNamespace(state_dir=str(tmp_path / "state"), repo_schemes=("http",)))
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]"):
            with pytest.raises(JobError, match="repo_cidrs"):
                cloner.clone(f"http://{host}:{port}/repo.git", "main", None)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody came
    finally:
        listener.close()
