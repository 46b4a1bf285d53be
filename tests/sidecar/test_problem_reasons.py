"""What a real sidecar says about each op it does not apply: the reason
string every client reads (``Problem.reason``), the specific reason
(``Problem.code``), the sentence and the fix, as a table."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.core.sync.model import Reason
from devstack.core.sync.wire import reason_from_pb
from devstack.sync.v1 import sync_pb2 as pb
from tests.support.rawclient import RawSession, delete_op, mkdir_op, symlink_op, write_op
from tests.support.sync import Sidecar, wait_until

TOKEN = "s3cret-token"


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    ws = tmp_path / "box" / "ws"
    ws.mkdir(parents=True)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    sc = Sidecar(ws, token).start()
    yield sc
    sc.stop()


def expecting(op: pb.Op, entry: pb.Entry) -> pb.Op:
    op.expected_absent = False
    op.expected.CopyFrom(entry)
    return op


def test_each_op_that_is_not_applied_says_why_and_what_to_do(sidecar: Sidecar) -> None:
    ws = sidecar.workspace
    # What sync writes first: a file the app then changes, and a folder the
    # app then puts a file in.
    s = RawSession(sidecar.address, TOKEN)
    s.batch(1, write_op("app.txt", b"synced"), mkdir_op("made"))
    assert s.commit(1).applied == 2
    s.close()
    (ws / "app.txt").write_text("the app's edit")
    (ws / "made" / "log.txt").write_text("the app's file")
    # What the image seeded or the app made; a link that leads out.
    (ws / "seeded.txt").write_text("from the image")
    (ws / "exists.txt").write_text("the app made it")
    os.mkfifo(ws / "fifo")
    outside = ws.parent / "outside"
    outside.mkdir()
    os.symlink(outside, ws / "door")

    s = RawSession(sidecar.address, TOKEN)
    m = s.manifest
    short = write_op("short.txt", b"twelve bytes")
    short.content = b"twelve byte"
    corrupt = write_op("corrupt.txt", b"some content")
    corrupt.content = b"SOME CONTENT"
    unknown = pb.Op(kind=99)  # type: ignore[arg-type]
    unknown.entry.path = "new-kind"
    no_entry = pb.Op(kind=pb.OP_MKDIR, expected_absent=True)
    no_entry.entry.path = "no-entry"
    cases: list[tuple[pb.Op, Reason, str]] = [
        (symlink_op("evil", "../outside"), Reason.SYMLINK_ESCAPES, "leaves the workspace"),
        (symlink_op("sneaky", "door/x"), Reason.SYMLINK_ESCAPES, "through the absolute symlink"),
        (write_op("../escape", b"x"), Reason.UNSAFE_PATH, "segments are not allowed"),
        (write_op("door/pwned", b"x"), Reason.THROUGH_SYMLINK, "nothing is written through it"),
        (write_op("fifo", b"x"), Reason.SPECIAL_FILE, "device, fifo or socket"),
        (delete_op("made", m["made"]), Reason.NOT_EMPTY, "holds files sync did not create"),
        (short, Reason.INCOMPLETE, "got 11 of 12 bytes"),
        (corrupt, Reason.DIGEST_MISMATCH, "does not match its digest"),
        (unknown, Reason.BAD_OP, "unknown op kind"),
        (no_entry, Reason.BAD_FRAME, "mkdir without an entry"),
        (write_op("exists.txt", b"x"), Reason.NOT_AS_EXPECTED, "the laptop expected nothing"),
        (delete_op("seeded.txt", m["seeded.txt"]), Reason.UNTRACKED, "sync did not create it"),
        (
            expecting(write_op("app.txt", b"laptop"), m["app.txt"]),
            Reason.CHANGED_IN_WORKSPACE,
            "changed in the workspace since the last sync",
        ),
    ]
    s.batch(2, *(op for op, _, _ in cases))
    ack = s.commit(2)
    s.close()
    assert ack.applied == 0
    paths = [op.entry.path for op, _, _ in cases]
    assert [p.path for p in ack.problems] == paths
    for p, (_, reason, words) in zip(ack.problems, cases, strict=True):
        assert reason_from_pb(p.code) is reason, p
        assert p.reason == reason.legacy, p  # what a client that predates `code` reads
        assert words in p.message, p
        assert p.fix == reason.fix, p
        assert p.HasField("actual") is reason.conflict, p  # what the workspace holds
    # Nothing changed, nothing outside.
    assert list(outside.iterdir()) == []
    assert (ws / "app.txt").read_text() == "the app's edit"
    assert not (ws / "evil").is_symlink() and not (ws / "sneaky").is_symlink()
    # The log names the specific reason of each refusal.
    wait_until(lambda: len(sidecar.events("sync.rejected")) >= 10, what="the refusals' log lines")
    logged = {str(e["path"]): e for e in sidecar.events("sync.rejected")}
    assert logged["evil"]["code"] == "symlink-escapes"
    assert logged["evil"]["reason"] == "unsafe-path"
    assert "symlink target leaves the workspace" in str(logged["evil"]["message"])
    assert logged["fifo"]["code"] == "special-file"


def test_a_conflicts_problem_carries_what_the_workspace_holds(sidecar: Sidecar) -> None:
    (sidecar.workspace / "seeded.txt").write_text("from the image")
    s = RawSession(sidecar.address, TOKEN)
    seeded = s.manifest["seeded.txt"]
    s.batch(1, delete_op("seeded.txt", seeded))
    [p] = s.commit(1).problems
    s.close()
    assert (p.reason, reason_from_pb(p.code)) == ("conflict", Reason.UNTRACKED)
    assert p.actual == seeded
    assert "--mode replica" in p.fix
