"""The files ``nixcell init`` writes and ``nixcell destroy`` removes, written so nothing is lost.

A project directory is the user's, but code in a standard-level cell can write it: a name we
are about to write may already be a symlink (``.envrc -> ~/.bashrc``), a FIFO, or a directory
swapped for a link. So every directory here is opened relative to its parent's fd with
``O_NOFOLLOW`` and every file is written with ``fsio.write_atomic`` (temp file, fsync, rename
over the name: a planted link is replaced, never written through). A file we would overwrite
whose contents are not what we write is kept as ``NAME.bak`` first (a hard link taken before
the rename, so the old contents stay reachable at every instant). The config is written last:
an ``init`` that failed half-way leaves no config behind and can simply be run again.

``init`` refuses (nothing written) when a ``nixcell.toml`` or ``nixcage.toml`` exists; a regular
``.envrc`` that is not ours is kept untouched (the user's direnv setup), and the message says
which line to add; a symlink or other non-file there is kept as ``.envrc.bak`` and replaced.
``destroy`` removes the config, ``.nixcell/`` (with ``fsio.remove_tree``: a cell may have
planted links in ``.nixcell/local``) and the ``.envrc`` only if it is still byte for byte ours;
backups (``*.bak``) stay.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from nixcell.errors import StateError, UsageError
from nixcell.fsio import remove_tree, write_atomic
from nixcell.project.presets import Preset
from nixcell.quiet import suppress

CONFIG = "nixcell.toml"
CONFIGS = ("nixcell.toml", "nixcage.toml")
STATE_DIR = ".nixcell"
BIN_DIR = "bin"
POLICY = "policy.toml"

ENVRC = """\
# nixcell project: direnv loads this (`direnv allow`); `nixcell hook direnv` prints the code.
if command -v nixcell >/dev/null 2>&1; then
  eval "$(nixcell hook direnv)"
else
  log_error "nixcell is not on PATH: this project's cell (nixcell run, shell) is not available"
fi
"""
# A project inside another one: discovery uses its config only when named, and direnv runs
# .envrc in the project's own directory, so `--project .` names it (and survives a move).
ENVRC_NESTED = ENVRC.replace(
    "prints the code.\n",
    "prints the code.\n# Inside another project: `--project .` names this one.\n",
).replace('hook direnv)"', 'hook direnv --project .)"')
OUR_ENVRCS = (ENVRC.encode(), ENVRC_NESTED.encode())
GITIGNORE = """\
# nixcell: per-machine state of the project's cell (XDG dirs, copied store)
local/
store/
"""
SCRIPTS = {
    "cell": (
        '#!/bin/sh\n# nixcell: `cell` = `nixcell shell` in this project\nexec nixcell shell "$@"\n'
    ),
    "cellrun": (
        "#!/bin/sh\n# nixcell: `cellrun CMD...` = `nixcell run -- CMD...` in this project\n"
        'exec nixcell run -- "$@"\n'
    ),
}
# a nested project's: discovery needs its name, which is where the script lies ($0 is the full
# path when found on PATH, which the hook set): .nixcell/bin/../..
SCRIPTS_NESTED = {
    "cell": (
        "#!/bin/sh\n# nixcell: `cell` = `nixcell shell` in this project (inside another)\n"
        'exec nixcell shell --project "${0%/*}/../.." "$@"\n'
    ),
    "cellrun": (
        "#!/bin/sh\n# nixcell: `cellrun CMD...` = `nixcell run -- CMD...` in this project "
        '(inside another)\nexec nixcell run --project "${0%/*}/../.." -- "$@"\n'
    ),
}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Outcome:
    """What a command did, for the CLI to report (relative names)."""

    written: list[str] = field(default_factory=list)
    backed_up: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def open_root(root: str) -> int:
    """An fd of the project directory the user named (the only path followed as given)."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UsageError(f"{root}: no such directory") from None
    except NotADirectoryError:
        raise UsageError(f"{root}: not a directory") from None
    except OSError as exc:
        raise UsageError(f"{root}: {exc.strerror}") from None


def open_subdir(dfd: int, name: str, shown: str, *, create: bool) -> int | None:
    """An fd of directory ``name`` in ``dfd``, never through a symlink (None: missing)."""
    if create:
        with suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dfd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise StateError(f"{shown} is not a directory (a symlink?): not used") from None
        raise StateError(f"{shown}: {exc.strerror}") from None


