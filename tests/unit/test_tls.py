"""The local CA, leaf contexts and the upstream client context, checked with real handshakes."""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nixcell.errors import NetworkError
from nixcell.net.tls import CertificateAuthority, LeafCache, upstream_context


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca")


@pytest.fixture
def leaves(ca: CertificateAuthority) -> LeafCache:
    return LeafCache(ca)


def client_trusting(ca: CertificateAuthority) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # nothing but our CA: no system store
    ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> ssl.SSLSocket:
    """Handshake over a socketpair, the server side in a thread; returns the client socket."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as conn:
                conn.sendall(b"hi")
        except (ssl.SSLError, OSError):
            pass  # the client's verdict is what the tests look at

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        conn = client.wrap_socket(b, server_hostname=name)
        assert conn.recv(2) == b"hi"
        return conn
    except BaseException:
        b.close()
        raise
    finally:
        thread.join(10)


def peer_cert(conn: ssl.SSLSocket) -> x509.Certificate:
    der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# -- the CA --------------------------------------------------------------------------------------


def test_ca_files_and_modes(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    ca = CertificateAuthority.load_or_create(directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "ca.pem").stat().st_mode) == 0o644
    assert (directory / "ca.pem").read_bytes() == ca.cert_pem
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "ca.key", "ca.pem"]


def test_ca_certificate_fields(ca: CertificateAuthority) -> None:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(cn, str) and cn.startswith("nixcell local CA (")
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3000) < lifetime < dt.timedelta(days=3700)


def test_ca_key_is_not_exposed(ca: CertificateAuthority) -> None:
    assert b"PRIVATE KEY" not in ca.cert_pem
    assert "PRIVATE" not in repr(ca)
    public = [a for a in CertificateAuthority.__slots__ if not a.startswith("_")]
    assert all(b"PRIVATE" not in repr(getattr(ca, a)).encode() for a in public)


def test_ca_is_reused(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    second = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert first.cert_pem == second.cert_pem


def test_default_directory_is_in_state_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NIXCELL_HOME", str(tmp_path))
    ca = CertificateAuthority.load_or_create()
    assert ca.cert_path == tmp_path / "state" / "ca" / "ca.pem"


def test_missing_certificate_is_reissued_for_the_same_key(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    (tmp_path / "ca" / "ca.pem").unlink()
    second = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert first.cert.public_key() == second.cert.public_key()


def test_foreign_certificate_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "a")
    other = CertificateAuthority.load_or_create(tmp_path / "b")
    (tmp_path / "a" / "ca.pem").write_bytes(other.cert_pem)
    with pytest.raises(NetworkError, match="does not match"):
        CertificateAuthority.load_or_create(tmp_path / "a")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_readable_key_is_refused(tmp_path: Path, mode: int) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    os.chmod(tmp_path / "ca" / "ca.key", mode)
    with pytest.raises(NetworkError) as err:
        CertificateAuthority.load_or_create(tmp_path / "ca")
    assert "readable by others" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give the key to another user")
def test_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path / "ca")
    os.chown(tmp_path / "ca" / "ca.key", 65534, 65534)
    with pytest.raises(NetworkError, match="owned by uid 65534"):
        CertificateAuthority.load_or_create(tmp_path / "ca")


def _race(directory: str, barrier, results) -> None:  # runs in a forked child
    barrier.wait()
    ca = CertificateAuthority.load_or_create(Path(directory))
    results.put(hashlib.sha256(ca.cert_pem).hexdigest())


def test_concurrent_creation_yields_one_ca(tmp_path: Path) -> None:
    mp = multiprocessing.get_context("fork")
    n = 6
    barrier, results = mp.Barrier(n), mp.Queue()
    procs = [
        mp.Process(target=_race, args=(str(tmp_path / "ca"), barrier, results)) for _ in range(n)
    ]
    for p in procs:
        p.start()
    digests = {results.get(timeout=60) for _ in range(n)}
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert len(digests) == 1
    on_disk = hashlib.sha256((tmp_path / "ca" / "ca.pem").read_bytes()).hexdigest()
    assert digests == {on_disk}
    assert sorted(p.name for p in (tmp_path / "ca").iterdir()) == [".lock", "ca.key", "ca.pem"]


# -- leaves --------------------------------------------------------------------------------------


def test_leaf_handshake_verifies(ca: CertificateAuthority, leaves: LeafCache) -> None:
    conn = handshake(leaves.server_context("example.test"), client_trusting(ca), "example.test")
    with conn:
        assert conn.selected_alpn_protocol() == "http/1.1"
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        cert = peer_cert(conn)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.test"]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "example.test"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc < now - dt.timedelta(minutes=5)
    assert cert.not_valid_after_utc - now < dt.timedelta(days=31)


@pytest.mark.parametrize(("host", "name"), [("127.0.0.1", "127.0.0.1"), ("[::1]", "::1")])
def test_leaf_for_ip_literal(ca: CertificateAuthority, leaves: LeafCache, host, name) -> None:
    with handshake(leaves.server_context(host), client_trusting(ca), name) as conn:
        cert = peer_cert(conn)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [name]
    assert san.get_values_for_type(x509.DNSName) == []


def test_leaf_for_another_host_fails_verification(ca, leaves) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(leaves.server_context("example.test"), client_trusting(ca), "other.test")


def test_client_not_trusting_the_ca_fails(tmp_path: Path, leaves: LeafCache) -> None:
    stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(leaves.server_context("example.test"), client_trusting(stranger), "example.test")


def test_server_context_settings(leaves: LeafCache) -> None:
    ctx = leaves.server_context("example.test")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_long_host_name_gets_a_leaf(ca: CertificateAuthority, leaves: LeafCache) -> None:
    host = ".".join(["a" * 60] * 3) + ".test"  # longer than a CN may be
    with handshake(leaves.server_context(host), client_trusting(ca), host) as conn:
        assert peer_cert(conn).subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []


def test_cache_returns_the_same_context(leaves: LeafCache) -> None:
    ctx = leaves.server_context("example.test")
    assert leaves.server_context("example.test") is ctx
    assert leaves.server_context("EXAMPLE.test.") is ctx  # normalised before the lookup
    assert leaves.server_context("other.test") is not ctx


def test_cache_is_lru_bounded(ca: CertificateAuthority) -> None:
    leaves = LeafCache(ca, max_entries=2)
    a = leaves.server_context("a.test")
    b = leaves.server_context("b.test")
    assert leaves.server_context("a.test") is a  # a is now the most recent
    leaves.server_context("c.test")  # evicts b
    assert len(leaves) == 2
    assert leaves.server_context("a.test") is a
    assert leaves.server_context("b.test") is not b


def test_bad_host_is_refused(leaves: LeafCache) -> None:
    with pytest.raises(NetworkError):
        leaves.server_context("evil.test/path")


def test_leaf_issuing_is_fast(leaves: LeafCache) -> None:
    start = time.perf_counter()
    for i in range(50):
        leaves.server_context(f"host{i}.example.test")
    per_leaf = (time.perf_counter() - start) / 50
    assert per_leaf < 0.05, f"{per_leaf * 1000:.1f} ms per leaf context"


# -- upstream ------------------------------------------------------------------------------------


@pytest.fixture
def trustme_server(tmp_path: Path):
    """A TLS server on loopback with a trustme certificate; yields (port, ca file)."""
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(raw, server_side=True) as conn:
                    conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], ca_file
    stop.set()
    socket.create_connection(listener.getsockname(), timeout=10).close()  # wake accept()
    thread.join(10)
    listener.close()


def _connect(ctx: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        return conn.recv(2)


def test_upstream_context_with_extra_ca_verifies(trustme_server) -> None:
    port, ca_file = trustme_server
    ctx = upstream_context([ca_file])
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED
    assert _connect(ctx, port) == b"ok"


def test_upstream_context_without_the_ca_fails(trustme_server) -> None:
    port, _ = trustme_server
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(upstream_context(), port)


def test_upstream_ca_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(NetworkError, match=str(missing)):
        upstream_context([missing])
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(NetworkError) as err:
        upstream_context([str(garbage)])
    assert str(garbage) in str(err.value) and "\n" not in str(err.value)
