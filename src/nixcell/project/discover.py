"""Which project a command runs in: the nearest trusted ``nixcell.toml`` (or ``nixcage.toml``).

Imports only ``os``: the warm path (``cli/fast.py``) calls ``find`` on every ``nixcell run`` to
key its cached plans on the config, so discovery must cost a few stats, nothing more.

Why the refusals: a config decides what the next cell may see and reach, so one that someone
else could have written is never used. Another user could plant ``/tmp/nixcell.toml`` (hence:
a regular file, not a symlink, owned by us or root, not group/other-writable), and a cell that
can write its project could plant ``sub/nixcell.toml`` for the day the user stands in ``sub``,
or a ``nixcell.toml`` beside the project's ``nixcage.toml`` (it would win). Both are refused
unless ``--project DIR`` names that directory: the user's explicit word, never a cell's.

A shared sticky world-writable directory (``/tmp``) is different: anyone may create names there,
so a config in it owned by someone else is not a mistake of ours but a stranger's file. Refusing
it would let any local user break every run below ``/tmp``; it is ignored instead (one warning
line) and the walk goes on upward. On a host with ``fs.protected_hardlinks=0`` anyone can also
hard-link a file of ours or root's there, so a config with more than one link is not trusted.
"""

from __future__ import annotations

import os
import stat

NAMES = (("nixcell.toml", "nixcell"), ("nixcage.toml", "nixcage"))
PROTECTED_HARDLINKS = "/proc/sys/fs/protected_hardlinks"
_warned: set[str] = set()


class Found:
    """A discovered project: ``root`` (its directory), ``path`` (the config), ``kind``."""

    __slots__ = ("explicit", "kind", "path", "root")

    def __init__(self, root: str, path: str, kind: str, explicit: bool = False) -> None:
        self.root, self.path, self.kind, self.explicit = root, path, kind, explicit

    def __repr__(self) -> str:
        return f"Found(root={self.root!r}, path={self.path!r}, kind={self.kind!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Found) and (self.root, self.path, self.kind) == (
            other.root,
            other.path,
            other.kind,
        )

    __hash__ = None  # type: ignore[assignment]


def _error(message: str) -> Exception:
    from nixcell.errors import UsageError  # only when refusing: errors.py is not free

    return UsageError(message)


def configs_in(directory: str) -> list[tuple[str, str]]:
    """(path, kind) of the config names that exist (as anything) in ``directory``."""
    out = []
    for name, kind in NAMES:
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            out.append((path, kind))
    return out


def links_protected() -> bool:
    """Whether the kernel refuses hard links to files the linker does not own (the default);
    unreadable counts as not protected (fail closed)."""
    try:
        with open(PROTECTED_HARDLINKS, "rb") as f:
            return f.read().strip() not in (b"0", b"")
    except OSError:
        return False


def _warn(message: str) -> None:
    """One stderr line per config and process (the warm path may look twice)."""
    if message not in _warned:
        _warned.add(message)
        os.write(2, f"nixcell: warning: {message}\n".encode(errors="replace"))


def _strangers(directory: str, present: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``present`` without the configs a stranger may have put in a sticky world-writable
    ``directory`` (someone else's file, or a hard link when links are not protected)."""
    try:
        st = os.stat(directory)
    except OSError:
        return present
    if not (st.st_mode & stat.S_ISVTX and st.st_mode & 0o002):
        return present
    kept = []
    for path, kind in present:
        try:
            cst = os.lstat(path)
        except OSError:
            continue
        if cst.st_uid not in (os.getuid(), 0):
            why = f"owned by uid {cst.st_uid}"
        elif cst.st_nlink > 1 and stat.S_ISREG(cst.st_mode) and not links_protected():
            why = f"a file with {cst.st_nlink} hard links (fs.protected_hardlinks=0)"
        else:
            kept.append((path, kind))
            continue
        _warn(f"{path} ignored: {why} in the shared directory {directory}")
    return kept


def check_trusted(path: str) -> os.stat_result:
    """The config's stat, or a one-line error when someone else could have written it."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise _error(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise _error(f"{path} is a symbolic link: a config is used only as a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise _error(f"{path} is not a regular file")
    me = os.getuid()
    if st.st_uid not in (me, 0):
        raise _error(f"{path} is owned by uid {st.st_uid}, not by you (uid {me}) or root: not used")
    if st.st_mode & 0o022:
        raise _error(
            f"{path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            f"not used; `chmod go-w {path}` if it is yours"
        )
    if st.st_nlink > 1 and not links_protected():
        raise _error(
            f"{path} has {st.st_nlink} hard links and this host lets anyone link files "
            "(fs.protected_hardlinks=0): not used; copy it to a file of its own"
        )
    return st


def _pick(directory: str, present: list[tuple[str, str]], explicit: bool) -> Found:
    if len(present) > 1 and not explicit:
        raise _error(
            f"{directory} has both nixcell.toml and nixcage.toml (a cell could have planted "
            "one): remove the one you do not use, or name it with --project "
            f"{directory} (nixcell.toml then wins)"
        )
    path, kind = present[0]
    check_trusted(path)
    return Found(directory, path, kind, explicit)


def find(start: str, explicit: str | None = None, ignore: bool = False) -> Found | None:
    """The project for a command started in ``start`` (None: not in a project).

    ``explicit``: ``--project DIR`` (its config must exist there; nesting is then accepted);
    ``ignore``: ``--no-project``. Errors are ``UsageError`` one-liners.
    """
    if ignore:
        return None
    if explicit is not None:
        # the user's own word: a link in it is theirs (the binds then name the real path)
        root = os.path.realpath(os.path.expanduser(explicit))
        if not os.path.isdir(root):
            raise _error(f"--project {explicit}: no such directory")
        present = configs_in(root)
        if not present:
            raise _error(f"--project {explicit}: no nixcell.toml or nixcage.toml in {root}")
        return _pick(root, present, explicit=True)
    here = os.path.abspath(start)
    while True:
        present = _strangers(here, configs_in(here))
        if present:
            found = _pick(here, present, explicit=False)
            _not_nested(found)
            return found
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def _not_nested(found: Found) -> None:
    """A config inside another project's tree is refused (see the module docstring)."""
    here = os.path.dirname(found.root)
    while True:
        outer = _strangers(here, configs_in(here))
        if outer:
            raise _error(
                f"{found.path} is inside the project at {here} ({os.path.basename(outer[0][0])}):"
                f" a cell of that project could have planted it; use --project {found.root} "
                "if you wrote it"
            )
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent


def stamp(found: Found | None) -> tuple[object, ...] | None:
    """What the warm path keys cached plans on: the config's identity and version."""
    if found is None:
        return None
    try:
        st = os.lstat(found.path)
    except OSError:
        return (found.path, None)
    return (found.path, found.kind, st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
