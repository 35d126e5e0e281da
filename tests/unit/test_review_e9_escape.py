"""relay.Escape: ssh's ``~.`` on the user's terminal (review of issue 9)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nixcell.sandbox.relay import Escape


@pytest.mark.parametrize(
    ("typed", "sent", "fired"),
    [
        (b"~.", b"", True),
        (b"ls\r~.rest", b"ls\r", True),
        (b"ls\n~.", b"ls\n", True),
        (b"a~.", b"a~.", False),  # not at the start of a line
        (b"~~.", b"~.", False),  # ~~ types one ~
        (b"~x", b"~x", False),
        (b"\r~\r~.", b"\r~\r", True),
        (b"~", b"", False),  # held until the next key
    ],
)
def test_escape_table(typed, sent, fired):
    esc = Escape()
    assert (esc.filter(typed), esc.fired) == (sent, fired)


@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=5))
def test_chunking_does_not_matter_and_without_tilde_nothing_changes(data, cuts):
    whole = Escape()
    expected = whole.filter(data)
    split = Escape()
    got = b""
    bounds = sorted({0, len(data), *[min(c, len(data)) for c in cuts]})
    for a, b in itertools.pairwise(bounds):
        if not split.fired:
            got += split.filter(data[a:b])
    assert (got, split.fired) == (expected, whole.fired)
    if b"~" not in data:
        assert expected == data and not whole.fired
