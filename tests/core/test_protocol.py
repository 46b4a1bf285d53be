"""Protocol helpers shared by the laptop and the sidecar (pure)."""

from __future__ import annotations

import os
import zlib

import pytest

from devstack.core.errors import ProtocolError
from devstack.core.plan import Action
from devstack.core.protocol import (
    MAX_CHUNK_BYTES,
    OP_CODES,
    OP_NAMES,
    decode,
    decode_chunk,
    encode,
)
from devstack.sync.v1 import sync_pb2 as pb


def test_every_wire_op_has_one_name_and_every_plan_action_a_wire_op() -> None:
    wire = {v.number for v in pb.OpKind.DESCRIPTOR.values} - {pb.OP_UNSPECIFIED}
    assert set(OP_NAMES) == wire
    assert {a.value for a in Action} == set(OP_CODES)
    assert all(OP_NAMES[OP_CODES[a.value]] == a.value for a in Action)


@pytest.mark.parametrize(
    "data", [b"", b"x", b"a" * 10_000, os.urandom(10_000)], ids=["empty", "1", "text", "random"]
)
def test_encode_then_decode_round_trips(data: bytes) -> None:
    payload, compression = encode(data, compress=True)
    assert len(payload) <= max(len(data), 1)
    assert decode(payload, compression, limit=len(data)) == data


@pytest.mark.parametrize(
    ("payload", "compression", "why"),
    [
        (b"x" * (MAX_CHUNK_BYTES + 1), pb.COMPRESSION_NONE, "exceeds the limit"),
        # A payload that is itself over the limit is refused before inflating.
        (os.urandom(MAX_CHUNK_BYTES + 1), pb.COMPRESSION_ZLIB, "exceeds the limit"),
        (zlib.compress(b"\0" * (MAX_CHUNK_BYTES + 1)), pb.COMPRESSION_ZLIB, "inflates past"),
        (b"not zlib", pb.COMPRESSION_ZLIB, "corrupt"),
        (b"x", 99, "unknown compression"),
    ],
    ids=["plain", "compressed too big", "bomb", "corrupt", "unknown"],
)
def test_decode_chunk_refuses(payload: bytes, compression: int, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        decode_chunk(payload, compression)
