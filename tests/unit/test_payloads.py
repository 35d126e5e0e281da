"""Compressed payloads looked into as they pass: cut before any part of a secret, else intact."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import zipfile
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nixcell.net.payloads import Inspector, SecretInPayload

SECRET = b"ghp_Zq8sXc2Lw9Rt4Yb7Nm1Kp5Vd3Hf6Jg0Ua"


def _zip(data: bytes, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        archive.writestr("a.txt", data)
    return out.getvalue()


PACK = {
    "gzip": gzip.compress,
    "zlib": zlib.compress,
    "bz2": bz2.compress,
    "xz": lzma.compress,
    "zip": _zip,
    "gz-in-gz": lambda d: gzip.compress(gzip.compress(d)),
    "zip-in-gz": lambda d: gzip.compress(_zip(d)),
    "gz-in-zip": lambda d: _zip(gzip.compress(d)),
    "two-members": lambda d: gzip.compress(b"first member ") + gzip.compress(d),
}


def unpack(blob: bytes) -> bytes:
    """A lenient reader's view of (a prefix of) ``blob``: every layer as far as it goes."""
    out = b""
    for make in (lambda: zlib.decompressobj(47), bz2.BZ2Decompressor, lzma.LZMADecompressor):
        try:
            d = make()
            out += d.decompress(blob)
            while getattr(d, "eof", False) and d.unused_data:
                rest, d = d.unused_data, make()
                out += d.decompress(rest)
        except Exception:
            pass
    at = blob.find(b"PK\x03\x04")
    if at >= 0:
        start = at + 30 + int.from_bytes(blob[at + 26 : at + 28], "little")
        start += int.from_bytes(blob[at + 28 : at + 30], "little")
        try:
            out += zlib.decompressobj(-15).decompress(blob[start:])
        except Exception:
            out += blob[start:]
    return out + unpack(out) if out and out != blob else out


def relay(blob: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    """What the cell would get, and whether the response was cut."""
    inspector = Inspector(lambda data: SECRET in data, len(SECRET))
    sent, at = b"", 0
    try:
        for cut in [*sorted(set(cuts)), len(blob)]:
            for piece in inspector.feed(blob[at:cut]):
                sent += piece
            at = max(at, cut)
        for piece in inspector.finish():
            sent += piece
    except SecretInPayload:
        return sent, True
    return sent, False


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(sorted(PACK)),
    before=st.binary(max_size=3000),
    after=st.binary(max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_a_secret_inside_is_cut_before_the_cell_gets_any_part_of_it(kind, before, after, cuts):
    blob = PACK[kind](before + SECRET + after)
    sent, was_cut = relay(blob, cuts)
    assert was_cut, kind
    assert SECRET[:8] not in unpack(sent) + sent, kind  # not even the start of it


@settings(max_examples=100, deadline=None)
@given(
    kind=st.sampled_from(sorted(PACK)),
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=12),
)
def test_a_clean_payload_passes_byte_for_byte(kind, data, cuts):
    blob = PACK[kind](data.replace(SECRET, b""))
    sent, was_cut = relay(blob, cuts)
    assert not was_cut and sent == blob


@pytest.mark.parametrize(
    "blob",
    [
        b"\x1f\x8b\x08" + b"\x00" * 40,  # a gzip header with garbage after it
        _zip(b"x" * 100)[:40] + b"\xff" * 100,  # a zip entry that is not deflate data
    ],
)
def test_what_cannot_be_looked_into_is_cut(blob):
    _, was_cut = relay(blob, [])
    assert was_cut


def test_a_plain_body_is_not_held_back():
    inspector = Inspector(lambda data: SECRET in data, len(SECRET))
    assert inspector.feed(b"hello world, plain text") == [b"hello world, plain text"]
