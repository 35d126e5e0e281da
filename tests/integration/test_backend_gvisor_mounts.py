"""A gVisor cell's mount points inside host directories it binds (real runsc, root-run).

runsc made a missing mount point itself, resolving the destination inside the sandbox: a symlink
planted in a workdir moved the mount elsewhere in the cell (or made runsc create directories
where it led on the host, or fail in its raw words), and what it made belonged to the cell's
raw slot uid. Each class of planted link is refused in one line before anything runs, nothing
is made where it leads; the points nixcell makes belong to the invoker.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.conftest import NIXCELL
from tests.integration.gvisorrig import runsc_processes

from nixcell.sandbox import backends, dockerhost

pytestmark = pytest.mark.skipif(
    not backends.availability("gvisor").ok,
    reason=f"gvisor cannot run here: {backends.availability('gvisor').detail}",
)

# (links planted in the workdir: name -> target, the mount's destination under /workspace,
# bind a file (not the directory), the name the refusal gives)
PLANTED = {
    "relative, out of the workdir": ({"sub3": "../../../../tmp/elsewhere"}, "sub3", False, "sub3"),
    "absolute, back into the workspace": ({"sub5": "/workspace/real"}, "sub5/m", False, "sub5"),
    "absolute, onto the cell's /etc": ({"sub": "/etc"}, "sub", False, "sub"),
    "a deeper component": ({"a/b": "/workspace/real"}, "a/b/c/d", False, "a/b"),
    "the last component, a file's mount": ({"f": "/workspace/real/f"}, "f", True, "f"),
    "a dangling link": ({"gone": "/nonexistent"}, "gone", False, "gone"),
}


def run(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI; ``.args`` ends with what it left: its bundle dirs and runsc processes (by its
    pid, which names its cells: other engineers' cells may run meanwhile)."""
    argv = [NIXCELL, "run", "--backend", "gvisor", "-p", "coreutils", *args]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        out, err = child.communicate(timeout=120)
    root = dockerhost.root_dir("gvisor")
    left = [d for d in os.listdir(root) if d.startswith(f"{child.pid}-")]
    left += [f"pid {p}" for p in runsc_processes(f"nixcell-{child.pid}-")]
    return subprocess.CompletedProcess([*argv, left], child.returncode, out, err)


def errors(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    """stderr's lines but the offline set's notice (a first run here may print it)."""
    return [x for x in proc.stderr.decode().splitlines() if "no nixpkgs found" not in x]


def tree(root: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(root)), p.lstat().st_uid, p.lstat().st_gid) for p in root.rglob("*")
    )


@pytest.mark.parametrize("case", PLANTED, ids=list(PLANTED))
def test_a_mount_through_a_link_planted_in_the_workdir_is_refused(offline_set, tmp_path, case):
    links, dest, is_file, named = PLANTED[case]
    work, ro = tmp_path / "w", tmp_path / "ro"
    (work / "real").mkdir(parents=True)
    ro.mkdir()
    (ro / "file").write_text("ro\n")
    for name, target in links.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).symlink_to(target)
    before = tree(work)
    source = ro / "file" if is_file else ro
    proc = run("--workdir", str(work), "--ro-bind", f"{source}:/workspace/{dest}", "--", "true")
    assert proc.returncode != 0, proc
    assert len(errors(proc)) == 1, proc.stderr  # one line, nixcell's
    line = errors(proc)[0]
    assert line.startswith(f"nixcell: the gvisor backend refuses the mount at /workspace/{dest}: ")
    assert f"{work}/{named} is a symbolic link" in line, line
    assert tree(work) == before  # nothing made where the link leads (nor anywhere)
    assert not Path("/tmp/elsewhere").exists()
    assert proc.args[-1] == []  # no bundle directory, no runsc process of its cells


def test_mount_points_made_in_a_workdir_belong_to_the_invoker(offline_set, tmp_path):
    work, ro = tmp_path / "w", tmp_path / "ro"
    work.mkdir()
    ro.mkdir()
    (ro / "file").write_text("ro\n")
    (work / "kept").mkdir()  # an existing directory on the way is used as it is
    proc = run(
        "--workdir", str(work),
        "--ro-bind", f"{ro}:/workspace/mp/deep",
        "--ro-bind", f"{ro / 'file'}:/workspace/kept/f",
        "--", "cat", "/workspace/mp/deep/file", "/workspace/kept/f",
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, b"ro\nro\n"), proc
    me = (os.getuid(), os.getgid())
    assert tree(work) == [
        ("kept", *me), ("kept/f", *me), ("mp", *me), ("mp/deep", *me)
    ]  # fmt: skip
    assert (work / "kept" / "f").is_file() and (work / "mp" / "deep").is_dir()
    # a file where a directory is needed: refused in one line, not runsc's failure
    (work / "plain").write_text("x")
    proc = run("--workdir", str(work), "--ro-bind", f"{ro}:/workspace/plain/m", "--", "true")
    assert proc.returncode != 0 and len(errors(proc)) == 1, proc.stderr
    assert b"refuses the mount at /workspace/plain/m: " in proc.stderr
    assert f"{work}/plain is not a directory".encode() in proc.stderr


DEVICES = """
import errno, json, os, stat
def attempt(fn):
    try:
        fn(); return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
st = os.stat("/dev/fuse")
print(json.dumps({
    "net": os.listdir("/dev/net"),
    "tun": attempt(lambda: os.open("/dev/net/tun", os.O_RDWR)),
    "fuse": attempt(lambda: os.open("/dev/fuse", os.O_RDWR)),
    "fuse_kind": "file" if stat.S_ISREG(st.st_mode) else oct(st.st_mode),
    "fuse_size": st.st_size,
    "null": attempt(lambda: os.write(os.open("/dev/null", os.O_WRONLY), b"x")),
}))
"""


def test_the_cells_dev_has_no_tun_and_no_fuse(offline_set):
    """gVisor's own /dev has net/tun and fuse (their ioctls and mounts answer EPERM in the
    Sentry): both are left out, an empty read-only /dev/net and an empty read-only file over
    /dev/fuse, so nothing reaches either device."""
    import json

    proc = run("-p", "python3", "--", "python3", "-c", DEVICES)
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    assert facts == {
        "net": [], "tun": "ENOENT", "fuse": "EACCES", "fuse_kind": "file", "fuse_size": 0,
        "null": "ok",
    }, facts  # fmt: skip
