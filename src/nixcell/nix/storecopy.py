"""Store modes "copy" and "isolated": a cell's runtime closure copied into a directory of its own.

The copy lives in ``store_dir`` (a project's ``.nixcell/store``)::

    store_dir/paths/<hash>-<name>   one entry per closure path: bound read-only at /nix/store
    store_dir/manifest.json         what the copy holds and what it was made for (atomic)
    store_dir/.tmp/                 entries being copied (renamed into paths/ when complete)

"copy" refreshes it on every run: paths missing from the copy are copied, paths no longer in
the closure removed. "isolated" copies once and then freezes: later runs take the closure from
the manifest without asking nix (they keep working after the host store lost those paths), and
a changed package list is refused. Only runtime closure paths are copied (``nix-store -qR`` of
the outputs, never a .drv).

The directory may sit in a tree a cell could write at some point (a project), so nothing here
follows a symbolic link it did not create: ``store_dir`` is reached component by component with
O_NOFOLLOW (a symlinked one is refused), entries are made under temporary names with O_EXCL and
renamed into place relative to directory fds, and removal goes through ``treeremove``. The host
store's files are read with O_NOFOLLOW too (its symlinks are copied as symlinks). Modes are the
store's (0444/0555, world-readable), so a root-run cell's own uid reads the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass

from nixcell.errors import StateError
from nixcell.nix.closure import STORE_DIR, Closure
from nixcell.nix.storestamp import MANIFEST, PATHS, manifest_stamp, missing_entry

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nixcell.spec import CellSpec

FORMAT = 1
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class StoreCopy:
    """A ready copy: ``root`` is bound at /nix/store; ``stamp`` identifies its manifest (a
    cached plan made for another manifest is stale: plancheck.py)."""

    root: str
    stamp: str


def key_of(packages: list[str], tools: dict[str, str], nixpkgs: str | None) -> dict[str, object]:
    """What an isolated copy is frozen for: the packages asked for and where they come from."""
    return {"packages": list(packages), "tools": dict(sorted(tools.items())), "nixpkgs": nixpkgs}


def frozen_for(spec: CellSpec, packages: list[str], tools: dict[str, str]) -> Closure | None:
    """For a copy mode's spec, before resolving: refuse a store dir the cell could write, and
    return an isolated copy's recorded closure (None: resolve, then ``made_for``)."""
    check_store_dir(spec)  # before anything is copied there
    if spec.store != "isolated":
        return None
    return frozen_closure(spec.store_dir, key_of(packages, tools, spec.nixpkgs))  # type: ignore[arg-type]


def made_for(
    spec: CellSpec,
    packages: list[str],
    tools: dict[str, str],
    closure: Closure,
    frozen: Closure | None,
    progress=None,
) -> StoreCopy:
    """The copy for a copy mode's spec: made now, or the frozen one as it is (StoreCopy)."""
    store_dir: str = spec.store_dir  # type: ignore[assignment]
    if frozen is not None:
        return current(store_dir)
    return sync(store_dir, closure, spec.store, key_of(packages, tools, spec.nixpkgs), progress)


def check_store_dir(spec: CellSpec) -> None:
    """Refuse a copy the cell could write: it would change what its next run executes (called
    before the copy is made, and by the plan)."""
    from nixcell.errors import SpecError

    writable = writable_bind(spec, spec.store_dir) if spec.store_dir is not None else None
    if writable is not None:
        raise SpecError(
            f"store dir {spec.store_dir} is inside {writable}, which the cell may write: "
            "put it elsewhere, or bind that part read-only"
        )


def writable_bind(spec: CellSpec, path: str) -> str | None:
    """The source of a writable bind through which the cell could write ``path`` or anything
    under it: one exposing it (or a part) at a cell path that no later bind covers. (bwrap
    mounts in order, the workdir first: the last bind whose target holds a cell path is the one
    seen there.)"""
    binds = [(spec.workdir, "/workspace", True)] if spec.workdir is not None else []
    binds += [(m.source, m.target, m.writable) for m in spec.mounts]
    for index, (source, target, writable) in enumerate(binds):
        if not writable:
            continue
        if _under(path, source):  # the whole store dir, at this cell path
            cell = target.rstrip("/") + path[len(source.rstrip("/")) :]
        elif _under(source, path):  # a part of it
            cell = target
        else:
            continue
        seen = [i for i, (_, t, _) in enumerate(binds) if _under(cell, t)]
        if seen and seen[-1] == index:
            return source
    return None


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def frozen_closure(store_dir: str, key: dict[str, object]) -> Closure | None:
    """An isolated copy's recorded closure (None: no copy yet, or one made by "copy" mode).

    A copy frozen for other packages is refused with how to refresh it (StateError)."""
    dfd = _open_store_dir(store_dir, create=False)
    if dfd is None:
        return None
    try:
        manifest = _read_manifest(dfd, store_dir)
        if manifest is None or manifest.get("mode") != "isolated":
            return None
        if manifest.get("key") != key:
            raise StateError(
                f"store mode 'isolated': {store_dir} is frozen for packages "
                f"{_names(manifest.get('key'))}, not {_names(key)}: delete {store_dir} "
                "(or run `nixcell reinit`) to copy the closure again"
            )
        closure = _closure_of(manifest, store_dir)
        os.close(_open_child(dfd, PATHS, store_dir, create=False))  # (a real directory)
        missing = missing_entry(store_dir, closure.paths)
        if missing is not None:
            raise StateError(
                f"store mode 'isolated': {store_dir} lacks {missing}: delete {store_dir} "
                "to copy the closure again"
            )
        return closure
    finally:
        os.close(dfd)


