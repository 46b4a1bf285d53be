"""The sidecar's manifest on the wire: a client that asks for columns gets
the same entries, states included, as one that reads Entry messages."""

from __future__ import annotations

import os
from pathlib import Path

import grpc

from devstack.core.manifest import Entry, SyncState
from devstack.core.protocol import PROTOCOL_VERSION, entry_from_pb, read_manifest_page
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc
from tests.support.rawclient import RawSession, write_op
from tests.support.sync import Sidecar


def _columnar_manifest(address: str, token: str) -> tuple[int, dict[str, Entry], int]:
    """(Welcome.manifest_entries, the manifest, pages) for a Hello that asks
    for columns."""
    hello = pb.ClientMessage(
        hello=pb.Hello(
            protocol_version=PROTOCOL_VERSION,
            client_id="test",
            token=token,
            columnar_manifest=True,
        )
    )
    with grpc.insecure_channel(address) as channel:
        responses = sync_pb2_grpc.SyncStub(channel).Session(iter([hello]))
        welcome = next(responses).welcome
        got: dict[str, Entry] = {}
        pages = 0
        for msg in responses:
            assert not msg.manifest.entries  # columns only
            read_manifest_page(msg.manifest, got)
            pages += 1
            if msg.manifest.last:
                break
        responses.cancel()
    return welcome.manifest_entries, got, pages


def test_columns_carry_the_same_manifest_as_entries(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "seeded" / "deep").mkdir(parents=True)
    (ws / "seeded" / "deep" / "f.txt").write_text("from the image")
    os.symlink("seeded/deep/f.txt", ws / "link")
    for i in range(3000):  # more than one page of entries
        (ws / "seeded" / f"n{i:04d}").write_bytes(b"")
    token = tmp_path / "token"
    token.write_text("tok\n")
    sc = Sidecar(ws, token).start()
    try:
        s = RawSession(sc.address, "tok")
        s.batch(1, write_op("synced.py", b"print(1)\n"), write_op("app-edits.py", b"v1\n"))
        assert not s.commit(1).problems
        s.close()
        (ws / "app-edits.py").write_text("the app changed it\n")

        s = RawSession(sc.address, "tok")
        legacy = {p: entry_from_pb(e) for p, e in s.manifest.items()}
        s.close()
        count, columnar, pages = _columnar_manifest(sc.address, "tok")
    finally:
        sc.stop()
    assert columnar == legacy and count == len(legacy) > 3000
    assert pages >= 1
    assert columnar["synced.py"].state == SyncState.SYNCED
    assert columnar["app-edits.py"].state == SyncState.DIRTY
    assert columnar["seeded/deep/f.txt"].state == SyncState.UNTRACKED
    assert columnar["link"].target == "seeded/deep/f.txt"
