"""Opening a root-run cell's stdio pipes to it (sandbox/stdioowner.py): only anonymous pipes,
only in their direction, the bits cleared again, and no pipe end held open by the lending
(real fds, no cell)."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from nixcell.sandbox.stdioowner import give_back, lend

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another user's pipes need root")
R, W = stat.S_IROTH, stat.S_IWOTH


def _mode(fd: int) -> int:
    return stat.S_IMODE(os.fstat(fd).st_mode)


def _pipe(_tmp):
    r, w = os.pipe()
    return r, [r, w], True


def _fifo(tmp):
    path = tmp / "fifo"
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDWR)
    return fd, [fd], False


def _file(tmp):
    fd = os.open(tmp / "f", os.O_RDWR | os.O_CREAT, 0o600)
    return fd, [fd], False


def _socket(_tmp):
    a, b = socket.socketpair()
    return a.detach(), [b.detach()], False


@pytest.mark.parametrize("make", [_pipe, _fifo, _file, _socket], ids=lambda m: m.__name__[1:])
@pytest.mark.parametrize(("index", "bit"), [(0, R), (1, W), (2, W)])
def test_only_anonymous_pipes_are_opened_one_way_and_all_come_back(make, index, bit, tmp_path):
    fd, fds, lendable = make(tmp_path)
    fds = [fd, *fds]
    before = os.fstat(fd)
    where: list[int | None] = [None, None, None]
    where[index] = fd
    lent = lend(where)
    assert _mode(fd) == (stat.S_IMODE(before.st_mode) | (bit if lendable else 0))
    assert len(lent) == int(lendable)
    assert os.fstat(fd)[4:6] == before[4:6]  # the owner never changes
    give_back(lent)
    assert _mode(fd) == stat.S_IMODE(before.st_mode) and lent == []
    for f in dict.fromkeys(fds):
        os.close(f)


def test_lending_holds_no_pipe_end_open():
    """The reader still sees EOF when the writer closes while the pipe is lent."""
    r, w = os.pipe()
    lent = lend([r, w, w])
    assert len(lent) == 1 and _mode(r) == 0o600 | R | W  # one inode, lent once
    os.write(w, b"x")
    os.close(w)
    assert os.read(r, 10) == b"x" and os.read(r, 10) == b""
    give_back(lent)
    assert _mode(r) == 0o600
    os.close(r)


def test_two_lenders_of_one_pipe_leave_it_as_it_was():
    """xargs -P: the second lender adds nothing, so whichever order they end in the pipe is
    0600 again (a lender that recorded the mode before would restore the first one's bits)."""
    r, w = os.pipe()
    first = lend([None, w])
    second = lend([None, w])
    assert (len(first), second) == (1, [])
    give_back(first)
    give_back(second)
    assert _mode(w) == 0o600
    os.close(r)
    os.close(w)
