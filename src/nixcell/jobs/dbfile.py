"""The job store's files: the SQLite file, its sealing key, and the schema's versions.

Both files are created 0600 and never opened through a planted name (symlink, hard link, FIFO,
another user's file): the state dir holding them is private (``fsio.private_dir``), and these
checks make a mistake or a race there an error instead of a write elsewhere. SQLite opens the
DB by name, so the file is checked before and found to be the same inode after the connect.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import stat
import time

from nixcell.errors import StateError

log = logging.getLogger(__name__)

KEY_SIZE = 32

# Schema migrations: entry N takes user_version N to N+1. Append only; never edit a shipped one.
# Plain SQL that PostgreSQL reads the same (the scale-out store keeps these tables).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        owner_name TEXT NOT NULL,
        request TEXT NOT NULL,
        state TEXT NOT NULL,
        created REAL NOT NULL,
        started REAL,
        finished REAL,
        exit_code INTEGER,
        reason TEXT,
        host TEXT,
        cell_id TEXT,
        log_seq INTEGER NOT NULL DEFAULT 0,
        log_dropped INTEGER NOT NULL DEFAULT 0,
        event_seq INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX jobs_state ON jobs (state, id);
    CREATE INDEX jobs_owner ON jobs (owner, id);
    CREATE INDEX jobs_finished ON jobs (finished);
    CREATE TABLE events (
        job_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        time REAL NOT NULL,
        kind TEXT NOT NULL,
        state TEXT,
        detail TEXT,
        PRIMARY KEY (job_id, seq)
    );
    CREATE TABLE logs (
        job_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        time REAL NOT NULL,
        stream TEXT NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to ``SCHEMA_VERSION`` in one transaction; a newer one is refused."""
    conn.execute("BEGIN IMMEDIATE")  # two daemons opening one new file: one of them migrates
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"job store {path} has schema version {version}; this nixcell knows versions "
                f"up to {SCHEMA_VERSION} (use a newer nixcell)"
            )
        for n in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[n].split(";"):
                if statement.strip():
                    conn.execute(statement)
            log.info("job store %s: schema version %d", path, n + 1)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def prepare(path: str) -> tuple[int, int]:
    """Create the DB file 0600 (or check the one there); its (device, inode). SQLite gives its
    ``-wal``/``-shm`` files the DB's mode; planted ones are refused."""
    fd = _open_nofollow(path, os.O_RDWR, "job store")
    try:
        st = os.fstat(fd)
        check_plain(path, st, "job store")
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(f"/proc/self/fd/{fd}", 0o600)  # ours but readable by others: tighten
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            side = os.lstat(path + suffix)
        except FileNotFoundError:
            continue
        check_plain(path + suffix, side, "job store")
    return st.st_dev, st.st_ino


def check_same(path: str, inode: tuple[int, int]) -> None:
    """After SQLite opened ``path`` by name: still the file ``prepare`` checked."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise StateError(f"cannot open job store {path}: {exc.strerror}") from None
    if (st.st_dev, st.st_ino) != inode or not stat.S_ISREG(st.st_mode):
        raise StateError(f"refusing to open job store {path}: it changed while being opened")


def load_key(path: str) -> bytes:
    """The store's sealing key at ``path``: 32 random bytes, made on first use (0600). Written
    whole under a temp name and hard-linked into place, so a racing opener never reads half."""
    for attempt in range(5):
        try:  # O_NONBLOCK: a FIFO planted at the name does not hang the open
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            _make_key(path)
            continue
        except OSError as exc:
            raise _open_error(exc, "key", path) from None
        try:
            st = os.fstat(fd)
            if st.st_nlink == 2 and stat.S_ISREG(st.st_mode) and attempt < 4:
                time.sleep(0.01)  # another opener is between its link and its unlink
                continue
            check_plain(path, st, "key")
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise StateError(f"refusing to use key {path}: readable by others")
            key = os.read(fd, KEY_SIZE + 1)
        finally:
            os.close(fd)
        if len(key) != KEY_SIZE:
            raise StateError(f"refusing to use key {path}: it is not {KEY_SIZE} bytes")
        return key
    raise StateError(f"cannot read key {path}: it keeps changing")


def _make_key(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.{os.urandom(6).hex()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            pass  # another opener made it first: use theirs
        finally:
            os.unlink(tmp)
        dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        raise StateError(f"cannot create key {path}: {exc.strerror}") from None


def _open_nofollow(path: str, mode: int, what: str) -> int:
    """Create ``path`` 0600, or open the one there as an O_PATH fd, never following a link."""
    try:
        return os.open(path, mode | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise _open_error(exc, what, path) from None
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(exc, what, path) from None


def _open_error(exc: OSError, what: str, path: str) -> StateError:
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
        return StateError(f"refusing to open {what} {path}: it is a symbolic link")
    return StateError(f"cannot open {what} {path}: {exc.strerror}")


def check_plain(path: str, st: os.stat_result, what: str) -> None:
    """A regular file of ours with one link, or a one-line StateError saying what it is."""
    problem = (
        "it is a symbolic link"
        if stat.S_ISLNK(st.st_mode)
        else "it is not a regular file"
        if not stat.S_ISREG(st.st_mode)
        else f"it has {st.st_nlink} hard links"
        if st.st_nlink != 1
        else f"owned by uid {st.st_uid}, not you"
        if st.st_uid != os.geteuid()
        else None
    )
    if problem:
        raise StateError(f"refusing to open {what} {path}: {problem}")
