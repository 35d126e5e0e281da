"""Connections of the PostgreSQL job store: a small pool, one transaction per use, and errors
turned into one-line ``StateError``s that never carry the DSN's password.

Own pool (no psycopg_pool dependency): at most ``size`` connections open at once, idle ones
kept. An idle connection whose socket is readable has been closed by the server (a restart, a
terminated backend: the server says so and hangs up) and is replaced before use, so that costs no
caller an error; one idle for long is pinged (a silent network cut). A connection that failed in
use is dropped with every idle one (they most likely died together).
"""

from __future__ import annotations

import contextlib
import re
import select
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from nixcell.errors import StateError

_PING_AFTER = 30.0  # seconds idle before a pooled connection is pinged
RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0)  # ~12 s of a database away, then give up


class StoreUnavailable(StateError):
    """The database could not be reached or the connection dropped: the change may be tried
    again (every store write that callers retry is a compare-and-set or checks what landed)."""


def retrying(work: Any, *args: Any, **kw: Any) -> Any:
    """``work(*args, **kw)``, tried again while the store is unavailable (a restart, a
    dropped connection), for about ``sum(RETRY_DELAYS)`` seconds."""
    for delay in (*RETRY_DELAYS, None):
        try:
            return work(*args, **kw)
        except StoreUnavailable:
            if delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


_WAIT = 30.0  # seconds a caller waits for a free connection


def redact(dsn: str) -> str:
    """The DSN as shown in messages: ``postgresql://user@host:port/db``, no password."""
    import psycopg.conninfo

    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except Exception:  # unparsable: show its shape without anything after "scheme://user"
        found = re.match(r"^(postgres(?:ql)?://)([^:@/]*)", dsn)
        return f"{found[1]}{found[2]}@…" if found else "(an unreadable DSN)"
    user = parts.get("user")
    host = parts.get("host") or "localhost"
    port = parts.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{user + '@' if user else ''}{where}/{parts.get('dbname') or ''}"


def _secrets_of(dsn: str) -> list[str]:
    """The password in the DSN (every spelling of it) to scrub from messages."""
    found: list[str] = []
    with contextlib.suppress(Exception):
        import psycopg.conninfo

        password = psycopg.conninfo.conninfo_to_dict(dsn).get("password")
        if password:
            found.append(str(password))
    uri = dsn.startswith(("postgresql://", "postgres://"))
    patterns = [r"://[^:@/]*:([^@]*)@"]
    if uri:  # ?password=... (the key may be percent-encoded too): up to the next & or #
        query = dsn.partition("?")[2].partition("#")[0]
        for pair in query.split("&"):
            key, eq, value = pair.partition("=")
            if eq and urllib.parse.unquote(key).strip().lower() == "password" and value:
                found.extend({value, urllib.parse.unquote(value)})
    else:
        patterns.append(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")
    for pattern in patterns:
        for m in re.findall(pattern, dsn):
            found.extend(v for v in (m, urllib.parse.unquote(m), m.strip("'")) if v)
    return sorted(set(found), key=len, reverse=True)


def once_more(read: Any) -> Any:
    """A read asked a second time when its connection turned out dead (the pool then drops
    every idle one, so the second ask gets a fresh connection). Reads only: they change
    nothing, so asking twice is always safe; no sleep (the API calls some on its loop)."""
    import functools

    @functools.wraps(read)
    def again(*args: Any, **kw: Any) -> Any:
        try:
            return read(*args, **kw)
        except StoreUnavailable:
            return read(*args, **kw)

    return again


class Pool:
    def __init__(self, dsn: str, *, size: int = 8) -> None:
        self.dsn = dsn
        self.shown = redact(dsn)
        self._secrets = _secrets_of(dsn)
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[tuple[Any, float]] = []
        self._closed = False

    def error(self, what: str, exc: BaseException) -> StateError:
        """A one-line StateError about ``exc``; the password never in it. A connection that
        could not be made or dropped is ``StoreUnavailable`` (worth trying again)."""
        import psycopg

        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        for secret in self._secrets:
            text = text.replace(secret, "***")
        away = what in ("cannot connect", "connection lost") or isinstance(
            exc, psycopg.OperationalError
        )
        kind = StoreUnavailable if away else StateError
        return kind(f"job store {self.shown}: {what}: {text}")

    def connect(self, *, autocommit: bool = False) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10)
        except psycopg.Error as exc:
            raise self.error("cannot connect", exc) from None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A connection in a fresh transaction, committed at the end (rolled back on error).
        psycopg errors become StateError; the connection goes back to the pool."""
        import psycopg

        if not self._slots.acquire(timeout=_WAIT):
            raise StoreUnavailable(f"job store {self.shown}: no free connection after {_WAIT:.0f}s")
        try:
            conn = self._take()
            try:
                yield conn
                conn.commit()
            except BaseException as exc:
                broken = conn.closed or conn.broken
                if not broken:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        broken = True
                if broken:
                    self._drop(conn)
                    conn = None
                if isinstance(exc, psycopg.Error):
                    what = "connection lost" if broken else "query failed"
                    raise self.error(what, exc) from None
                raise
            finally:
                if conn is not None:
                    self._give(conn)
        finally:
            self._slots.release()

    def _take(self) -> Any:
        import psycopg

        while True:
            with self._lock:
                if self._closed:
                    raise StateError("the job store is closed")
                conn, since = self._idle.pop() if self._idle else (None, 0.0)
            if conn is None:
                return self.connect()
            if not _alive(conn):
                self._close(conn)
                continue
            if time.monotonic() - since < _PING_AFTER:
                return conn
            try:  # opens the caller's transaction; nothing of theirs is lost if it fails
                conn.execute("SELECT 1")
                return conn
            except psycopg.Error:
                self._drop(conn)

    @staticmethod
    def _close(conn: Any) -> None:
        with contextlib.suppress(Exception):
            conn.close()

    def _give(self, conn: Any) -> None:
        with self._lock:
            if not self._closed and not conn.closed:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _drop(self, conn: Any) -> None:
        """``conn`` failed: close it and every idle one (a restarted server killed them all)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c, _ in [(conn, 0.0), *idle]:
            with contextlib.suppress(Exception):
                c.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            with contextlib.suppress(Exception):
                conn.close()


def _alive(conn: Any) -> bool:
    """An idle connection the server has not hung up: nothing to read on its socket (it sends
    nothing unasked to a connection that does not LISTEN, but its goodbye and EOF)."""
    if conn.closed or conn.broken:
        return False
    try:  # poll, not select: a daemon's fds pass FD_SETSIZE
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN | select.POLLPRI)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
