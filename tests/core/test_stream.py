"""The session stream (``COMPRESSION_ZSTD_STREAM``): one Zstandard frame per
session, a block flush after each piece (pure)."""

from __future__ import annotations

import os
import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.core.errors import ProtocolError, StreamError
from devstack.core.protocol import (
    MAX_CHUNK_BYTES,
    SAMPLE_BYTES,
    STREAM_WINDOW_LOG,
    ContentEncoder,
    StreamCompressor,
    StreamDecompressor,
    decode,
    decode_chunk,
    stream_overhead,
)
from devstack.sync.v1 import sync_pb2 as pb

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

TEXT = b"def handler(request):\n    return respond(request, status=200)\n" * 40


def _through(pieces: list[bytes]) -> list[bytes]:
    c, d = StreamCompressor(), StreamDecompressor()
    return [d.decompress(c.compress(p), limit=len(p)) for p in pieces]


def test_pieces_decode_one_by_one_in_order() -> None:
    rng = random.Random(3)
    pieces = [b"", b"x", TEXT, rng.randbytes(5000), TEXT[:100], rng.randbytes(300_000)]
    assert _through(pieces) == pieces


def test_a_later_piece_points_back_at_an_earlier_one_across_the_window() -> None:
    """What file-by-file zlib cannot do: a file repeated 8 MiB later (a
    vendored copy, a generated file) costs almost nothing the second time."""
    rng = random.Random(5)
    blob = rng.randbytes(200_000)
    filler = [rng.randbytes(MAX_CHUNK_BYTES) for _ in range(8)]
    c, d = StreamCompressor(), StreamDecompressor()
    sizes = []
    for piece in [blob, *filler, blob]:
        payload = c.compress(piece)
        assert d.decompress(payload, limit=len(piece)) == piece
        sizes.append(len(payload))
    assert sizes[0] >= len(blob)  # random: no shrinking the first time
    assert sizes[-1] < len(blob) // 100


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3000) | st.integers(0, 400_000), max_size=6))
def test_a_piece_never_takes_more_than_its_overhead_bound(items: list[bytes | int]) -> None:
    c = StreamCompressor()
    for item in items:
        data = os.urandom(item) if isinstance(item, int) else item
        assert len(c.compress(data)) <= stream_overhead(len(data))


def _other_frame(**options: int) -> bytes:
    P = zstd.CompressionParameter
    z = zstd.ZstdCompressor(options={getattr(P, k): v for k, v in options.items()})
    return z.compress(b"\0" * 100_000, mode=zstd.ZstdCompressor.FLUSH_BLOCK)


@pytest.mark.parametrize(
    ("payload", "limit", "why"),
    [
        (StreamCompressor().compress(b"\0" * 10_001), 10_000, "inflates past the limit"),
        (os.urandom(stream_overhead(100) + 1), 100, "exceeds the limit"),
        (b"\x28\xb5\x2f\xfd garbage", 100, "corrupt zstd stream"),
        (_other_frame(window_log=STREAM_WINDOW_LOG + 3), 200_000, "corrupt zstd stream"),
        (zstd.compress(b"x" * 100), 100, "ended inside the session"),
    ],
    ids=["bomb", "too long on the wire", "corrupt", "window too large", "frame ended"],
)
def test_a_bad_piece_ends_the_stream(payload: bytes, limit: int, why: str) -> None:
    with pytest.raises(StreamError, match=why):
        StreamDecompressor().decompress(payload, limit=limit)


def test_a_stream_piece_needs_a_session_stream_and_ends_the_session() -> None:
    payload = StreamCompressor().compress(TEXT)
    with pytest.raises(StreamError, match="did not agree"):
        decode(payload, pb.COMPRESSION_ZSTD_STREAM, limit=len(TEXT))
    with pytest.raises(StreamError, match="did not agree"):
        decode_chunk(payload, pb.COMPRESSION_ZSTD_STREAM)
    # A StreamError is a ProtocolError (exit 2, "bad-frame") of its own kind.
    assert issubclass(StreamError, ProtocolError)
    d = StreamDecompressor()
    assert decode_chunk(payload, pb.COMPRESSION_ZSTD_STREAM, d) == TEXT


def _encode_all(
    pieces: list[bytes], path: str, mode: str, stream: StreamCompressor
) -> list[tuple[bytes, int]]:
    enc = ContentEncoder(path, sum(map(len, pieces)), mode, stream)
    return [enc.encode(p) for p in pieces]


@pytest.mark.parametrize(
    ("pieces", "path", "mode", "expected"),
    [
        # Small text goes through the stream from 64 bytes (zlib: 512).
        ([TEXT[:100]], "a.py", "auto", [pb.COMPRESSION_ZSTD_STREAM]),
        ([TEXT[:63]], "a.py", "auto", [pb.COMPRESSION_NONE]),
        # The name still says what is compressed already.
        ([TEXT], "photo.png", "auto", [pb.COMPRESSION_NONE]),
        ([TEXT], "photo.png", "always", [pb.COMPRESSION_ZSTD_STREAM]),
        ([TEXT], "a.py", "never", [pb.COMPRESSION_NONE]),
        # A large file is judged by its first 64 KiB, once.
        (
            [os.urandom(SAMPLE_BYTES * 2), TEXT],
            "data.bin",
            "auto",
            [pb.COMPRESSION_NONE, pb.COMPRESSION_NONE],
        ),
        (
            [TEXT * 30, os.urandom(1000)],
            "data.bin",
            "auto",
            [pb.COMPRESSION_ZSTD_STREAM, pb.COMPRESSION_ZSTD_STREAM],
        ),
        # A delta's small first literal does not judge the file.
        ([b"tiny", TEXT * 30], "big.py", "auto", [pb.COMPRESSION_NONE, pb.COMPRESSION_ZSTD_STREAM]),
        (
            [b"tiny text of more than sixty-four bytes, a delta's first literal piece", TEXT * 30],
            "big.py",
            "auto",
            [pb.COMPRESSION_ZSTD_STREAM] * 2,
        ),
    ],
    ids=[
        "small text",
        "too small",
        "compressed name",
        "always",
        "never",
        "noise first",
        "text first",
        "tiny literal",
        "small literal",
    ],
)
def test_content_encoder_with_a_stream(
    pieces: list[bytes], path: str, mode: str, expected: list[int]
) -> None:
    c, d = StreamCompressor(), StreamDecompressor()
    out = _encode_all(pieces, path, mode, c)
    assert [comp for _, comp in out] == expected
    back = [
        decode(p, comp, limit=len(raw), stream=d)
        for (p, comp), raw in zip(out, pieces, strict=True)
    ]
    assert back == pieces


def test_worth_is_the_judgement_encode_applies() -> None:
    c = StreamCompressor()
    for path, data in [
        ("a.py", TEXT),
        ("a.png", TEXT),
        ("a.py", b"x"),
        ("d.bin", os.urandom(SAMPLE_BYTES + 1)),
    ]:
        judged = ContentEncoder(path, len(data), "auto", c).worth(data)
        _, comp = ContentEncoder(path, len(data), "auto", c).encode(data)
        assert judged == (comp == pb.COMPRESSION_ZSTD_STREAM)
