"""Which host uid a cell's processes run as: never root, never a uid that owns host files.

bwrap maps the cell's uid 1000 to the uid that starts it. Run by an ordinary user, that is the
user: the cell can do what the user can, minus what the sandbox removes. Run by root, it was host
uid 0, and a process with host uid 0 writes every root-owned 0644 file it can see — without any
capability (``/proc/sys/kernel/core_pattern`` is a known route to code execution as root). So a
root-run nixcell starts each cell as its own unprivileged host uid from a dedicated subordinate
range: one uid (and gid) per concurrent cell, held by an ``flock`` on a slot file for as long as
the cell runs, so two cells never share an identity (and cannot signal or ptrace each other).

The range is the ``nixcell`` entry of ``/etc/subuid`` and ``/etc/subgid`` (``./setup`` adds one)
or, without it, ``DEFAULT_BASE``. Whatever its source, nixcell refuses to run when any uid of the
range belongs to an account or to another user's subordinate range: that user could enter a user
namespace mapped onto the cell's uid and reach into the cell.
"""

from __future__ import annotations

import fcntl
import os

from nixcell.errors import SandboxError
from nixcell.quiet import suppress

RANGE_OWNER = "nixcell"
DEFAULT_BASE = 0x70000000  # 1879048192: above systemd's container range (0x80000-0x6fffffff)
DEFAULT_COUNT = 65536
LOCK_DIR = "/run/nixcell/uids"
SUBUID, SUBGID, PASSWD, GROUP = "/etc/subuid", "/etc/subgid", "/etc/passwd", "/etc/group"


class IdRange:
    """A range of host ids (a plain class: ``dataclasses`` costs the CLI's warm path ~5 ms)."""

    __slots__ = ("base", "count", "source")

    def __init__(self, base: int, count: int, source: str) -> None:
        self.base = base
        self.count = count
        self.source = source  # "/etc/subuid" or "default"

    def __contains__(self, value: int) -> bool:
        return self.base <= value < self.base + self.count

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdRange):
            return NotImplemented
        return (self.base, self.count, self.source) == (other.base, other.count, other.source)

    def __hash__(self) -> int:
        return hash((self.base, self.count, self.source))

    def __repr__(self) -> str:
        return f"IdRange(base={self.base}, count={self.count}, source={self.source!r})"


class CellIdentity:
    """A host uid/gid pair held for one cell; ``release`` frees the slot."""

    __slots__ = ("_fd", "gid", "uid")

    def __init__(self, uid: int, gid: int, _fd: int | None = None) -> None:
        self.uid = uid
        self.gid = gid
        self._fd = _fd

    def __repr__(self) -> str:
        return f"CellIdentity(uid={self.uid}, gid={self.gid})"

    def release(self) -> None:
        if self._fd is not None:
            with suppress(OSError):
                os.ftruncate(self._fd, 0)  # left cleanly: the next taker need not look
                os.close(self._fd)
            self._fd = None


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise SandboxError(f"cannot read {path}: {e.strerror}") from None


def _sub_entries(text: str) -> list[tuple[str, int, int]]:
    entries = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or line.lstrip().startswith("#"):
            continue
        with suppress(ValueError):
            entries.append((parts[0], int(parts[1]), int(parts[2])))
    return entries


def _ids(text: str, column: int) -> list[tuple[str, int]]:
    found = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > column:
            with suppress(ValueError):
                found.append((parts[0], int(parts[column])))
    return found


def check_range(rng: IdRange, subuid: str, subgid: str, passwd: str, group: str) -> str | None:
    """Why ``rng`` is unsafe for cells (a reason to refuse), or None. Pure."""
    end = rng.base + rng.count
    if rng.base < 65536 or end > 0xFFFFFFFF or rng.count < 1:
        return f"uids {rng.base}-{end - 1} are not a usable subordinate range"
    for kind, text in (("subuid", subuid), ("subgid", subgid)):
        for owner, start, count in _sub_entries(text):
            if owner == RANGE_OWNER:
                continue
            if start < end and rng.base < start + count:
                return (
                    f"/etc/{kind} gives {owner!r} ids {start}-{start + count - 1}, which overlap "
                    f"nixcell's cell range {rng.base}-{end - 1}"
                )
    for what, text, column in (("user", passwd, 2), ("group", group, 2)):
        for name, value in _ids(text, column):
            if value in rng:
                return f"{what} {name!r} has id {value}, inside nixcell's cell range"
    return None


