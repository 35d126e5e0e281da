"""TLS for the interception proxy: a per-user local CA, per-host leaf contexts, upstream trust.

The cell trusts exactly one extra certificate, ``ca.pem``; the proxy presents a leaf signed by it
for whatever host the cell asked for, and talks to the real host with a normal verifying client.
The CA key lives in the user's state dir (0600, dir 0700) and is never handed to a cell: only
``cert_pem`` is public. EC P-256 keeps issuing cheap (about a millisecond per leaf), and one leaf
key is shared by all leaves because only the certificate needs to differ per host.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import getpass
import os
import socket
import ssl
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nixcell import paths
from nixcell.errors import NetworkError
from nixcell.fsio import write_atomic
from nixcell.net.hosts import BadHost, normalize_host, parse_ip

CERT_NAME = "ca.pem"
KEY_NAME = "ca.key"
_LOCK_NAME = ".lock"
CA_DAYS = 3650
LEAF_DAYS = 30
_BACKDATE = dt.timedelta(hours=1)  # tolerate a cell clock slightly behind the host's
ALPN = ["http/1.1"]  # the proxy speaks HTTP/1.1 only (h11): never let a peer pick h2


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _ca_common_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"nixcell local CA ({user}@{socket.gethostname()})"[:64]


class CertificateAuthority:
    """The local signing CA. Build it with ``load_or_create``; the key stays in a private attr."""

    __slots__ = ("_key", "cert", "cert_path", "cert_pem")

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, cert_path: Path
    ) -> None:
        self._key = key
        self.cert = cert
        self.cert_path = cert_path
        self.cert_pem: bytes = cert.public_bytes(serialization.Encoding.PEM)

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.cert.subject.rfc4514_string()!r}, {self.cert_path})"

    @classmethod
    def load_or_create(cls, directory: Path | None = None) -> CertificateAuthority:
        """Load the CA from ``directory`` (default ``<state>/ca``), creating it on first use.

        Creation and loading run under an flock so concurrent nixcell processes agree on one CA;
        files are written to a temp name and renamed, so a crash never leaves a torn file.
        """
        directory = Path(directory) if directory is not None else paths.state_dir() / "ca"
        _prepare_dir(directory)
        lock_fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            return cls._load_or_create_locked(directory)
        finally:
            os.close(lock_fd)  # closing releases the flock

    @classmethod
    def _load_or_create_locked(cls, directory: Path) -> CertificateAuthority:
        key_path, cert_path = directory / KEY_NAME, directory / CERT_NAME
        key = _read_key(key_path)
        if key is None:  # a cert without its key is useless: start over
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomic(key_path, _key_pem(key), mode=0o600, durable=True)
            cert = None
        else:
            cert = _read_cert(cert_path)
        if cert is not None:
            if _spki(cert.public_key()) != _spki(key.public_key()):
                raise NetworkError(
                    f"{cert_path} does not match {key_path}: remove {directory} for a new CA"
                )
            if cert.not_valid_after_utc < _now() + dt.timedelta(days=LEAF_DAYS):
                cert = None  # expiring: reissue with the same key so trust stays stable
        if cert is None:
            cert = _issue_ca_cert(key)
            write_atomic(
                cert_path,
                cert.public_bytes(serialization.Encoding.PEM),
                mode=0o644,
                durable=True,
            )
        return cls(key, cert, cert_path)

    def issue_leaf(self, host: str, public_key: ec.EllipticCurvePublicKey) -> x509.Certificate:
        """A short-lived serverAuth certificate for ``host`` (already normalised)."""
        now = _now()
        not_after = min(now + dt.timedelta(days=LEAF_DAYS), self.cert.not_valid_after_utc)
        addr = parse_ip(host)
        san: x509.GeneralName = x509.IPAddress(addr) if addr else x509.DNSName(host)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, host)] if len(host) <= 64 else []
        )
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=not subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        return builder.sign(self._key, hashes.SHA256())


class LeafCache:
    """TLS server contexts per host, LRU-bounded; each presents a fresh leaf signed by the CA.

    Entries are rebuilt once half their validity has passed, so a long-running cell never meets an
    expired leaf. Safe to call from several threads.
    """

    def __init__(self, ca: CertificateAuthority, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._ca = ca
        self._max = max_entries
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = _key_pem(self._key)
        self._entries: OrderedDict[str, tuple[ssl.SSLContext, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def server_context(self, host: str) -> ssl.SSLContext:
        """The server-side context to wrap the cell's connection to ``host`` with."""
        try:
            name = normalize_host(host)
        except BadHost as exc:
            raise NetworkError(f"cannot issue a certificate: {exc}") from None
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry[1] > now:
                self._entries.move_to_end(name)
                return entry[0]
        ctx = self._build(name)
        with self._lock:
            self._entries[name] = (ctx, now + LEAF_DAYS * 86400 / 2)
            self._entries.move_to_end(name)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return ctx

    def _build(self, host: str) -> ssl.SSLContext:
        cert = self._ca.issue_leaf(host, self._key.public_key())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(ALPN)
        _load_chain(ctx, cert.public_bytes(serialization.Encoding.PEM) + self._key_pem)
        return ctx


