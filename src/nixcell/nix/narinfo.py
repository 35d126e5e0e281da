"""Nix's binary-cache formats, for a job host that serves its own store to the others
(``jobs/hostcache.py``): narinfo text, the signed fingerprint, Nix's base32, the key.

A narinfo names one store path, where its NAR is, the NAR's hash and size, its references and
a signature over ``1;PATH;NARHASH;NARSIZE;REF,REF`` by an ed25519 key. Nix checks the signature
against ``trusted-public-keys`` before it downloads anything, and the NAR's hash after: a
wrong byte anywhere is refused by the fetching host's nix, not by us.

Cluster hosts need no key management of their own: the signing key is derived from the
cluster's shared ``store_key`` (HMAC, one label), so every host signs with, and trusts, the
same key; whoever holds the store_key is a host of the cluster anyway (docs/scale-out.md). The
password a host presents is derived from it too, one per cache address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

_B32 = "0123456789abcdfghijklmnpqrsvwxyz"
_SIGNING = b"nixcell cluster binary cache signing key v1"
_PASSWORD = b"nixcell cluster binary cache password v1"


def nix_base32(data: bytes) -> str:
    """Nix's base32 (its own alphabet, least significant bits first, no padding)."""
    bits = len(data) * 8
    length = (bits + 4) // 5
    out = []
    for n in range(length - 1, -1, -1):
        b = n * 5
        i, j = divmod(b, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        out.append(_B32[c & 0x1F])
    return "".join(out)


def sha256_of_sri(sri: str) -> str:
    """``sha256-BASE64`` (nix path-info --json) as ``sha256:BASE32`` (narinfo, fingerprint)."""
    algo, _, b64 = sri.partition("-")
    if algo != "sha256" or not b64:
        raise ValueError(f"not a sha256 hash: {sri!r}")
    digest = base64.b64decode(b64, validate=True)
    if len(digest) != 32:
        raise ValueError(f"not a sha256 hash: {sri!r}")
    return "sha256:" + nix_base32(digest)


@dataclass(frozen=True)
class SigningKey:
    name: str
    private: Ed25519PrivateKey

    @classmethod
    def for_cluster(cls, store_key: bytes) -> SigningKey:
        seed = hmac.new(store_key, _SIGNING, hashlib.sha256).digest()
        private = Ed25519PrivateKey.from_private_bytes(seed)
        raw = _public_raw(private)
        return cls("nixcell-cluster-" + hashlib.sha256(raw).hexdigest()[:12], private)

    @property
    def public(self) -> str:
        """``NAME:BASE64``, the form of ``trusted-public-keys``."""
        return f"{self.name}:{base64.b64encode(_public_raw(self.private)).decode()}"

    def sign(self, fingerprint: str) -> str:
        signature = self.private.sign(fingerprint.encode())
        return f"{self.name}:{base64.b64encode(signature).decode()}"


def cluster_password(store_key: bytes, cache_url: str) -> str:
    """What a host presents to the cache at ``cache_url`` (HTTP basic auth, through nix's netrc
    file): one per cache address, so a password sent to a wrong address (a forged job row, another
    cache on the same host name) opens no real host's cache."""
    return hmac.new(store_key, _PASSWORD + b"\0" + cache_url.encode(), hashlib.sha256).hexdigest()


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def narinfo(info: dict[str, object], key: SigningKey) -> str:
    """The narinfo of one path from its ``nix path-info --json`` entry; its NAR is served
    uncompressed at ``nar/HASH.nar``."""
    path = str(info["path"])
    nar_hash = sha256_of_sri(str(info["narHash"]))
    size = int(info["narSize"])  # type: ignore[call-overload]
    refs = sorted(str(r) for r in info.get("references") or [])  # type: ignore[union-attr]
    fingerprint = f"1;{path};{nar_hash};{size};{','.join(refs)}"
    lines = [
        f"StorePath: {path}",
        f"URL: nar/{path[len('/nix/store/') :][:32]}.nar",
        "Compression: none",
        f"NarHash: {nar_hash}",
        f"NarSize: {size}",
        "References: " + " ".join(r[len("/nix/store/") :] for r in refs),
    ]
    deriver = info.get("deriver")
    if isinstance(deriver, str) and deriver.startswith("/nix/store/"):
        lines.append(f"Deriver: {deriver[len('/nix/store/') :]}")
    lines.append(f"Sig: {key.sign(fingerprint)}")
    return "\n".join(lines) + "\n"
