"""Unpacking a client's tar stream with every member checked by us, not by ``tarfile``.

``tarfile`` only parses (stream mode, plain or gzip); each member then passes our own checks
before anything is written, and the writes go through directory fds (``O_NOFOLLOW``,
``O_EXCL``) into a fresh directory, so even a check we forgot cannot make a write land outside.
Refused, each with one line: absolute names, ``..``, empty names, NUL and control characters,
names or parts too long, trees too deep, duplicate names, a member below a symlink or a file
member, hard links, device nodes, FIFOs, sparse and other special members, setuid/setgid files,
sizes past the limit (checked from the header, before reading, and while reading), too many
members, a stream that is not tar. Symlinks are allowed when their target is relative and,
resolved through the archive's own links the way the kernel would, stays inside the upload
(checked once every member is known: a later link cannot change an earlier verdict). Directory
setgid/sticky bits are dropped (tar copies them from shared dirs); file modes keep only
``0o755`` plus owner read/write. The caller removes the directory when ``unpack`` raises.
"""

from __future__ import annotations

import gzip
import os
import stat
import tarfile
from collections import deque
from dataclasses import dataclass
from typing import IO

from nixcell.jobs.contract import JobError
from nixcell.jobs.gitrefs import shown
from nixcell.jobs.treewalk import DIR_FLAGS

_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HOPS = 40  # the kernel's symlink limit


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 256 << 20  # the unpacked files' sizes together
    max_members: int = 10_000
    max_depth: int = 64
    max_path: int = 4096
    max_part: int = 255


class Refused(JobError):
    """An upload that breaks a rule (the message says which member and why)."""


def refuse(why: str, status: int = 400) -> Refused:
    return Refused(f"upload refused: {why}", status=status)


