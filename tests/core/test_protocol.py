"""Protocol helpers shared by the laptop and the sidecar (pure)."""

from __future__ import annotations

import os
import zlib

import pytest

from devstack.core.errors import ProtocolError
from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.core.plan import Action
from devstack.core.protocol import (
    MAX_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    OP_CODES,
    OP_NAMES,
    SAMPLE_BYTES,
    ContentEncoder,
    decode,
    decode_chunk,
    encode,
    entry_from_pb,
    fill_entry_pb,
    manifest_messages,
    read_manifest_page,
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


def _sample_manifest() -> list[Entry]:
    return [
        Entry("a.txt", Kind.FILE, 3, 0o644, hash_bytes(b"abc"), "", SyncState.SYNCED),
        Entry("bin/run", Kind.FILE, 0, 0o755, hash_bytes(b""), "", SyncState.DIRTY),
        Entry("bin", Kind.DIRECTORY, 0, 0o755),
        Entry("lnk", Kind.SYMLINK, 0, 0o777, b"", "a.txt", SyncState.SYNCED),
        Entry("dir/ünïcödé 名前", Kind.FILE, 1, 0o600, hash_bytes(b"u")),
        Entry("other-link", Kind.SYMLINK, 0, 0o777, b"", "../x"),
    ]


@pytest.mark.parametrize("columnar", [True, False], ids=["columns", "entries"])
def test_manifest_pages_read_back_to_the_same_entries(columnar: bool) -> None:
    entries = _sample_manifest()
    pages = manifest_messages(entries, columnar=columnar)
    assert [p.manifest.last for p in pages] == [False] * (len(pages) - 1) + [True]
    got: dict[str, Entry] = {}
    for msg in pages:
        page = pb.ServerMessage.FromString(msg.SerializeToString()).manifest
        assert page.HasField("columns") is columnar
        read_manifest_page(page, got)
    assert got == {e.path: e for e in entries}


def test_an_empty_manifest_is_one_last_page() -> None:
    for columnar in (True, False):
        pages = manifest_messages([], columnar=columnar)
        assert len(pages) == 1 and pages[0].manifest.last
        got: dict[str, Entry] = {}
        read_manifest_page(pages[0].manifest, got)
        assert got == {}


def test_columnar_pages_stay_far_below_the_message_limit() -> None:
    # Long, non-ASCII paths: 4 bytes a character at worst.
    entries = [
        Entry("€" * 1000 + f"/{i}", Kind.FILE, i, 0o644, hash_bytes(str(i).encode()))
        for i in range(3000)
    ]
    pages = manifest_messages(entries, columnar=True)
    assert len(pages) > 1
    assert all(p.ByteSize() < MAX_MESSAGE_BYTES // 2 for p in pages)
    got: dict[str, Entry] = {}
    for p in pages:
        read_manifest_page(p.manifest, got)
    assert len(got) == 3000


def _columns(**override: object) -> pb.ManifestPage:
    page = manifest_messages(_sample_manifest(), columnar=True)[0].manifest
    for name, value in override.items():
        field_ = getattr(page.columns, name)
        del field_[:]
        field_.extend(value)  # type: ignore[arg-type]
    return page


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"sizes": [1, 2]}, "different lengths"),
        ({"kinds": [1, 1, 2, 3, 1, 9]}, "unsupported entry kind 9"),
        ({"targets": ["only one"]}, "1 symlink target"),
    ],
    ids=["lengths", "kind", "targets"],
)
def test_a_malformed_columnar_page_is_refused(override: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        read_manifest_page(_columns(**override), {})


def test_columns_read_an_unknown_state_as_untracked_and_keep_only_permission_bits() -> None:
    got: dict[str, Entry] = {}
    read_manifest_page(_columns(states=[7, 1, 0, 1, 0, 0], modes=[0o100644] * 6), got)
    assert got["a.txt"].state == SyncState.UNTRACKED
    assert got["bin/run"].state == SyncState.SYNCED
    assert {e.mode for e in got.values()} == {0o644}


TEXT = b"def handler(request):\n    return respond(request, status=200)\n" * 4000


def _encode_all(pieces: list[bytes], path: str, mode: str) -> list[tuple[bytes, int]]:
    enc = ContentEncoder(path, sum(map(len, pieces)), mode)
    return [enc.encode(p) for p in pieces]


def test_never_sends_raw_and_always_compresses_whatever_the_name() -> None:
    assert _encode_all([TEXT], "a.py", "never") == [(TEXT, pb.COMPRESSION_NONE)]
    [(payload, compression)] = _encode_all([TEXT], "photo.png", "always")
    assert compression == pb.COMPRESSION_ZLIB and zlib.decompress(payload) == TEXT
    # auto trusts the name: a .png is already compressed.
    assert _encode_all([TEXT], "photo.png", "auto") == [(TEXT, pb.COMPRESSION_NONE)]


def test_auto_judges_a_file_by_its_first_64_kib() -> None:
    noise = os.urandom(SAMPLE_BYTES * 2)
    # Incompressible at the start: the whole file goes raw, even a
    # compressible later piece (which always would compress).
    auto = _encode_all([noise, TEXT], "data.bin", "auto")
    assert [c for _, c in auto] == [pb.COMPRESSION_NONE, pb.COMPRESSION_NONE]
    always = _encode_all([noise, TEXT], "data.bin", "always")
    assert [c for _, c in always] == [pb.COMPRESSION_NONE, pb.COMPRESSION_ZLIB]
    # Compressible at the start: every piece is compressed, and decodes back.
    pieces = [TEXT, TEXT[:1000], TEXT[:600]]
    out = _encode_all(pieces, "app.py", "auto")
    assert [c for _, c in out] == [pb.COMPRESSION_ZLIB] * 3
    assert [decode(p, c, limit=len(raw)) for (p, c), raw in zip(out, pieces, strict=True)] == (
        pieces
    )


def test_auto_leaves_small_content_raw_and_refuses_an_unknown_mode() -> None:
    assert _encode_all([b"x" * 100], "a.txt", "auto") == [(b"x" * 100, pb.COMPRESSION_NONE)]
    with pytest.raises(ValueError, match="compression mode 'fast'"):
        ContentEncoder("a", 1, "fast")


def test_filling_an_entry_message_again_overwrites_every_field() -> None:
    m = pb.Entry()
    fill_entry_pb(m, Entry("a", Kind.FILE, 10, 0o755, b"d" * 16, "", SyncState.SYNCED))
    fill_entry_pb(m, Entry("a", Kind.FILE, 0, 0o644, hash_bytes(b"")))
    assert entry_from_pb(m) == Entry("a", Kind.FILE, 0, 0o644, hash_bytes(b""))


def test_auto_does_not_judge_a_file_by_a_small_first_piece() -> None:
    # A delta may start with a few literal bytes: too few to judge by.
    out = _encode_all([b"tiny", TEXT], "big.py", "auto")
    assert [c for _, c in out] == [pb.COMPRESSION_NONE, pb.COMPRESSION_ZLIB]
