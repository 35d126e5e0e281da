"""Secret env values at rest: sealed in the stored request, dropped once the job has ended.

A queued job must keep its secret env values until a worker starts it (also across a daemon
restart), but a database file is copied, dumped into bug reports and backed up. So the store
keeps each value named in ``secret_env`` sealed with AES-GCM under a key held beside the
database (``dbfile.load_key``), bound to its env name, and replaces it by ``HIDDEN`` when the job
reaches a terminal state: a finished job's row holds no secret at all, not even sealed.

Pure (dicts in, dicts out) so that every store (SQLite now, PostgreSQL later) does the same.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

PREFIX = "nixcell-sealed:1:"  # a sealed value as stored
HIDDEN = "<secret>"  # what a finished job's secret values become (and what the API shows)
_NONCE = 12


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request to store: secret env values sealed, everything else as it was."""
        return _map_secrets(request, self._seal_one)

    def unseal(self, request: dict[str, Any], job_id: int) -> dict[str, Any]:
        """The stored request with its secret values readable again; one that does not unseal
        (another key, a damaged row) becomes ``HIDDEN`` and is logged by name, never by value."""

        def one(name: str, value: str) -> str:
            if not value.startswith(PREFIX):
                return value  # HIDDEN already (the job ended)
            try:
                blob = base64.b64decode(value[len(PREFIX) :], validate=True)
                nonce, sealed = blob[:_NONCE], blob[_NONCE:]
                return self._aead.decrypt(nonce, sealed, _aad(name)).decode(
                    "utf-8", "surrogatepass"
                )
            except (InvalidTag, ValueError, binascii.Error):
                log.warning(
                    "job %d: secret env %s does not unseal (store key changed?)", job_id, name
                )
                return HIDDEN

        return _map_secrets(request, one)

    def _seal_one(self, name: str, value: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8", "surrogatepass"), _aad(name))
        return PREFIX + base64.b64encode(nonce + sealed).decode()


def _aad(name: str) -> bytes:
    return name.encode("utf-8", "surrogatepass")  # a value moved to another name fails


def hide(request: dict[str, Any]) -> dict[str, Any]:
    """The request with every secret env value replaced by ``HIDDEN`` (for a finished job)."""
    return _map_secrets(request, lambda _name, _value: HIDDEN)


def _map_secrets(request: dict[str, Any], change: Any) -> dict[str, Any]:
    names = request.get("secret_env")
    env = request.get("env")
    if not isinstance(names, list) or not isinstance(env, dict):
        return request
    secret = {n for n in names if isinstance(n, str) and isinstance(env.get(n), str)}
    if not secret:
        return request
    new_env = {k: (change(k, v) if k in secret else v) for k, v in env.items()}
    return {**request, "env": new_env}
