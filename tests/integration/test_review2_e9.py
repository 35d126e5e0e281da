"""Second outside review of issue 9: each attack that worked, as a test.

A root-run cell's stdio pipes were lent to it by a chown (sandbox/stdioowner.py). Owning the
inode, the cell could reopen its stdin pipe for *writing*: a host ``while read`` loop around
nixcell then read, after the cell, lines the cell chose (the classic "a command in the loop eats
its stdin", turned into injection). It could also reopen its stdout for reading (what another
host writer of the same pipe wrote) and chmod the pipe; two cells sharing one pipe (``xargs -P``)
left it a cell uid's, with that cell's mode, for good. Now each pipe gains only the "other" bit
of its direction, and loses it after.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest
from tests.conftest import NIXCELL

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="pipes are lent only by a root-run nixcell"),
]
RUN = [NIXCELL, "run", "-T", "-p", "coreutils", "--", "sh", "-c"]


def test_a_cell_cannot_write_into_the_stdin_a_host_loop_reads_next(offline_set):
    loop = (
        f"printf 'one\\ntwo\\n' | while read x; do echo host-got-$x; [ $x = one ] && "
        f"{NIXCELL} run -T -p coreutils -- sh -c 'echo INJECTED > /dev/stdin; echo rc=$?'; done"
    )
    done = subprocess.run(["sh", "-c", loop], capture_output=True, timeout=120)
    lines = done.stdout.decode().splitlines()
    assert lines[0] == "host-got-one" and lines[-1] == "host-got-two", done.stderr
    assert "host-got-INJECTED" not in lines and lines[1] != "rc=0"


# what the cell tries on its stdio pipes (each in a child sh: a failed `exec` redirection ends
# the shell), and whether it may (pipes root made)
REOPENS = {
    "read /dev/stdin": ("exec 4< /dev/stdin", True),
    "write /dev/stdout": ("exec 4> /dev/stdout", True),
    "write /dev/stderr": ("exec 4> /dev/stderr", True),
    "write into stdin": ("exec 4> /dev/stdin", False),
    "read back stdout": ("exec 4< /proc/self/fd/1", False),
    "read back stderr": ("exec 4< /proc/self/fd/2", False),
    "stdin read-write": ("exec 4<> /dev/stdin", False),
    "chmod stdin": ("chmod 666 /proc/self/fd/0", False),
    "chmod stdout": ("chmod 666 /proc/self/fd/1", False),
}


@pytest.mark.parametrize("name", list(REOPENS))
def test_each_stdio_pipe_reopens_only_in_its_direction(offline_set, name):
    command, allowed = REOPENS[name]
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    os.write(w_in, b"in\n")
    os.close(w_in)
    before = [os.fstat(fd) for fd in (r_in, r_out)]
    shell = f"if sh -c '{command}'; then echo rc=0; else echo rc=1; fi"
    done = subprocess.run([*RUN, shell], stdin=r_in, stdout=w_out, stderr=subprocess.PIPE,
                          timeout=120)  # fmt: skip
    os.close(w_out)
    after = [os.fstat(fd) for fd in (r_in, r_out)]
    os.close(r_in)
    with os.fdopen(r_out, "rb") as got:
        out = got.read().decode()
    assert done.returncode == 0, done.stderr
    assert out.endswith("rc=0\n") is allowed, out
    for was, now in zip(before, after, strict=True):  # owner and mode as they were
        assert (now.st_uid, now.st_gid, now.st_mode) == (was.st_uid, was.st_gid, was.st_mode)


def _wait_for(check, what: str, limit: float = 120) -> None:
    end = time.monotonic() + limit
    while not check():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def test_a_pipe_two_cells_share_gets_its_owner_and_mode_back(offline_set, tmp_path):
    """Cell A tries to make the pipe 0666; cell B starts while A runs, A ends first, then B:
    the pipe is root's and 0600 again (with the chown: A's uid, 0666)."""
    r, w = os.pipe()
    before = os.fstat(w)
    a_cmd = "chmod 666 /proc/self/fd/1; touch a-lent; while [ ! -e b-up ]; do sleep 0.05; done"
    b_cmd = "touch b-up; while [ ! -e a-gone ]; do sleep 0.05; done"
    argv = [NIXCELL, "run", "-T", "--workdir", str(tmp_path), "-p", "coreutils", "--", "sh", "-c"]
    drain = subprocess.Popen(["cat"], stdin=r, stdout=subprocess.DEVNULL)
    os.close(r)
    try:
        a = subprocess.Popen([*argv, a_cmd], stdout=w, stderr=subprocess.PIPE)
        _wait_for(lambda: (tmp_path / "a-lent").exists() or a.poll() is not None, "cell A")
        b = subprocess.Popen([*argv, b_cmd], stdout=w, stderr=subprocess.PIPE)
        assert a.wait(timeout=120) == 0, a.stderr.read()
        (tmp_path / "a-gone").touch()
        assert b.wait(timeout=120) == 0, b.stderr.read()
        after = os.fstat(w)
        got = (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode))
        assert got == (before.st_uid, before.st_gid, stat.S_IMODE(before.st_mode))
    finally:
        os.close(w)
        drain.wait(timeout=30)


@pytest.mark.xfail(
    strict=True,
    reason="open: a --hide below a writable bind is a path, and the cell may rename the "
    "directories above it on the host (fix: pin them as mount points, sources opened by fd)",
)
def test_a_cell_cannot_move_a_hidden_file_out_from_under_its_hide(offline_set, tmp_path):
    """`--workdir . --hide ./sub/secret`: the cell cannot read the file, but it can rename
    `sub` (the hide's mount moves with it, so not in this run); the next run with the same
    flags hides the now missing ./sub/secret and shows sub2/secret."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "secret").write_text("review2-hidden-value\n")
    argv = [NIXCELL, "run", "-T", "--workdir", str(tmp_path), "--hide", "./sub/secret",
            "-p", "coreutils", "--", "sh", "-c"]  # fmt: skip
    first = subprocess.run([*argv, "cat sub/secret; mv sub sub2"], capture_output=True,
                           cwd=tmp_path, timeout=120)  # fmt: skip
    assert b"review2-hidden-value" not in first.stdout
    second = subprocess.run([*argv, "cat sub2/secret sub/secret"], capture_output=True,
                            cwd=tmp_path, timeout=120)  # fmt: skip
    assert b"review2-hidden-value" not in second.stdout