class _Capped:
    """A read-only stream that refuses to give more than ``limit`` bytes (gzip bombs, huge
    pax headers: tarfile reads those into memory)."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw, self.left = raw, limit

    def read(self, size: int = -1) -> bytes:
        want = self.left + 1 if size is None or size < 0 else min(size, self.left + 1)
        data = self.raw.read(want)
        self.left -= len(data)
        if self.left < 0:
            raise refuse("the unpacked stream is too large", 413)
        return data


def open_stream(fileobj: IO[bytes], limits: Limits) -> IO[bytes]:
    """``fileobj`` (positioned at 0, seekable), gunzipped if it is gzip, capped."""
    magic = fileobj.read(2)
    fileobj.seek(0)
    raw: IO[bytes] = gzip.GzipFile(fileobj=fileobj) if magic == b"\x1f\x8b" else fileobj
    overhead = 2048 * (limits.max_members + 2) + (1 << 20)  # headers, pax records, padding
    return _Capped(raw, limits.max_bytes + overhead)  # type: ignore[return-value]


def unpack(fileobj: IO[bytes], dest_fd: int, limits: Limits) -> int:
    """Unpack the tar in ``fileobj`` into the empty directory ``dest_fd``; members written."""
    stream = open_stream(fileobj, limits)
    unpacker = _Unpacker(dest_fd, limits)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                unpacker.add(tar, member)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, ValueError, UnicodeError) as exc:
        raise refuse(f"not a valid tar stream ({type(exc).__name__}: {_first(exc)})") from None
    except OSError as exc:
        raise refuse(f"cannot unpack it: {exc.strerror or exc}", 500) from None
    unpacker.check_links()
    return unpacker.count


def _first(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return shown(text, 120)[1:-1]


class _Unpacker:
    def __init__(self, dest_fd: int, limits: Limits) -> None:
        self.dest_fd = dest_fd
        self.limits = limits
        self.count = 0
        self.entries = 0  # made on disk: members and the directories their names imply
        self.total = 0
        self.kinds: dict[str, str] = {}  # path -> "dir" | "file" | "symlink" | "implicit"
        self.links: dict[str, str] = {}

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.count += 1
        if self.count > self.limits.max_members:
            raise refuse(f"more than {self.limits.max_members} members")
        parts = self.components(member.name)
        what = shown(member.name)
        if not parts:
            if member.isdir():
                return  # "./": the upload's own top directory
            raise refuse(f"member {what} has no name")
        key = "/".join(parts)
        known = self.kinds.get(key)
        if known is not None and not (known == "implicit" and member.isdir()):
            raise refuse(f"member {what} appears twice")
        for i in range(1, len(parts)):
            above = self.kinds.get("/".join(parts[:i]))
            if above in ("symlink", "file"):
                raise refuse(f"member {what} goes through the {above} {shown(parts[i - 1])}")
        kind = self.kind(member, what)
        if kind == "file" and member.mode & (stat.S_ISUID | stat.S_ISGID):
            raise refuse(f"member {what} has a setuid or setgid bit")
        if kind == "file" and member.size > self.limits.max_bytes - self.total:
            raise refuse(f"the files are over {self.limits.max_bytes} bytes", 413)
        if kind == "symlink":
            self.check_target(member.linkname, what)
        parent = self.descend(parts[:-1], what)
        if known is None:
            self.made()
        try:
            self.write(tar, member, kind, parent, parts[-1], what, known == "implicit")
        finally:
            os.close(parent)
        self.kinds[key] = kind
        if kind == "symlink":
            self.links[key] = member.linkname

    def components(self, name: object) -> tuple[str, ...]:
        if not isinstance(name, str):
            raise refuse("a member name is not text")
        what = shown(name)
        self.check_path(name, f"member name {what}", f"member {what} has an absolute name")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if ".." in parts:
            raise refuse(f"member {what} leaves the upload ('..')")
        if any(len(os.fsencode(p)) > self.limits.max_part for p in parts):
            raise refuse(f"member {what} has a name part over {self.limits.max_part} bytes")
        if len(parts) > self.limits.max_depth:
            raise refuse(f"member {what} is deeper than {self.limits.max_depth} levels")
        return parts

    @staticmethod
    def kind(member: tarfile.TarInfo, what: str) -> str:
        if member.issparse():
            raise refuse(f"member {what} is a sparse file")
        if member.isreg():
            return "file"
        if member.isdir():
            return "dir"
        if member.issym():
            return "symlink"
        if member.islnk():
            raise refuse(f"member {what} is a hard link")
        if member.ischr() or member.isblk():
            raise refuse(f"member {what} is a device node")
        if member.isfifo():
            raise refuse(f"member {what} is a FIFO")
        raise refuse(f"member {what} has an unsupported type {member.type!r}")

    def check_target(self, target: object, what: str) -> None:
        if not isinstance(target, str) or not target:
            raise refuse(f"symlink {what} has no target")
        self.check_path(
            target, f"symlink {what}'s target", f"symlink {what} points to an absolute path"
        )

    def check_path(self, text: str, label: str, absolute: str) -> None:
        """Length, control characters, absoluteness: the same for names and link targets."""
        if len(os.fsencode(text)) > self.limits.max_path:
            raise refuse(f"{label} is longer than {self.limits.max_path} bytes")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise refuse(f"{label} holds NUL or control characters")
        if text.startswith("/"):
            raise refuse(absolute)

    def descend(self, parts: tuple[str, ...], what: str) -> int:
        """An fd of the directory ``parts`` (made when missing), never through a link."""
        fd = os.dup(self.dest_fd)
        try:
            for i, part in enumerate(parts):
                key = "/".join(parts[: i + 1])
                if key not in self.kinds:
                    self.made()
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self.kinds[key] = "implicit"
                try:
                    sub = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    raise refuse(f"member {what}: {shown(part)} is not a directory") from exc
                os.close(fd)
                fd = sub
            return fd
        except BaseException:
            os.close(fd)
            raise

    def made(self) -> None:
        """One more entry on disk: a member's name implies its directories (``a/b/.../f``:
        up to 64), so the member limit bounds what is made, not only the headers."""
        self.entries += 1
        if self.entries > self.limits.max_members:
            raise refuse(
                f"more than {self.limits.max_members} members "
                "(counting the directories their names imply)"
            )

    def write(
        self,
        tar: tarfile.TarFile,
        member: tarfile.TarInfo,
        kind: str,
        parent: int,
        name: str,
        what: str,
        exists: bool,
    ) -> None:
        if kind == "dir":
            if not exists:
                os.mkdir(name, 0o755, dir_fd=parent)
            mode = (member.mode & 0o755) | 0o700
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        elif kind == "symlink":
            os.symlink(member.linkname, name, dir_fd=parent)
        else:
            self.write_file(tar, member, parent, name, what)

    def write_file(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str, what: str
    ) -> None:
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent)
        try:
            written = 0
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > member.size:
                    raise refuse(f"member {what} is longer than its header says")
                os.write(fd, chunk)
            if written != member.size:
                raise refuse(f"member {what} is cut short")
            os.fchmod(fd, (member.mode & 0o755) | 0o600)
            if isinstance(member.mtime, (int, float)) and 0 <= member.mtime < 2**40:
                os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.total += member.size

    def check_links(self) -> None:
        for path, target in self.links.items():
            if escapes(self.links, path, target):
                raise refuse(f"symlink {shown(path)} -> {shown(target)} leads outside the upload")


def escapes(links: dict[str, str], path: str, target: str) -> bool:
    """Does the link at ``path`` (-> ``target``) lead outside the root, resolved the way the
    kernel would through the other links of ``links`` (loops count as escaping)? Pure."""
    current = path.split("/")[:-1]
    queue = deque(target.split("/"))
    hops = 0
    while queue:
        part = queue.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not current:
                return True
            current.pop()
            continue
        current.append(part)
        link = links.get("/".join(current))
        if link is None:
            continue
        hops += 1
        if hops > _MAX_HOPS or link.startswith("/"):
            return True
        current.pop()
        queue.extendleft(reversed(link.split("/")))
    return False