def upstream_context(extra_ca_files: Sequence[str | Path] = ()) -> ssl.SSLContext:
    """A verifying client context for the proxy's upstream connections.

    Trusts the system store plus ``extra_ca_files`` (``--upstream-ca``, e.g. a corporate proxy's CA)
    and checks host names; ALPN offers HTTP/1.1 only because that is all the proxy relays.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    from nixcell.userfile import read_input

    for path in extra_ca_files:  # read by us: a FIFO or /dev/zero must not hang OpenSSL
        data = read_input(path, "cannot load upstream CA file", error=NetworkError)
        try:
            pem = data.decode("ascii") if b"-----BEGIN" in data else None
            ctx.load_verify_locations(cadata=pem if pem is not None else data)
        except (UnicodeDecodeError, ssl.SSLError) as exc:
            reason = "not a PEM or DER certificate"
            if isinstance(exc, ssl.SSLError) and exc.reason:  # "[X509: NO_CERT...]" -> words
                reason = exc.reason.lower().replace("_", " ")
            raise NetworkError(f"cannot load upstream CA file {path}: {reason}") from None
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# -- helpers -------------------------------------------------------------------------------------


def _prepare_dir(directory: Path) -> None:
    """Create the CA dir 0700, or tighten it; refuse a dir another user controls."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = directory.stat()
    except OSError as exc:
        raise NetworkError(f"cannot create CA directory {directory}: {exc.strerror}") from None
    if st.st_uid != os.getuid():
        raise NetworkError(f"CA directory {directory} is owned by uid {st.st_uid}, not by you")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(directory, 0o700)


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NetworkError(f"cannot read CA key {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_uid != os.getuid():
            raise NetworkError(f"CA key {path} is owned by uid {st.st_uid}, not by you: refusing")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise NetworkError(f"CA key {path} is readable by others (mode {mode:04o}): chmod 600")
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise NetworkError(f"CA key {path} is not a readable PEM key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise NetworkError(f"CA key {path} is not an EC key")
    return key


def _read_cert(path: Path) -> x509.Certificate | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NetworkError(f"cannot read CA certificate {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        return None  # torn or foreign: reissue from the key


def _issue_ca_cert(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    now = _now()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nixcell"),
            x509.NameAttribute(NameOID.COMMON_NAME, _ca_common_name()),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _key_usage(
    *, digital_signature: bool = False, key_cert_sign: bool = False, crl_sign: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _spki(public_key: object) -> bytes:
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_chain(ctx: ssl.SSLContext, pem: bytes) -> None:
    """``load_cert_chain`` wants a path: give it an anonymous memfd, never a file on disk."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("nixcell-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="nixcell-leaf-") as tmp:  # mkdtemp: 0700, ours only
        path = Path(tmp) / "leaf.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)
