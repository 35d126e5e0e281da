"""Lending a root-run cell its stdio pipes (sandbox/stdioowner.py): only anonymous pipes, their
owners given back, and no pipe end held open by the lending (real fds, no cell)."""

from __future__ import annotations

import os
import socket

import pytest

from nixcell.sandbox.stdioowner import give_back, lend

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
CELL = (54321, 54321)


def _pipe(_tmp):
    r, w = os.pipe()
    return r, [r, w], True


def _fifo(tmp):
    path = tmp / "fifo"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)
    return fd, [fd], False


def _file(tmp):
    fd = os.open(tmp / "f", os.O_RDWR | os.O_CREAT, 0o600)
    return fd, [fd], False


def _socket(_tmp):
    a, b = socket.socketpair()
    return a.detach(), [b.detach()], False


@pytest.mark.parametrize("make", [_pipe, _fifo, _file, _socket], ids=lambda m: m.__name__[1:])
def test_only_anonymous_pipes_are_lent_and_all_come_back(make, tmp_path):
    fd, fds, lendable = make(tmp_path)
    fds = [fd, *fds]
    before = os.fstat(fd)[4:6]
    lent = lend([fd], *CELL)
    assert (os.fstat(fd)[4:6] == CELL) is lendable and len(lent) == int(lendable)
    give_back(lent)
    assert os.fstat(fd)[4:6] == before and lent == []
    for f in dict.fromkeys(fds):
        os.close(f)


def test_lending_holds_no_pipe_end_open():
    """The reader still sees EOF when the writer closes while the pipe is lent."""
    r, w = os.pipe()
    lent = lend([r, w, w], *CELL)
    assert len(lent) == 1  # one inode, lent once
    os.write(w, b"x")
    os.close(w)
    assert os.read(r, 10) == b"x" and os.read(r, 10) == b""
    give_back(lent)
    assert os.fstat(r)[4:6] == (0, 0)
    os.close(r)


def test_a_pipe_already_the_cells_is_left_alone():
    r, w = os.pipe()
    os.fchown(r, *CELL)
    assert lend([r], *CELL) == []
    os.close(r)
    os.close(w)


@pytest.mark.parametrize(
    ("owner", "lendable"),
    [("root", True), ("user", True), ("cell uid", False), ("cell gid", False)],
)
def test_a_pipe_on_loan_to_another_cell_is_not_lent_again(owner, lendable):
    """Lent twice, the second lending would record the first cell's uid as the owner to give
    back (review: two cells sharing one stdout left it a cell's, with that cell's mode)."""
    from nixcell.sandbox.identity import subordinate_range

    cells = subordinate_range()
    other = cells.base + cells.count - 1  # another cell's uid, not CELL
    ids = {"root": (0, 0), "user": (4242, 4242), "cell uid": (other, 0), "cell gid": (0, other)}
    r, w = os.pipe()
    os.fchown(r, *ids[owner])
    lent = lend([r], *CELL)
    assert (len(lent) == 1) is lendable
    give_back(lent)
    assert os.fstat(r)[4:6] == ids[owner]
    os.close(r)
    os.close(w)
