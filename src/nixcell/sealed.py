"""Cache entries nixcell wrote itself, and can prove it: keyed BLAKE2b over kind, name, payload.

Why: a cache entry is trusted input — a closure decides what is bind-mounted, a BPF program what
the kernel lets through, a cached plan is a whole bwrap argv. What goes into an entry is checked
when it is written (store paths valid, program sane); the tag lets a warm run trust it without
redoing those checks (a ``nix-store --check-validity`` per run would cost milliseconds). The key
is 32 random bytes in ``<state>/cache.key`` (0600, private dir); ``nixcell gc`` deletes it, which
invalidates every entry at once. An entry is bound to its kind and file name, so a valid entry
copied to another name (other flags, other profiles) does not verify either.

Keyed BLAKE2b is a MAC by design (RFC 7693 §2.9) and, from ``_blake2``, does not load OpenSSL on
the warm path (hashing.py).
"""

from __future__ import annotations

import os
import stat

from nixcell import paths
from nixcell.errors import StateError
from nixcell.fsio import private_dir, write_atomic
from nixcell.hashing import blake2b
from nixcell.quiet import suppress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

try:
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover - other interpreters
    from hmac import compare_digest



def _warn(message: str, *args: object) -> None:
    import logging  # not on the warm path: only when an entry is refused

    if not logging.getLogger().handlers:  # the CLI fast path configures no logging
        import sys

        sys.stderr.write(f"nixcell: warning: {message % args}\n")
        return
    logging.getLogger(__name__).warning(message, *args)

MAGIC = b"nixcell-sealed-1\n"
TAG_SIZE = 32
KEY_NAME = "cache.key"
# State roots whose privacy this process checked. The key itself is read again on every use (an
# open and a 32-byte read, microseconds): a long-running nixcell (the MCP server, the job
# daemon, a test process) must not go on sealing with a key another process's `nixcell gc`
# deleted — every entry it wrote would verify for nobody else, and be ignored and rewritten
# over and over. (A stat of the key is not enough: a new key file can reuse the inode and the
# coarse timestamp of the one it replaced.)
_checked_roots: set[str] = set()


def key_path() -> Path:
    return paths.state_dir() / KEY_NAME


def _key_file() -> str:  # key_path() without pathlib (the CLI's warm path)
    return os.path.join(paths.state_root(), KEY_NAME)


def _key() -> bytes:
    """The sealing key, created on first use. The state dir must be private (StateError)."""
    root = paths.state_root()
    if root not in _checked_roots:
        private_dir(root)
        _checked_roots.add(root)
    where = os.path.join(root, KEY_NAME)
    key = _read_key(where)
    if key is None:
        fresh = os.urandom(32)
        tmp = f"{where}.{os.getpid()}.{os.urandom(4).hex()}"
        write_atomic(tmp, fresh, mode=0o600, durable=True)
        try:
            os.link(tmp, where)  # fails if a concurrent nixcell made one first: use theirs
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        key = _read_key(where)
        if key is None:
            raise StateError(f"cannot create the cache key {where}")
    return key


def _read_key(where: str) -> bytes | None:
    try:
        fd = os.open(where, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the cache key {where}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise StateError(
                f"refusing the cache key {where}: it must be a file of yours with mode 0600 "
                "(`nixcell gc` makes a new one)"
            )
        key = os.read(fd, 64)
    finally:
        os.close(fd)
    if len(key) != 32:
        raise StateError(f"the cache key {where} is damaged: `nixcell gc` makes a new one")
    return key


def forget_key() -> None:
    """Drop the key (gc): every entry sealed so far stops verifying."""
    with suppress(FileNotFoundError):
        os.unlink(_key_file())


def _tag(kind: str, name: str, payload: bytes) -> bytes:
    header = f"{kind}\0{name}\0{len(payload)}\0".encode()
    return blake2b(header + payload, key=_key(), digest_size=TAG_SIZE).digest()


def seal(kind: str, name: str, payload: bytes) -> bytes:
    return MAGIC + _tag(kind, name, payload) + payload


def unseal(kind: str, name: str, blob: bytes) -> bytes | None:
    """The payload, or None when ``blob`` was not sealed by us for exactly this kind and name."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + TAG_SIZE:
        return None
    tag = blob[len(MAGIC) : len(MAGIC) + TAG_SIZE]
    payload = blob[len(MAGIC) + TAG_SIZE :]
    return payload if compare_digest(tag, _tag(kind, name, payload)) else None


def cache_file(kind: str, name: str) -> str | None:
    """``<cache>/<kind>/<name>``, its directory private; None (logged) when that is unsafe.

    Caches are pure: an unsafe cache directory means running uncached, not failing.
    """
    directory = os.path.join(paths.cache_root(), kind)
    try:
        private_dir(directory)
    except StateError as exc:
        _warn("not using the %s cache: %s", kind, exc)
        return None
    return os.path.join(directory, name)


def load(kind: str, path: str | os.PathLike[str]) -> bytes | None:
    """A verified payload, or None (missing, unreadable, forged, damaged: logged, rebuilt)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _warn("ignoring the cached %s entry %s: %s", kind, path, exc.strerror)
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            blob = f.read()
    except OSError as exc:
        _warn("ignoring the cached %s entry %s: %s", kind, path, exc.strerror)
        return None
    payload = unseal(kind, os.path.basename(path), blob)
    if payload is None:
        _warn("ignoring the cached %s entry %s: not sealed by this nixcell", kind, path)
    return payload


def store(kind: str, path: str | os.PathLike[str], payload: bytes) -> None:
    """Seal and write ``payload``; a failure to write a cache is logged, never fatal."""
    try:
        write_atomic(path, seal(kind, os.path.basename(path), payload))
    except OSError as exc:
        _warn("cannot write the %s cache %s: %s", kind, path, exc.strerror)
