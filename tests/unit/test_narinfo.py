"""narinfo pieces: Nix's base32, the signed fingerprint, the cluster's derived key and password,
and the cache address check (the class: anything nix would read as more than one substituter,
or that would carry a credential)."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.jobs.config import cache_url_problem
from nixcell.nix.narinfo import (
    SigningKey,
    cluster_password,
    narinfo,
    nix_base32,
    sha256_of_sri,
)


def test_base32_is_nixs() -> None:
    sri = "sha256-rbAcIZUG/pQr2oh8JWZU47ZcdogrR+9p49WSxyW6mys="
    assert sha256_of_sri(sri) == "sha256:0awvp8jwg4nmwdlyyirbi1v5rdp3aik2az48v8mr9zh6jlhirc5d"


@pytest.mark.skipif(shutil.which("nix-hash") is None, reason="nix-hash is not installed")
@settings(max_examples=30, deadline=None)  # (one nix-hash process each)
@given(st.binary(min_size=1, max_size=64))
def test_base32_agrees_with_nix_hash(data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    nix = subprocess.run(["nix-hash", "--type", "sha256", "--to-base32", digest],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert nix_base32(bytes.fromhex(digest)) == nix


@pytest.mark.parametrize("bad", ["sha1-AAAA", "sha256-", "sha256-!!!!", "sha256-AAAA", "x"])
def test_a_hash_nix_did_not_give_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        sha256_of_sri(bad)


def test_the_cluster_key_is_one_per_store_key_and_signs_the_fingerprint() -> None:
    one, two = SigningKey.for_cluster(b"a" * 32), SigningKey.for_cluster(b"b" * 32)
    assert one.public == SigningKey.for_cluster(b"a" * 32).public != two.public
    url = "http://build-1:7878/nix-cache"
    assert cluster_password(b"a" * 32, url) != cluster_password(b"b" * 32, url)
    assert cluster_password(b"a" * 32, url) != cluster_password(b"a" * 32, url + "x")
    assert cluster_password(b"a" * 32, url) not in one.public
    info = {
        "path": "/nix/store/a5vsz6l9l5109nrh0gzkbliy9z6yl39s-bash-5.2.15",
        "narHash": "sha256-rbAcIZUG/pQr2oh8JWZU47ZcdogrR+9p49WSxyW6mys=",
        "narSize": 1540488,
        "references": ["/nix/store/kdh4y5l878rifiapijn39mmrbbi4fbsj-glibc-2.36"],
        "deriver": "/nix/store/ikh8v9c59l1yxsgkr52lk3vd1mwfiiv6-bash-5.2.15.drv",
    }
    text = narinfo(info, one)
    fields = dict(line.split(": ", 1) for line in text.splitlines())
    assert fields["URL"] == "nar/a5vsz6l9l5109nrh0gzkbliy9z6yl39s.nar"
    assert fields["References"] == "kdh4y5l878rifiapijn39mmrbbi4fbsj-glibc-2.36"
    name, sig = fields["Sig"].split(":", 1)
    pub_name, pub = one.public.split(":", 1)
    assert name == pub_name
    fingerprint = (
        "1;/nix/store/a5vsz6l9l5109nrh0gzkbliy9z6yl39s-bash-5.2.15;"
        "sha256:0awvp8jwg4nmwdlyyirbi1v5rdp3aik2az48v8mr9zh6jlhirc5d;1540488;"
        "/nix/store/kdh4y5l878rifiapijn39mmrbbi4fbsj-glibc-2.36"
    )
    key = Ed25519PublicKey.from_public_bytes(base64.b64decode(pub))
    key.verify(base64.b64decode(sig), fingerprint.encode())  # raises if it does not verify


@pytest.mark.parametrize(
    "url",
    [
        "http://build-1:7878/nix-cache",
        "https://cache.example/nix-cache",
        "http://127.0.0.1:8080/nix-cache",
        "http://[::1]:7878/nix-cache",
    ],
)
def test_a_cache_address_is_taken(url: str) -> None:
    assert cache_url_problem(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://build-1:7878/nix-cache/",
        "http://u:pw@build-1/nix-cache",
        "http://pw@build-1",
        "http://build-1/nix cache",
        "http://build-1/x http://evil/y",
        "http://build-1/x\nhttp://evil",
        "http://build-1/x?priority=1",
        "http://build-1/x#frag",
        "http://build-1/x'",
        'http://build-1/x"',
        "http://build-1\\x",
        "ftp://build-1/x",
        "file:///srv/cache",
        "build-1:7878",
        "http://",
        "http://build-1//nix-cache",
        "http://build-1/nix",
        "http://build-1/nix-cache/x",
        "http://127.0.0.1:8080",
        "http://bu%69ld-1/x",
        "http://build-1/x%20y",
        "http://build-1/é",
        "",
    ],
)
def test_a_cache_address_nix_could_read_otherwise_is_refused(url: str) -> None:
    assert cache_url_problem(url) is not None


@given(st.text(max_size=40), st.text(max_size=10))
def test_no_taken_address_holds_a_separator_or_credential(host: str, tail: str) -> None:
    url = f"http://{host}/nix-cache{tail}"
    if cache_url_problem(url) is None:
        assert tail == "" and not any(c.isspace() or c in "@?#'\"\\%/" for c in host)
