"""Closures from the submitting host: each cluster host may serve its Nix store as a binary
cache to the others (``[server] cache_url``), and a host that runs a job fetches what it lacks
from the host that took the job's submit.

Serving (``/nix-cache/…`` on the API's listeners): ``nix-cache-info``, ``HASH.narinfo`` and
``nar/HASH.nar`` (``nix-store --dump``, uncompressed), for the store paths this host realised
for cells only (the closures of its package set and of the resolutions its own jobs made: what
its cells could see anyway), never the rest of its store. Every request needs the password of
this cache's address (HTTP basic auth, derived from the shared ``store_key`` and ``cache_url``);
narinfos are signed with the cluster's key, derived from it too (``nix/narinfo.py``). The
fetching host's nix checks both the signature and the NAR's hash: a host serving wrong bytes
gets them refused. At most ``DUMPS`` NARs are sent at once (a 503 beyond), narinfos are kept
(store paths never change), and the servable set is computed by one request at a time.

Fetching: the host that takes a submit writes its ``cache_url`` into the job (``via_cache``, a
field clients cannot set). The host that runs the job adds that cache, the cluster's public key
and a netrc file (the host's own netrc, after an entry for that cache's host with the password of
that address) to the job's nix calls through ``resolve.JOB_CACHES``: a context variable, so
concurrent jobs' nix calls do not share them.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hmac
import json
import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from nixcell.jobs.config import cache_url_problem
from nixcell.nix.narinfo import SigningKey, cluster_password, narinfo
from nixcell.nix.storeroot import physical, store_args

log = logging.getLogger(__name__)

_HASH = re.compile(r"[0-9abcdfghijklmnpqrsvwxyz]{32}")
_FRESH = 10.0  # seconds a computed set of servable paths is kept
_LOGIN = "nixcell"
DUMPS = 4  # NARs sent at once
_INFOS = 20_000  # narinfos kept


class HostCache:
    """This host's cache (serving) and the submitting hosts' caches (fetching)."""

    def __init__(self, config: Any, store_key: bytes) -> None:
        self.root: str | None = config.nix_root
        self.key = SigningKey.for_cluster(store_key)
        self._store_key = store_key
        self.serve_at(config.cache_url)
        self._netrc = os.path.join(config.state_dir, "cache.netrc")
        self._machines: dict[str, str] = {}  # host name -> the password of its cache address
        self._lock = threading.Lock()
        self._servable: tuple[float, dict[str, str]] = (0.0, {})
        self._refresh = threading.Lock()  # one computation of the servable set at a time
        self._resolved: set[str] = set()  # the env paths this host's jobs resolved
        self._infos: dict[str, dict[str, Any]] = {}
        self._dumps = threading.BoundedSemaphore(DUMPS)

    # -- fetching ----------------------------------------------------------------------------
    def for_job(self, request: Any) -> tuple[tuple[str, ...], tuple[str, ...], str | None]:
        """What the job's nix calls add (``resolve.JOB_CACHES``): the submitting host's cache,
        unless it is this host's own or not a cache address (a row another host wrote)."""
        via = getattr(request, "via_cache", None)
        if not via or via == self.url:
            return ((), (), None)
        if cache_url_problem(via) is not None:
            log.warning("ignoring the job's submitting-host cache %r: not a cache URL", via[:200])
            return ((), (), None)
        machine = urlsplit(via).hostname or ""
        others = os.environ.get("NIXCELL_SUBSTITUTERS", "").split()
        if any(urlsplit(u).hostname == machine for u in others):  # netrc has no ports
            log.warning(
                "not fetching from the submitting host's cache %s: one of this host's "
                "substituters has the same host name, and the cache's password would reach it",
                via,
            )
            return ((), (), None)
        return ((via,), (self.key.public,), self._netrc_for(via))

    def serve_at(self, url: str | None) -> None:
        """Serve at this address (a SIGHUP may change it), or not at all (None: 404s)."""
        self.url = url
        self._password = cluster_password(self._store_key, url) if url else None

    def note_resolved(self, paths: Any) -> None:
        """A closure this host's job resolved: its paths may be served (``servable``)."""
        with self._lock:
            self._resolved.update(str(p) for p in paths)

    def _netrc_for(self, via: str) -> str:
        """The job's netrc: an entry for the cache's host (the password of that address; netrc
        has no ports: the last via cache seen on a host name wins), then the host's own."""
        machine = urlsplit(via).hostname or ""
        password = cluster_password(self._store_key, via)
        with self._lock:
            if self._machines.get(machine) != password:
                self._machines[machine] = password
                text = "".join(
                    f"machine {m} login {_LOGIN} password {p}\n"
                    for m, p in sorted(self._machines.items())
                )
                text += _host_netrc()
                tmp = f"{self._netrc}.{os.getpid()}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, self._netrc)
        return self._netrc

    # -- serving -----------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [
            Route("/nix-cache/nix-cache-info", self._info, methods=["GET", "HEAD"]),
            Route("/nix-cache/{name}", self._narinfo, methods=["GET", "HEAD"]),
            Route("/nix-cache/nar/{name}", self._nar, methods=["GET", "HEAD"]),
        ]

    def authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            login, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if self._password is None:
            return False
        expected = f"{_LOGIN}:{self._password}".encode()
        return hmac.compare_digest(f"{login}:{password}".encode(), expected)

    async def _info(self, request: Request) -> Response:
        if self.url is None:
            return _missing()
        if not self.authorized(request):
            return _unauthorized()
        return PlainTextResponse("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")

    async def _narinfo(self, request: Request) -> Response:
        if self.url is None:
            return _missing()
        if not self.authorized(request):
            return _unauthorized()
        name = request.path_params["name"]
        path = await self._lookup(name, ".narinfo")
        if path is None:
            return _missing()
        info = await asyncio.to_thread(self._path_info, path)
        if info is None:
            return _missing()
        return Response(narinfo(info, self.key), media_type="text/x-nix-narinfo")

    async def _nar(self, request: Request) -> Response:
        if self.url is None:
            return _missing()
        if not self.authorized(request):
            return _unauthorized()
        path = await self._lookup(request.path_params["name"], ".nar")
        if path is None:
            return _missing()
        if request.method == "HEAD":
            return Response(media_type="application/x-nix-nar")
        if not self._dumps.acquire(blocking=False):
            return PlainTextResponse(
                "busy: try again\n", status_code=503, headers={"Retry-After": "1"}
            )
        return StreamingResponse(self._dump(path), media_type="application/x-nix-nar")

    async def _lookup(self, name: str, suffix: str) -> str | None:
        """The servable store path of ``HASH{suffix}`` (exactly: 32 of Nix's base32)."""
        if not name.endswith(suffix) or not _HASH.fullmatch(name[: -len(suffix)]):
            return None
        servable = await asyncio.to_thread(self.servable)
        return servable.get(name[: -len(suffix)])

    def servable(self) -> dict[str, str]:
        """hash part -> store path of every path this host realised for cells (kept 10 s)."""
        with self._refresh:
            made, found = self._servable
            if time.monotonic() - made < _FRESH:
                return found
            found = {p[11:43]: p for p in self._closure(self._tops())}
            self._servable = (time.monotonic(), found)
            return found

    def _tops(self) -> list[str]:
        tops: list[str] = []
        try:
            from nixcell.nix.offline import find_set

            found = find_set()
            if found is not None:
                tops += [str(p) for p in dict(found.packages).values()]
        except Exception as exc:  # (no set: only the resolutions)
            log.debug("no offline set to serve: %s", exc)
        with self._lock:
            tops += sorted(self._resolved)
        here = [t for t in tops if t.startswith("/nix/store/")]
        return [t for t in here if os.path.lexists(physical(self.root, t))]

    def _closure(self, tops: list[str]) -> list[str]:
        if not tops:
            return []
        proc = subprocess.run(
            ["nix-store", *store_args(self.root), "-qR", *sorted(set(tops))],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:  # (a path gone or invalid: serve nothing rather than guess)
            log.warning("cannot list the store paths to serve: %s", proc.stderr.strip()[-300:])
            return []
        return proc.stdout.split()

    def _path_info(self, path: str) -> dict[str, Any] | None:
        """``nix path-info --json`` of a path, kept (a store path's contents never change)."""
        if path in self._infos:
            return self._infos[path]
        info = self._query_info(path)
        if info is not None and len(self._infos) < _INFOS:
            self._infos[path] = info
        return info

    def _query_info(self, path: str) -> dict[str, Any] | None:
        proc = subprocess.run(
            ["nix", "--extra-experimental-features", "nix-command", *store_args(self.root),
             "path-info", "--json", path],
            capture_output=True,
            text=True,
        )  # fmt: skip
        if proc.returncode != 0:
            return None
        try:
            entries = json.loads(proc.stdout)
            return entries[0] if entries and entries[0].get("path") == path else None
        except (ValueError, AttributeError, IndexError, TypeError):
            return None

    def _dump(self, path: str) -> Iterator[bytes]:
        """The NAR, as ``nix-store --dump`` writes it; its slot (``DUMPS``) is given back when
        it ends, fails, or is dropped unread (a client gone before the first byte)."""
        try:
            return _Dump(physical(self.root, path), self._dumps.release)
        except BaseException:
            self._dumps.release()
            raise


class _Dump:
    """A sync iterator (Starlette reads it on its thread pool: no asyncio child watcher)."""

    def __init__(self, source: str, release: Any) -> None:
        self._release = release
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            ["nix-store", "--dump", source], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )

    def __iter__(self) -> _Dump:
        return self

    def __next__(self) -> bytes:
        proc = self._proc
        chunk = proc.stdout.read(1 << 16) if proc is not None and proc.stdout else b""
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.kill()
            if proc.stdout is not None:
                proc.stdout.close()
            proc.wait()
        finally:
            self._release()

    def __del__(self) -> None:
        self.close()


