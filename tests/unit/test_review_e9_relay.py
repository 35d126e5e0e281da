"""The relay when the host's reader of a cell's output goes away (review of issue 9)."""

from __future__ import annotations

import os

import pytest

from nixcell.sandbox import relay
from nixcell.sandbox.relay import Link


def _pipes():
    our_r, cell_w = os.pipe()
    host_r, host_w = os.pipe()
    os.set_blocking(our_r, False)
    return cell_w, our_r, host_r, host_w


def test_a_reader_gone_hangs_up_the_cells_end():
    """EPIPE on the host's side: our end of the cell's stream is closed, so the cell's next
    write fails as it would without nixcell (it does not run on with its output dropped)."""
    cell_w, our_r, host_r, host_w = _pipes()
    os.close(host_r)
    out = Link(our_r, host_w, False)
    os.write(cell_w, b"y\n" * 10)
    relay._step([out], [], 1.0)
    assert out.gone and not out.open and out.src_closed
    with pytest.raises(BrokenPipeError):
        os.write(cell_w, b"more")
    relay.close_all([cell_w, host_w])


@pytest.mark.parametrize("dst", ["/dev/full", "closed"])
def test_a_full_or_closed_host_output_only_drops(dst):
    """2>/dev/full or a closed descriptor is not a reader that went away: the cell goes on."""
    cell_w, our_r, host_r, host_w = _pipes()
    relay.close_all([host_r, host_w])
    target = os.open("/dev/full", os.O_WRONLY) if dst == "/dev/full" else host_w
    out = Link(our_r, target, False)
    os.write(cell_w, b"data")
    relay._step([out], [], 1.0)
    assert out.broken and not out.gone and out.open
    os.write(cell_w, b"still writable")
    relay.close_all([cell_w, our_r] + ([target] if dst == "/dev/full" else []))
