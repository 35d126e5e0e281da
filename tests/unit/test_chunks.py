"""Chunked request bodies (issue 8 §2): the strict chunk reader beside h11 refuses every
chunk-size, extension, CRLF or trailer spelling another parser could cut differently, gives the
same verdict however the bytes are split, and agrees with h11 on the bodies it accepts.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nixcell.net.chunks import ChunkScanner
from nixcell.net.framing import FramingError

BASE = b"POST http://up.test/x HTTP/1.1\r\nHost: up.test\r\n"
FORBIDDEN = [bytes([b]) for b in [*range(0, 9), *range(10, 32), *range(127, 256)]]


def scan(body: bytes, step: int) -> str:
    scanner = ChunkScanner()
    try:
        for i in range(0, len(body), step):
            scanner.feed(memoryview(body[i : i + step]))
    except FramingError:
        return "refused"
    return "done" if scanner.done else "open"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"5\r\nhello\r\n0\r\n\r\n", "done"),
        (b"5;name=value;q=\"a b\"\r\nhello\r\n0\r\nX-T: y\r\n\r\nGET / HTTP/1.1", "done"),
        (b"0005\r\nhello\r\n0\r\n\r\n", "done"),  # leading zeros: 16 digits at most
        (b"A\r\n0123456789\r\n0\r\n\r\n", "done"),
        (b"5\r\nhel", "open"),
        (b"0x5\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"-5\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"+5\r\nhello\r\n0\r\n\r\n", "refused"),
        (b" 5\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5 \r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5\t\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"00000000000000005\r\nhello\r\n0\r\n\r\n", "refused"),  # 17 digits
        (b"10000000000000005\r\nhello", "refused"),  # overflows 64 bits to 5
        (b"5;\x01\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5;a=\x00\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5; a\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5;\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"5\nhello\r\n0\r\n\r\n", "refused"),
        (b"5\r\nhello\n0\r\n\r\n", "refused"),
        (b"5\r\nhelloX\r\n0\r\n\r\n", "refused"),
        (b"5\r\nhello0\r\n\r\n", "refused"),  # missing CRLF after the data
        (b"5\r\nhello\r\n0\r\n\n", "refused"),
        (b"5\r\nhello\r\n0\r\nX: y\n\r\n", "refused"),
        (b"5\r\nhello\r\n0\r\nX: y\r\n z\r\n\r\n", "refused"),  # obs-fold trailer
        (b"5\r\nhello\r\n0\r\nX : y\r\n\r\n", "refused"),
        (b"5\r\nhello\r\n0\r\nX: \x00\r\n\r\n", "refused"),
        (b"\r\n5\r\nhello\r\n0\r\n\r\n", "refused"),
        (b"f" * 9000 + b"\r\n", "refused"),
    ],
)
def test_chunked_bodies(body: bytes, expected: str) -> None:
    for step in (1, 2, 7, len(body)):
        assert scan(body, step) == expected, step


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    data, wire = b"", b""
    for piece in draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5)):
        size = draw(st.sampled_from(["%x", "%X", "%04x"])) % len(piece)
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';a="x y"']))
        wire += size.encode() + ext + b"\r\n" + piece + b"\r\n"
        data += piece
    trailer = draw(st.sampled_from([b"", b"X-T: 1\r\n"]))
    return data, wire + b"0\r\n" + trailer + b"\r\n"


@settings(max_examples=300)
@given(chunked_bodies(), st.integers(1, 50))
def test_valid_chunked_bodies_pass_any_split_and_h11_reads_the_same(
    body: tuple[bytes, bytes], step: int
) -> None:
    data, wire = body
    assert scan(wire, step) == "done"
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(BASE + b"Transfer-Encoding: chunked\r\n\r\n" + wire)
    got = b""
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        got += event.data if isinstance(event, h11.Data) else b""
    assert got == data


@settings(max_examples=300)
@given(chunked_bodies(), st.integers(0, 10_000), st.sampled_from([*FORBIDDEN, b" ", b"\t"]))
def test_a_stray_byte_in_chunk_framing_is_refused(
    body: tuple[bytes, bytes], where: int, byte: bytes
) -> None:
    """A byte inserted into a chunk-size line or its extensions (not into chunk data)."""
    _, wire = body
    assume(byte not in (b" ", b"\t") or b'"' not in wire)  # blanks are legal inside quotes
    framing = [i for i in range(len(wire)) if _in_framing(wire, i)]
    where = framing[where % len(framing)]
    bad = wire[:where] + byte + wire[where:]
    assert scan(bad, 3) in ("refused", "open")


def _in_framing(wire: bytes, index: int) -> bool:
    """Whether ``index`` falls in a chunk-size line, before its CR."""
    pos = 0
    while pos < len(wire):
        line_end = wire.index(b"\r\n", pos)
        if pos <= index <= line_end:
            return True
        size = int(wire[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return False  # trailers: see the table
        pos = line_end + 2 + size + 2
        if index < pos:
            return False
    return False