def _host_netrc() -> str:
    """The host's own netrc (nix's ``netrc-file`` as nix.conf and NIX_CONFIG set it,
    ``/etc/nix/netrc`` by default): a job's netrc file replaces it for that job's nix calls, so
    it is copied in after our entries."""
    path = _netrc_setting()
    if not path:
        return ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        text = f.read(1 << 20).decode("utf-8", "replace")
    return text if text.endswith("\n") or not text else text + "\n"


def _netrc_setting() -> str:
    proc = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command", "show-config", "--json"],
        capture_output=True,
        text=True,
    )
    try:
        return str(json.loads(proc.stdout)["netrc-file"]["value"])
    except (ValueError, KeyError, TypeError):
        return os.path.join(os.environ.get("NIX_CONF_DIR", "/etc/nix"), "netrc")


def _unauthorized() -> Response:
    return PlainTextResponse(
        "the cluster's cache password is required\n",
        status_code=401,
        headers={"WWW-Authenticate": 'Basic realm="nixcell cluster cache"'},
    )


def _missing() -> Response:
    return PlainTextResponse("not in this host's cache\n", status_code=404)


def context_for(cache: HostCache | None, request: Any) -> contextvars.Token | None:
    """Set ``resolve.JOB_CACHES`` for this job's resolution (None: nothing to add)."""
    from nixcell.nix.resolve import JOB_CACHES

    if cache is None:
        return None
    extra = cache.for_job(request)
    return JOB_CACHES.set(extra) if extra[0] else None