def subordinate_range() -> IdRange:
    """The cells' range, checked against the accounts and other users' ranges."""
    subuid, subgid = _read(SUBUID), _read(SUBGID)
    rng = IdRange(DEFAULT_BASE, DEFAULT_COUNT, "default")
    uids = [(s, c) for o, s, c in _sub_entries(subuid) if o == RANGE_OWNER]
    gids = [(s, c) for o, s, c in _sub_entries(subgid) if o == RANGE_OWNER]
    if uids or gids:
        if not uids or uids[:1] != gids[:1]:
            raise SandboxError(
                f"/etc/subuid and /etc/subgid must give {RANGE_OWNER!r} the same range "
                f"(found {uids[:1] or 'none'} and {gids[:1] or 'none'})"
            )
        rng = IdRange(uids[0][0], uids[0][1], SUBUID)
    why = check_range(rng, subuid, subgid, _read(PASSWD), _read(GROUP))
    if why:
        raise SandboxError(
            f"refusing to run a cell as root: {why}; give nixcell a free range with a line "
            f"'{RANGE_OWNER}:BASE:COUNT' in /etc/subuid and /etc/subgid"
        )
    return rng


def _lock_dir() -> str:
    """The slot locks' directory: root's, private, not a path anyone else could plant."""
    from nixcell.sandbox.rundir import root_dir

    os.makedirs("/run", mode=0o755, exist_ok=True)
    return root_dir(LOCK_DIR, 0o700)


def allocate() -> CellIdentity:
    """The first free slot of the range, locked until ``release`` (or this process ends)."""
    rng = subordinate_range()
    directory = _lock_dir()
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for slot in range(rng.count):
            fd = os.open(
                f"{slot}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            uid = rng.base + slot
            # A holder that died without ``release`` (kill -9) may have left a cell running
            # as this uid (a Docker container or gVisor sandbox outlives nixcell until the
            # sweep): never give its uid to another cell while any process still has it.
            if os.pread(fd, 32, 0) and uid_in_use(uid):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return CellIdentity(uid=uid, gid=uid, _fd=fd)
    finally:
        os.close(dir_fd)
    raise SandboxError(f"all {rng.count} cell uids are in use: too many concurrent cells")


def uid_in_use(uid: int) -> bool:
    """Whether any process on the host has ``uid`` as its real, effective or saved uid."""
    wanted = str(uid)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"Uid:"):
                        if wanted.encode() in line.split()[1:4]:
                            return True
                        break
        except OSError:  # gone meanwhile
            continue
    return False


def needs_subordinate() -> bool:
    """Cells started by root get a subordinate uid; everyone else's run as themselves."""
    return os.geteuid() == 0


def register() -> str:
    """Reserve the default range as ``nixcell``'s in /etc/subuid and /etc/subgid (./setup, root).

    Registered, the range is skipped by ``useradd`` when it hands out subordinate ranges, so no
    user can ever be given the uids of cells."""
    from nixcell.fsio import write_atomic

    rng = subordinate_range()  # refuses a range that overlaps anyone else's
    if rng.source != "default":
        return f"nixcell's cell range is {rng.base}-{rng.base + rng.count - 1} ({rng.source})"
    for path in (SUBUID, SUBGID):
        text = _read(path)
        if not any(owner == RANGE_OWNER for owner, _, _ in _sub_entries(text)):
            line = f"{RANGE_OWNER}:{rng.base}:{rng.count}\n"
            sep = "" if not text or text.endswith("\n") else "\n"
            write_atomic(path, text + sep + line, mode=0o644, durable=True)
    return f"registered nixcell's cell range {rng.base}-{rng.base + rng.count - 1}"


if __name__ == "__main__":  # ./setup: python -m nixcell.sandbox.identity
    import sys

    try:
        print(f"setup: {register()}")
    except (SandboxError, OSError) as exc:
        sys.exit(f"setup: {exc}")
