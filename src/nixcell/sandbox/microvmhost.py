"""The microVM's host launcher: stage the closure in a private mount namespace, drop to the
cell's uid, exec QEMU. Run as ``python3 -I microvmhost.py SPEC`` (stdlib only: no nixcell
import, so it starts in tens of milliseconds).

Why a mount namespace of its own: QEMU's 9p share must hold the closure's paths and nothing else
of /nix/store. The launcher unshares its mount namespace (private propagation), mounts a tmpfs
over the shared, empty ``stage`` directory (``/run/nixcell/microvm/stage``) and bind-mounts each
closure path read-only into ``store/`` there, writes the cell's ``cfg/`` files, makes the tmpfs
read-only, then becomes the cell's unprivileged host uid (no groups but ``kvm`` when KVM is
used, no-new-privs, parent-death signal) and execs QEMU. The namespace, and every mount in it,
ends with QEMU: nothing is left on the host, even after a ``kill -9``.

SPEC (JSON): ``stage``, ``closure`` (store paths), ``files`` ({relative path: text}),
``blobs`` ({relative path: hex bytes}: the seccomp program), ``uid``, ``gid``, ``groups``,
``argv`` (QEMU's).
"""

import ctypes
import json
import os
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND = 1, 2, 4, 32, 4096
MS_REC, MS_PRIVATE = 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(
    src: str | None, dest: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    enc = [None if x is None else x.encode() for x in (src, dest, fstype, data)]
    _check(libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]), f"mount {dest}")


def stage(spec: dict) -> None:
    top = spec["stage"]
    _check(libc.unshare(CLONE_NEWNS), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("nixcell-stage", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=16m")
    store = os.path.join(top, "store")
    os.mkdir(store, 0o755)
    root = spec.get("nix_root") or ""  # a Nix root of the host's own: its files back the paths
    for path in spec["closure"]:
        name = os.path.basename(path)
        if not path.startswith("/nix/store/") or "/" in path[11:] or name in ("", ".", ".."):
            raise OSError(0, f"not a store path: {path}")
        target = os.path.join(store, name)
        st = os.lstat(root + path)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(root + path), target)
            continue
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(target, 0o755)
        else:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        mount(root + path, target, None, MS_BIND)
        mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    for index, fd in spec.get("binds", []):
        target = os.path.join(top, "binds", str(index))
        os.makedirs(target, 0o755)
        # the idmapped tree nixcell opened (without following links) and passed as an fd
        nr_move_mount, empty_path = 429, 4
        ret = libc.syscall(nr_move_mount, fd, b"", -100, target.encode(), empty_path)
        _check(ret, f"attach {target}")
        os.close(fd)
    files = {rel: text.encode() for rel, text in spec["files"].items()}
    files.update({rel: bytes.fromhex(data) for rel, data in spec.get("blobs", {}).items()})
    for rel, data in files.items():
        dest = os.path.join(top, rel)
        os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
        fd = os.open(dest, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    mount(None, top, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def become(spec: dict) -> None:
    os.setgroups(spec["groups"])
    os.setresgid(spec["gid"], spec["gid"], spec["gid"])
    os.setresuid(spec["uid"], spec["uid"], spec["uid"])
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no-new-privs")
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
    if os.getppid() != spec["parent"]:  # nixcell died before the signal was armed
        os._exit(137)


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        if spec.get("stage"):
            stage(spec)
        if spec["uid"] is not None:
            become(spec)
        os.execv(spec["argv"][0], spec["argv"])
    except OSError as exc:
        sys.stderr.write(f"nixcell: cannot start the microVM: {exc.strerror or exc}\n")
        os._exit(125)


if __name__ == "__main__":
    main()