def sync(
    store_dir: str, closure: Closure, mode: str, key: dict[str, object], progress=None
) -> StoreCopy:
    """Make ``store_dir`` hold exactly ``closure`` and record it in the manifest (``mode``
    "isolated": it is frozen from now on). ``progress(line)`` hears of each path copied."""
    dfd = _open_store_dir(store_dir, create=True)
    assert dfd is not None
    try:
        import fcntl

        fcntl.flock(dfd, fcntl.LOCK_EX)  # one writer at a time (released when dfd closes)
        pfd = _open_child(dfd, PATHS, store_dir, create=True)
        tfd = _open_child(dfd, ".tmp", store_dir, create=True)
        try:
            _clear(tfd)  # what an interrupted run left half-copied
            wanted = {os.path.basename(p): p for p in closure.paths}
            have = {n for n in os.listdir(pfd) if n not in wanted or _same_kind(pfd, n)}
            for name in sorted(set(wanted) - have):
                if progress is not None:
                    progress(f"copying {name} into {store_dir}")
                _copy_entry(wanted[name], name, tfd, pfd)
            for name in sorted(have - set(wanted)):  # no longer in the closure
                _remove(pfd, name)
        finally:
            os.close(tfd)
            os.close(pfd)
        manifest = {"format": FORMAT, "mode": mode, "key": key, "closure": closure.to_json()}
        from nixcell.fsio import write_atomic

        data = json.dumps(manifest, indent=1, sort_keys=True)
        write_atomic(MANIFEST, data, mode=0o644, durable=True, dir_fd=dfd)
        return StoreCopy(os.path.join(store_dir, PATHS), manifest_stamp(store_dir) or "")
    finally:
        os.close(dfd)


def current(store_dir: str) -> StoreCopy:
    """The copy as it is (an isolated one, frozen): its bind source and manifest stamp."""
    return StoreCopy(os.path.join(store_dir, PATHS), manifest_stamp(store_dir) or "")


# -- the directory -----------------------------------------------------------------------------


def check_copy_dir(store_dir: str) -> None:
    """Refuse ``store_dir`` as ``_open_store_dir`` would (a cached plan's, on the warm path)."""
    fd = _open_store_dir(store_dir, create=False)
    if fd is not None:
        os.close(fd)


def _open_store_dir(store_dir: str, create: bool) -> int | None:
    """An fd of ``store_dir`` reached without following any link; created (0755) when asked and
    missing (its parent must exist). Refused when it is not the invoking user's (or root's), or
    when others may write it: they could change what every later cell runs."""
    parent, name = os.path.split(os.path.normpath(store_dir))
    pfd = _walk(parent, store_dir)
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=pfd)
        try:
            fd = os.open(name, _DIR, dir_fd=pfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _refused(store_dir, exc) from None
    finally:
        os.close(pfd)
    st = os.fstat(fd)
    if st.st_uid not in (os.getuid(), 0) or st.st_mode & 0o022:
        os.close(fd)
        raise StateError(
            f"store dir {store_dir}: owned by uid {st.st_uid} with mode {st.st_mode & 0o7777:04o}; "
            "it must be yours and writable by you alone"
        )
    return fd


def _walk(path: str, store_dir: str) -> int:
    fd = os.open("/", _DIR)
    try:
        for part in [p for p in path.split("/") if p]:
            try:
                nxt = os.open(part, _DIR, dir_fd=fd)
            except OSError as exc:
                raise _refused(store_dir, exc) from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refused(store_dir: str, exc: OSError) -> StateError:
    import errno

    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        real = os.path.realpath(store_dir)
        hint = f"; name the real path, {real}" if real != store_dir else ""
        return StateError(
            f"store dir {store_dir}: a symbolic link or not a directory on the way{hint}"
        )
    return StateError(f"store dir {store_dir}: {exc.strerror}")


def _open_child(dfd: int, name: str, store_dir: str, create: bool) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o755, dir_fd=dfd)
    try:
        return os.open(name, _DIR, dir_fd=dfd)
    except OSError as exc:
        raise _refused(os.path.join(store_dir, name), exc) from None


