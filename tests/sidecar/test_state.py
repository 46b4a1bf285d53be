"""What the sidecar remembers about what sync wrote (the ancestors) survives
a crash: it is journaled before a batch is acknowledged."""

from __future__ import annotations

import signal
from pathlib import Path

from devstack.core.ignore import IgnoreRules
from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.core.sync.model import OpKind
from devstack.sidecar.workspace import StagedOp, Workspace
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import RawSession, write_op
from tests.support.sync import Sidecar

TOKEN = "state-token"


def test_a_sidecar_killed_right_after_an_ack_still_sees_app_edits_as_conflicts(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "token").write_text(TOKEN)
    sc = Sidecar(ws, tmp_path / "token").start()
    s = RawSession(sc.address, TOKEN)
    s.batch(1, write_op("a.py", b"v1 a"))
    assert s.commit(1).applied == 1
    s.batch(2, write_op("b.py", b"v1 b"))
    assert s.commit(2).applied == 1
    s.close()
    assert sc.stop(signal.SIGKILL) == -signal.SIGKILL  # no chance to save anything
    (ws / "a.py").write_text("the app's edit")
    (ws / "b.py").write_text("the app's edit")
    sc.start()
    try:
        s = RawSession(sc.address, TOKEN)
        assert s.manifest["a.py"].state == pb.SYNC_STATE_DIRTY
        assert s.manifest["b.py"].state == pb.SYNC_STATE_DIRTY
        # Even a client that claims to expect the app's content may not
        # clobber it: sync last wrote something else there.
        op = write_op("b.py", b"v2 b")
        op.expected_absent = False
        op.expected.CopyFrom(s.manifest["b.py"])
        s.batch(1, op)
        ack = s.commit(1)
        s.close()
        assert [p.reason for p in ack.problems] == ["conflict"]
        assert (ws / "b.py").read_text() == "the app's edit"
    finally:
        sc.stop()


def _write(ws: Workspace, seq: int, path: str, data: bytes) -> None:
    e = Entry(path, Kind.FILE, len(data), 0o644, hash_bytes(data))
    b = ws.open_batch(seq, [StagedOp(0, OpKind.WRITE, path, e, None, True)])
    b.inline(0, data)
    assert b.commit()[0].applied


def test_a_torn_journal_line_is_ignored_and_never_glued_to(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    ws = Workspace(root)
    _write(ws, 1, "a", b"a1")
    ws.close()
    # A crash in the middle of appending the next line.
    with open(root / ".devstack" / "ancestors.journal", "ab") as f:
        f.write(b'{"b":[1,"00')
    ws = Workspace(root)
    assert set(ws.ancestors) == {"a"}
    _write(ws, 2, "c", b"c1")
    # Abandon it without closing (as a SIGKILL would) and start again.
    ws2 = Workspace(root)
    assert set(ws2.ancestors) == {"a", "c"}
    (root / "c").write_bytes(b"app")
    assert ws2.manifest(IgnoreRules())["c"].state == SyncState.DIRTY
    ws2.close()
    ws.close()