def read_file(dfd: int, name: str, limit: int = 1 << 20) -> bytes | None:
    """The contents of regular file ``name`` in ``dfd``; None when it is missing, a symlink or
    anything but a regular file (never followed, never blocks on a FIFO)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit + 1)[: limit + 1]
    finally:
        os.close(fd)


def exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


def _backup_name(dfd: int, name: str) -> str:
    bak = f"{name}.bak"
    n = 1
    while exists(dfd, bak):
        bak, n = f"{name}.bak.{n}", n + 1
    return bak


def replace_file(dfd: int, name: str, data: str, mode: int, out: Outcome, shown: str) -> None:
    """Write ``name`` whole; different old contents (or a non-file) are kept as ``NAME.bak``."""
    old = read_file(dfd, name)
    if old == data.encode():
        if stat.S_IMODE(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode) == mode:
            return
    elif exists(dfd, name):
        bak = _backup_name(dfd, name)
        try:  # a second name first: the old contents stay reachable at every instant
            os.link(name, bak, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EISDIR):
                raise
            os.rename(name, bak, src_dir_fd=dfd, dst_dir_fd=dfd)  # a directory: moved aside
        out.backed_up.append(f"{shown} -> {os.path.join(os.path.dirname(shown), bak)}")
    write_atomic(name, data, mode=mode, durable=True, dir_fd=dfd)
    out.written.append(shown)


def existing_config(dfd: int) -> str | None:
    return next((name for name in CONFIGS if exists(dfd, name)), None)


def write_project(
    root: str, preset: Preset, *, reinit: bool = False, nested: bool = False
) -> Outcome:
    """``init`` (refusing an existing config) or ``reinit`` (its old config kept as .bak);
    ``nested``: the project is inside another one (its ``.envrc`` names it)."""
    out = Outcome()
    dfd = open_root(root)
    try:
        found = existing_config(dfd)
        if found and not reinit:
            raise UsageError(
                f"{os.path.join(root, found)} exists: nothing written "
                "(`nixcell reinit` writes a fresh one and keeps the old as nixcell.toml.bak)"
            )
        if reinit and found == "nixcage.toml" and not exists(dfd, CONFIG):
            out.kept.append("nixcage.toml (nixcage's file: nixcell.toml now takes precedence)")
        _write_state_dir(dfd, preset, out, nested)
        _write_envrc(dfd, out, nested)
        replace_file(dfd, CONFIG, preset.config, 0o644, out, CONFIG)  # last: see module doc
    finally:
        os.close(dfd)
    return out


def _write_state_dir(dfd: int, preset: Preset, out: Outcome, nested: bool) -> None:
    sfd = open_subdir(dfd, STATE_DIR, STATE_DIR, create=True)
    assert sfd is not None
    try:
        replace_file(sfd, ".gitignore", GITIGNORE, 0o644, out, f"{STATE_DIR}/.gitignore")
        if preset.policy is not None:
            replace_file(sfd, POLICY, preset.policy, 0o644, out, f"{STATE_DIR}/{POLICY}")
        write_scripts(sfd, out, nested=nested)
    finally:
        os.close(sfd)


def write_scripts(
    sfd: int, out: Outcome, *, only_missing: bool = False, nested: bool = False
) -> None:
    """``.nixcell/bin/cell`` and ``cellrun`` (direnv cannot export functions: scripts on PATH);
    ``nested``: the ones naming their project (``SCRIPTS_NESTED``)."""
    shown = f"{STATE_DIR}/{BIN_DIR}"
    bfd = open_subdir(sfd, BIN_DIR, shown, create=True)
    assert bfd is not None
    try:
        for name, text in (SCRIPTS_NESTED if nested else SCRIPTS).items():
            if only_missing and exists(bfd, name):
                continue
            replace_file(bfd, name, text, 0o755, out, f"{shown}/{name}")
    finally:
        os.close(bfd)


def _write_envrc(dfd: int, out: Outcome, nested: bool = False) -> None:
    """Ours, unless the user has their own: a regular ``.envrc`` that is not ours is kept (and
    the CLI does not suggest `direnv allow` for it). Anything else at the name (a symlink a
    cell planted, pointing at a file it can write) is moved to ``.envrc.bak`` and replaced:
    telling the user to allow it would run what it points to."""
    old = read_file(dfd, ".envrc")
    hook = "nixcell hook direnv --project ." if nested else "nixcell hook direnv"
    if old is not None and old not in OUR_ENVRCS:
        out.kept.append(f'.envrc (yours: review it and add `eval "$({hook})"`)')
        return
    replace_file(dfd, ".envrc", ENVRC_NESTED if nested else ENVRC, 0o644, out, ".envrc")


def planned_removal(root: str) -> Outcome:
    """What ``destroy`` would remove and keep, without touching anything."""
    out = Outcome()
    dfd = open_root(root)
    try:
        if exists(dfd, CONFIG):
            out.removed.append(CONFIG)
        if exists(dfd, STATE_DIR):
            out.removed.append(f"{STATE_DIR}/")
        envrc = read_file(dfd, ".envrc")
        if envrc in OUR_ENVRCS:
            out.removed.append(".envrc")
        elif exists(dfd, ".envrc"):
            out.kept.append(".envrc (changed since nixcell init wrote it, or not ours)")
        for name in sorted(os.listdir(dfd)):
            if name.startswith(f"{CONFIG}.bak") or name == "nixcage.toml":
                out.kept.append(name)
    finally:
        os.close(dfd)
    if not out.removed:
        raise UsageError(f"{root}: no nixcell project files to remove (nixcell.toml, .nixcell/)")
    return out


def remove_project(root: str, plan: Outcome) -> Outcome:
    """Remove what ``planned_removal`` listed (``.nixcell/`` by the symlink-safe tree walk)."""
    done = Outcome(kept=plan.kept)
    dfd = open_root(root)
    try:
        for name in plan.removed:
            if name == f"{STATE_DIR}/":
                remove_tree(os.path.join(root, STATE_DIR))
            elif name == ".envrc" and read_file(dfd, ".envrc") not in OUR_ENVRCS:
                done.kept.append(".envrc (changed meanwhile)")
                continue
            else:
                try:
                    os.unlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    continue
            done.removed.append(name)
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return done