def _read_manifest(dfd: int, store_dir: str) -> dict | None:
    try:
        fd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refused(os.path.join(store_dir, MANIFEST), exc) from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(1 << 24)
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f"store dir {store_dir}: unreadable {MANIFEST}: delete {store_dir}")
    return data


def _closure_of(manifest: dict, store_dir: str) -> Closure:
    from nixcell.errors import NixError

    try:
        closure = Closure.from_json(manifest["closure"])
        closure.check()
    except (KeyError, TypeError, ValueError, AttributeError, NixError):
        raise StateError(
            f"store dir {store_dir}: its {MANIFEST} records no valid closure: delete {store_dir}"
        ) from None
    return closure


def _names(key: object) -> str:
    packages = key.get("packages") if isinstance(key, dict) else None
    return ", ".join(str(p) for p in packages) if isinstance(packages, list) else "(unknown)"


# -- copying -----------------------------------------------------------------------------------


def _copy_entry(source: str, name: str, tfd: int, pfd: int) -> None:
    """Copy the store path ``source`` to paths/<name>: built under .tmp, then renamed."""
    if os.path.dirname(source) != STORE_DIR or "/" in name or name.startswith("."):
        raise StateError(f"not a store path: {source}")
    temp = f"{name}.{os.getpid()}.{os.urandom(4).hex()}"
    sfd = os.open(STORE_DIR, _DIR)
    try:
        mode = _copy_node(sfd, name, tfd, temp, top=True)
        # a directory moves to another parent only while writable (its ".." changes): its
        # store mode comes after the rename, on the entry reached by fd
        os.rename(temp, name, src_dir_fd=tfd, dst_dir_fd=pfd)
        if mode is not None:
            fd = os.open(name, _DIR, dir_fd=pfd)
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError, StateError):
            _remove(tfd, temp)
        raise StateError(f"cannot copy {source} into the store dir: {exc.strerror}") from None
    finally:
        os.close(sfd)


def _copy_node(sdir: int, sname: str, ddir: int, dname: str, top: bool = False) -> int | None:
    """Copy one file, symlink or directory (recursively) from ``sdir`` to ``ddir``; never
    follows a link on either side, and the target names are created here (O_EXCL). ``top``: a
    directory keeps its write bit; its store mode is returned for the caller to set."""
    st = os.stat(sname, dir_fd=sdir, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(sname, dir_fd=sdir), dname, dir_fd=ddir)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dname, 0o700, dir_fd=ddir)
        src = os.open(sname, _DIR, dir_fd=sdir)
        dst = os.open(dname, _DIR, dir_fd=ddir)
        try:
            for child in sorted(os.listdir(src)):
                _copy_node(src, child, dst, child)
            mode = stat.S_IMODE(st.st_mode) & 0o555 | 0o500
            if top:
                return mode
            os.fchmod(dst, mode)
        finally:
            os.close(src)
            os.close(dst)
    elif stat.S_ISREG(st.st_mode):
        src = os.open(sname, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sdir)
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            dst = os.open(dname, flags, 0o600, dir_fd=ddir)
            try:
                left = st.st_size
                while left > 0:
                    sent = os.sendfile(dst, src, None, min(left, 1 << 30))
                    if sent == 0:
                        break
                    left -= sent
                os.fchmod(dst, stat.S_IMODE(st.st_mode) & 0o555 | 0o444)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    # (a store path holds nothing else: no devices, FIFOs or sockets are copied)
    return None


def _same_kind(pfd: int, name: str) -> bool:
    """Whether the copy's entry is what the store's is (a directory, file or link); anything
    else — a link planted for a directory — is removed and copied again."""
    kinds = []
    for dfd, path in ((pfd, name), (None, os.path.join(STORE_DIR, name))):
        try:
            kinds.append(stat.S_IFMT(os.stat(path, dir_fd=dfd, follow_symlinks=False).st_mode))
        except OSError:
            return False
    if kinds[0] != kinds[1]:
        _remove(pfd, name)
        return False
    return True


def _remove(dfd: int, name: str) -> None:
    """Remove ``name`` in the directory ``dfd`` (a link is removed, never followed)."""
    from nixcell.treeremove import remove_tree

    remove_tree(f"/proc/self/fd/{dfd}/{name}")


def _clear(dfd: int) -> None:
    for name in os.listdir(dfd):
        _remove(dfd, name)
