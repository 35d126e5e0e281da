"""What talking to bubblewrap takes, importing only ``os``: finding it, memfds, its info fd.

Shared by the executor (``bwrap.py``) and the CLI's warm-path executor (``direct.py``), which
must not import ``json``, ``shutil`` or ``subprocess`` for them.
"""

from __future__ import annotations

import os
import stat

from nixcell.errors import SandboxError


def which(name: str) -> str | None:
    """``shutil.which`` for a bare name: the first executable file on ``$PATH``."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def bwrap_path() -> str:
    found = which("bwrap") or (os.path.exists("/usr/bin/bwrap") and "/usr/bin/bwrap")
    if not found:
        raise SandboxError("bubblewrap is not installed: install it with `apt install bubblewrap`")
    return found


def memfd(name: str, data: bytes) -> int:
    """A CLOEXEC memfd holding ``data``, rewound: how bwrap gets its args, files and filter."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def parse_info(data: bytes) -> int | None:
    """The host pid of the cell's pid-1 from bwrap's ``--info-fd`` JSON (``"child-pid": N``).

    Read without ``json``: bwrap writes a flat object of integers; anything else is None."""
    at = data.find(b'"child-pid"')
    if at < 0:
        return None
    rest = data[at + len(b'"child-pid"') :].lstrip()
    if not rest.startswith(b":"):
        return None
    digits = rest[1:].lstrip()
    end = 0
    while end < len(digits) and digits[end : end + 1].isdigit():
        end += 1
    return int(digits[:end]) if 0 < end <= 10 else None


def exit_code_of(returncode: int) -> int:
    """bwrap already maps a signalled command to 128+N; a signalled bwrap gets the same."""
    return 128 - returncode if returncode < 0 else returncode


def switched_to(launcher: list[str] | None) -> tuple[int, int] | None:
    """The (uid, gid) the launcher's ``nsenter --setuid U --setgid G`` switches to."""
    if not launcher or "--setuid" not in launcher or "--setgid" not in launcher:
        return None
    return (int(launcher[launcher.index("--setuid") + 1]),
            int(launcher[launcher.index("--setgid") + 1]))  # fmt: skip


def end_watch(cell: object) -> None:
    """After a cell (either executor's): its network counters closed (``probe``), its stdio
    pipes' added permission bits taken back (``lent``)."""
    probe = getattr(cell, "probe", None)
    if probe is not None:
        probe.close()
        cell.probe = None  # type: ignore[attr-defined]
    lent = getattr(cell, "lent", None)
    if lent:
        from nixcell.sandbox.stdioowner import give_back

        give_back(lent)


def open_nofollow(path: str) -> int:
    """An O_PATH fd of ``path``, reached without following any symbolic link (SandboxError
    otherwise): what is bound is what was checked, even if a cell swaps a link in meanwhile."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in [p for p in os.path.normpath(path).split("/") if p]:
            try:
                nxt = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                raise SandboxError(f"cannot bind {path} into the cell: {e.strerror}") from None
            os.close(fd)
            fd = nxt
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise SandboxError(f"cannot bind {path} into the cell: it goes through a symlink")
        return fd
    except BaseException:
        os.close(fd)
        raise
