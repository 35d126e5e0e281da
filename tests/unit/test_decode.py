"""net/decode.py: which Content-Encodings the proxy reads for credential hosts, and how."""

from __future__ import annotations

import gzip
import zlib

import pytest

from nixcell.net.decode import (
    PIECE,
    BadEncodedBody,
    UndecodableEncoding,
    decoder_for,
    without_encoding,
)


@pytest.mark.parametrize("value", [None, b"identity", b" Identity , "])
def test_identity_bodies_need_no_decoder(value):
    headers = [] if value is None else [(b"content-encoding", value)]
    assert decoder_for(headers) is None


@pytest.mark.parametrize(
    ("value", "coding"),
    [
        (b"gzip", "gzip"),
        (b"X-GZIP", "x-gzip"),
        (b"deflate", "deflate"),
        (b"identity, gzip", "gzip"),
    ],
)
def test_zlib_codings_get_a_decoder(value, coding):
    decoder = decoder_for([(b"content-encoding", value)])
    assert decoder is not None and decoder.coding == coding


# Every Content-Encoding header counts, in order: (header values, what the body is).
ENCODINGS = [
    ([b"identity", b"gzip"], "gzip"),  # two headers: the second is not ignored
    ([b"gzip", b"identity"], "gzip"),
    ([b"GZip"], "gzip"),
    ([b" x-gzip\t"], "x-gzip"),
    ([b"identity,,gzip"], "gzip"),
    ([b"gzip, gzip"], "gzip, gzip"),  # stacked: decoded in reverse order
    ([b"deflate", b"gzip"], "deflate, gzip"),
    ([b"gzip", b"deflate, x-gzip"], "gzip, deflate, x-gzip"),
    ([b"identity"], None),
    ([b"", b" , "], None),
    ([b"br"], "refused"),
    ([b"zstd"], "refused"),
    ([b"compress"], "refused"),
    ([b"x-compress"], "refused"),
    ([b"gzip, br"], "refused"),
    ([b"identity", b"br"], "refused"),
    ([b"br", b"gzip"], "refused"),
    ([b"gzip;q=1"], "refused"),  # no parameters on a content coding: not ours to guess
    ([b"aes128gcm"], "refused"),
    ([b"gzip"] * 5, "refused"),  # more stages than nixcell decodes
]


@pytest.mark.parametrize(("values", "expected"), ENCODINGS)
def test_every_content_encoding_header_and_list_counts(values, expected):
    headers = [(b"Content-Type", b"text/plain")] + [(b"content-encoding", v) for v in values]
    if expected == "refused":
        with pytest.raises(UndecodableEncoding):
            decoder_for(headers)
        return
    decoder = decoder_for(headers)
    assert (decoder.coding if decoder else None) == expected
    if decoder is None:
        return
    body = b"auth=Bearer ghp_" + bytes(range(256)) * 20
    data = body
    for coding in expected.split(", "):  # applied in header order
        data = gzip.compress(data) if "gzip" in coding else zlib.compress(data)
    decoder = decoder_for(headers)
    out = b"".join(p for i in range(0, len(data), 7) for p in decoder.feed(data[i : i + 7]))
    assert out + b"".join(decoder.finish()) == body


def test_stacked_bomb_stays_bounded():
    inner = gzip.compress(b"\0" * (64 << 20))
    data = gzip.compress(inner)
    decoder = decoder_for([(b"content-encoding", b"gzip, gzip")])
    sizes = [len(p) for p in decoder.feed(data)]
    assert sizes and max(sizes) <= PIECE and sum(sizes) == 64 << 20
    with pytest.raises(BadEncodedBody):
        decoder_for([(b"content-encoding", b"gzip, gzip")]).decode_all(data, 1 << 20)


def test_without_encoding_drops_encoding_and_length_only():
    headers = [(b"Content-Encoding", b"gzip"), (b"content-length", b"9"), (b"etag", b"x")]
    assert without_encoding(headers) == [(b"etag", b"x")]


def decode(coding: bytes, data: bytes, step: int = 1000) -> bytes:
    decoder = decoder_for([(b"content-encoding", coding)])
    assert decoder is not None
    out = b"".join(p for i in range(0, len(data), step) for p in decoder.feed(data[i : i + step]))
    return out + decoder.flush()


def test_gzip_zlib_and_raw_deflate_decode_in_any_chunking():
    body = b"auth=Bearer ghp_" + bytes(range(256)) * 50
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for coding, data in (
        (b"gzip", gzip.compress(body)),
        (b"deflate", zlib.compress(body)),
        (b"deflate", raw.compress(body) + raw.flush()),
    ):
        for step in (1, 7, 1 << 20):
            assert decode(coding, data, step) == body, (coding, step)


def test_output_comes_in_bounded_pieces():
    bomb = gzip.compress(b"\0" * (50 * PIECE))  # ~50 KiB that inflates to 50 MiB
    decoder = decoder_for([(b"content-encoding", b"gzip")])
    assert decoder is not None
    sizes = [len(piece) for piece in decoder.feed(bomb)]
    assert max(sizes) <= PIECE and sum(sizes) == 50 * PIECE
    with pytest.raises(BadEncodedBody, match="over"):
        decoder_for([(b"content-encoding", b"gzip")]).decode_all(bomb, 4 << 20)  # type: ignore[union-attr]


def test_truncated_or_garbage_bodies_are_errors():
    with pytest.raises(BadEncodedBody, match="truncated"):
        decode(b"gzip", gzip.compress(b"x" * 5000)[:-20])
    with pytest.raises(BadEncodedBody, match="does not decode"):
        decode(b"gzip", b"this is not gzip at all")


def test_gzip_members_back_to_back_are_all_decoded():
    body = gzip.compress(b"first member\n") + gzip.compress(b"second member\n" * 1000)
    for step in (1, 5, 1 << 20):
        assert decode(b"gzip", body, step) == b"first member\n" + b"second member\n" * 1000


def test_bytes_after_a_deflate_stream_are_an_error():
    with pytest.raises(BadEncodedBody, match="after the end"):
        decode(b"deflate", zlib.compress(b"body") + b"trailing bytes nobody decoded")
