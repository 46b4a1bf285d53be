"""The session stream (``COMPRESSION_ZSTD_STREAM``) against a real sidecar
process: chosen only when asked for, every piece decoded in message order
(a refused op's too), and a bad piece ends the session with nothing
written."""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from devstack.core.protocol import StreamCompressor
from devstack.sidecar.server import MAX_STREAMS
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import RawSession, status, write_op
from tests.support.sync import Sidecar, wait_until

TOKEN = "s3cret-token"
STREAM = {"stream_compressions": [pb.COMPRESSION_ZSTD_STREAM]}


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "box" / "ws"
    ws.mkdir(parents=True)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def test_a_sidecar_with_max_streams_0_never_chooses_the_stream(tmp_path: Path) -> None:
    """``--max-streams 0``: every session, offered the stream or not, gets
    the Welcome an older sidecar sends, and zlib file by file still lands."""
    ws = tmp_path / "ws"
    ws.mkdir()
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    sc = Sidecar(ws, token, "--max-streams", "0").start()
    try:
        s = RawSession(sc.address, TOKEN, **STREAM)
        try:
            assert s.welcome.stream_compression == pb.COMPRESSION_NONE
            data = b"the same line again\n" * 200
            op = write_op("a.txt", data)
            op.content, op.compression = zlib.compress(data), pb.COMPRESSION_ZLIB
            s.batch(1, op)
            assert s.commit(1).applied == 1
        finally:
            s.close()
        assert (ws / "a.txt").read_bytes() == data
        assert [e["stream"] for e in sc.events("session.open")] == [False]
    finally:
        sc.stop()


def squeezed(op: pb.Op, stream: StreamCompressor) -> pb.Op:
    op.content = stream.compress(op.content)
    op.compression = pb.COMPRESSION_ZSTD_STREAM
    return op


def chunk(seq: int, index: int, data: bytes, stream: StreamCompressor) -> pb.ClientMessage:
    return pb.ClientMessage(
        chunk=pb.Chunk(
            seq=seq,
            op_index=index,
            data=stream.compress(data),
            compression=pb.COMPRESSION_ZSTD_STREAM,
        )
    )


def test_the_sidecar_chooses_the_stream_only_when_the_client_offers_it(sidecar: Sidecar) -> None:
    offered = RawSession(sidecar.address, TOKEN, **STREAM)
    plain = RawSession(sidecar.address, TOKEN)
    try:
        assert offered.welcome.stream_compression == pb.COMPRESSION_ZSTD_STREAM
        assert plain.welcome.stream_compression == pb.COMPRESSION_NONE
    finally:
        offered.close()
        plain.close()


def test_a_refused_ops_piece_is_still_decoded_so_the_pieces_after_it_are_right(
    sidecar: Sidecar,
) -> None:
    """Op 0 is refused (its path leaves the workspace), yet ops 1 and 2 and
    the chunked op 3 each repeat its bytes, which the stream then sends as
    references back to op 0's piece: they decode right only if the sidecar
    fed op 0's piece to the stream too."""
    blob = random.Random(1).randbytes(40_000)
    big = blob * 30  # 1.2 MB: two chunks
    stream = StreamCompressor()
    s = RawSession(sidecar.address, TOKEN, **STREAM)
    try:
        ops = [
            squeezed(write_op("../escape.txt", blob), stream),
            squeezed(write_op("one.txt", blob), stream),
            squeezed(write_op("two.txt", blob[:20_000] + b"!"), stream),
        ]
        assert all(len(o.content) < 1000 for o in ops[1:])  # references, not bytes
        s.batch(1, *ops, write_op("big.txt", big, chunked=True))
        half = 1 << 20
        s.send(chunk(1, 3, big[:half], stream))
        s.send(chunk(1, 3, big[half:], stream))
        ack = s.commit(1)
        assert ack.applied == 3
        assert [(p.path, p.reason) for p in ack.problems] == [("../escape.txt", "unsafe-path")]
        # A second batch of the same session goes on with the same stream.
        s.batch(2, squeezed(write_op("three.txt", blob), stream))
        assert s.commit(2).applied == 1
    finally:
        s.close()
    ws = sidecar.workspace
    assert (ws / "one.txt").read_bytes() == blob
    assert (ws / "two.txt").read_bytes() == blob[:20_000] + b"!"
    assert (ws / "big.txt").read_bytes() == big
    assert (ws / "three.txt").read_bytes() == blob
    assert not (ws.parent / "escape.txt").exists()


@pytest.mark.parametrize(
    ("stream_fields", "make", "why"),
    [
        (STREAM, lambda s: b"\x28\xb5\x2f\xfd" + os.urandom(60), "corrupt zstd stream"),
        (STREAM, lambda s: s.compress(b"\0" * 5000), "inflates past the limit"),
        ({}, lambda s: s.compress(b"x" * 100), "did not agree to one"),
    ],
    ids=["corrupt", "bomb", "not agreed"],
)
def test_a_bad_piece_ends_the_session_and_writes_nothing(
    sidecar: Sidecar, stream_fields: dict[str, object], make: object, why: str
) -> None:
    stream = StreamCompressor()
    s = RawSession(sidecar.address, TOKEN, **stream_fields)
    try:
        good = squeezed(write_op("first.txt", b"first " * 50), stream) if stream_fields else None
        op = write_op("bad.txt", b"x" * 100)
        op.content = make(stream)  # type: ignore[operator]
        op.compression = pb.COMPRESSION_ZSTD_STREAM
        s.batch(1, *([good] if good else []), op)
        s.send(pb.ClientMessage(commit=pb.Commit(seq=1)))
        error = s.refused()
    finally:
        s.close()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert why in (error.details() or "")
    assert sorted(p.name for p in sidecar.workspace.iterdir() if p.name != ".devstack") == []
    # The sidecar goes on serving: a new session has a new stream.
    again = RawSession(sidecar.address, TOKEN, **STREAM)
    try:
        fresh = StreamCompressor()
        again.batch(1, squeezed(write_op("later.txt", b"later " * 50), fresh))
        assert again.commit(1).applied == 1
    finally:
        again.close()
    assert (sidecar.workspace / "later.txt").read_bytes() == b"later " * 50


def test_at_most_max_streams_sessions_hold_a_stream_at_once(sidecar: Sidecar) -> None:
    """Each stream holds a window of up to 16 MiB: past MAX_STREAMS sessions
    with one, a new session gets zlib file by file, and a stream again once
    one of them ended."""
    held = [RawSession(sidecar.address, TOKEN, **STREAM) for _ in range(MAX_STREAMS)]
    extra: list[RawSession] = []
    try:
        assert {s.welcome.stream_compression for s in held} == {pb.COMPRESSION_ZSTD_STREAM}
        extra.append(RawSession(sidecar.address, TOKEN, **STREAM))
        assert extra[-1].welcome.stream_compression == pb.COMPRESSION_NONE
        # That session still syncs, through zlib.
        op = write_op("plain.txt", b"plain " * 200)
        op.content, op.compression = zlib.compress(op.content), pb.COMPRESSION_ZLIB
        extra[-1].batch(1, op)
        assert extra[-1].commit(1).applied == 1
        held.pop().close()
        wait_until(lambda: status(sidecar.address, TOKEN).sessions <= MAX_STREAMS, 10, "a close")
        extra.append(RawSession(sidecar.address, TOKEN, **STREAM))
        assert extra[-1].welcome.stream_compression == pb.COMPRESSION_ZSTD_STREAM
    finally:
        for s in held + extra:
            s.close()
    assert (sidecar.workspace / "plain.txt").read_bytes() == b"plain " * 200
