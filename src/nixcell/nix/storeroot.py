"""A Nix root of this host's own: a chroot store at ``ROOT``, whose ``/nix/store/X`` is the file
``ROOT/nix/store/X`` (Nix's ``--store ROOT``, i.e. ``local?root=ROOT``).

A job host of a cluster (``[server] nix_root``) or a user (``NIXCELL_NIX_ROOT``) keeps its
closures there rather than in the machine's ``/nix/store``: every nix call of the engine gets
``--store ROOT``, and a cell sees each closure path ``ROOT/nix/store/X`` bound at ``/nix/store/X``.
Store paths name the same things in every root (same pin, same paths), so a closure resolved,
copied or substituted into one root is the same closure as anywhere else.

Store symlinks are absolute (``/nix/store/...``): read on the host, they would lead into the
machine's store, not the root's. ``logical_real`` resolves them the way the cell will see them,
inside the root, and the physical file is only ever reached through ``physical``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import stat
from collections.abc import Iterator

from nixcell.errors import UsageError

ENV = "NIXCELL_NIX_ROOT"
STORE_DIR = "/nix/store"
_MAX_LINKS = 40
# nix reads ``--store`` as a URI when it can (``?`` starts parameters, ``%`` escapes): a root
# is spelled only with characters every reader (nix, bwrap, docker, systemd) takes literally
_PLAIN = re.compile(r"/[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*")
# what nix makes below a root; ``nix/store`` is nix's own 1775 (build users add paths there)
_BELOW = ("nix", "nix/var", "nix/var/nix", "nix/var/nix/db", "nix/var/nix/gcroots")


def nix_root() -> str | None:
    """The root this process's nix calls and cells use (``NIXCELL_NIX_ROOT``), checked; None:
    the machine's own store."""
    value = os.environ.get(ENV, "")
    return check_root(value) if value else None


def check_root(value: str) -> str:
    """An absolute, plain path to a directory this uid owns and only it may write, reached
    through no symbolic link (the cells' closures are bound from below it: whoever could write
    there could change what every cell runs). Missing: made (0755, its parent must exist)."""
    where = f"Nix root {value!r}"
    if not value.startswith("/") or "\0" in value or any(c in value for c in "\n\r\t"):
        raise UsageError(f"{where}: must be an absolute path")
    if posixpath.normpath(value) != value.rstrip("/") or value.rstrip("/") in ("", "/nix"):
        raise UsageError(f"{where}: must be a plain absolute path (no '.', '..', '//' or '/')")
    value = value.rstrip("/")
    if not _PLAIN.fullmatch(value):
        raise UsageError(
            f"{where}: must be a plain absolute path of letters, digits and '._+-' (nix would "
            "read '?', '%' and the like in it as a store URI's)"
        )
    from nixcell.plancheck import first_link

    link = first_link(value)
    if link is not None:
        raise UsageError(f"{where}: {link} is a symbolic link (name the real path)")
    try:
        os.mkdir(value, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UsageError(f"{where}: cannot make it: {exc.strerror}") from None
    st = os.lstat(value)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{where}: is not a directory")
    if st.st_uid != os.geteuid():
        raise UsageError(f"{where}: is owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o022:
        raise UsageError(f"{where}: is writable by group or others (chmod go-w)")
    problem = _unsafe_above(value) or _unsafe_below(value)
    if problem is not None:
        raise UsageError(f"{where}: {problem}")
    if os.geteuid() == 0:  # a root-run cell is another uid: it must reach the store's files
        closed = _first_closed(value)
        if closed is not None:
            raise UsageError(
                f"{where}: {closed} is not searchable by others, and cells run as their own "
                "uid (chmod o+x, or put the root elsewhere)"
            )
    return value


def _unsafe_above(path: str) -> str | None:
    """A directory above the root that someone else could change (rename the root away, put
    another in its place): owned by another user, or writable by others without the sticky
    bit (``/tmp`` is fine)."""
    here = path
    while here != "/":
        here = posixpath.dirname(here)
        st = os.stat(here)
        if st.st_uid not in (0, os.geteuid()):
            return f"{here} is owned by uid {st.st_uid} (whoever owns it can replace the root)"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{here} is writable by group or others (chmod go-w, or the sticky bit)"
    return None


def _unsafe_below(root: str) -> str | None:
    """nix's own directories below the root (its database, its roots), when they exist: owned
    by this user, writable by nobody else, and no symbolic link among them."""
    for part in _BELOW:
        try:
            st = os.lstat(f"{root}/{part}")
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            return f"{root}/{part} is not a directory (a symbolic link, or a file)"
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return f"{root}/{part} is writable by someone else (chmod go-w, chown)"
    return None


def _first_closed(path: str) -> str | None:
    here = ""
    for part in [p for p in path.split("/") if p]:
        here += "/" + part
        if not os.stat(here).st_mode & 0o001:
            return here
    return None


@contextlib.contextmanager
def locked(root: str, name: str) -> Iterator[None]:
    """An exclusive flock on ``ROOT/.nixcell-NAME.lock`` (between processes and threads)."""
    import fcntl

    fd = os.open(f"{root}/.nixcell-{name}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_store(root: str) -> None:
    """Make the root's store (database, roots) once, under a lock: two nix processes making a
    fresh root at the same moment race on its first directories ("File exists")."""
    import subprocess

    if has_database(root):
        return
    with locked(root, "init"):
        if not has_database(root):
            proc = subprocess.run(["nix-store", "--store", root, "--init"], capture_output=True,
                                  text=True)  # fmt: skip
            if proc.returncode != 0:
                from nixcell.errors import NixError

                raise NixError(f"cannot make the Nix store in {root}", detail=proc.stderr)


def has_database(root: str) -> bool:
    """The root's store exists (nix made its database): without it nix knows none of its paths."""
    return os.path.exists(f"{root}/nix/var/nix/db/db.sqlite")


def refuse_root(what: str) -> None:
    """Fail closed where a part reads the machine's store itself (MCP artifacts)."""
    if os.environ.get(ENV):
        raise UsageError(f"{what} take the machine's /nix/store: unset {ENV} for them")


def store_args(root: str | None) -> tuple[str, ...]:
    """What every nix call of the engine adds: ``--store ROOT`` (nothing for the machine's)."""
    return ("--store", root) if root else ()


def physical(root: str | None, path: str) -> str:
    """The host file behind the store path ``path`` (a logical ``/nix/store/...`` path)."""
    return root + path if root else path


def logical_real(root: str | None, path: str) -> str:
    """``path`` with every symbolic link resolved as the cell sees it: an absolute target is
    looked up inside the root again, never on the host. Without a root: ``os.path.realpath``."""
    if root is None:
        return os.path.realpath(path)
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = "/" + "/".join([*done, part])
        try:
            target = os.readlink(root + here)
        except OSError:  # not a link (or missing: the rest is taken as it is written)
            done.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(f"too many symbolic links below {path}")
        parts = [p for p in target.split("/") if p] + parts
        if target.startswith("/"):
            done = []
    return "/" + "/".join(done)
