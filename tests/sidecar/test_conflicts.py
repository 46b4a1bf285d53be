"""The sidecar's side of conflicts, on a real workspace folder: the log of
reported conflicts, the listing, settling, and reading a file back."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.core.errors import UnsafePathError
from devstack.core.ignore import IgnoreRules
from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.protocol import entry_to_pb
from devstack.sidecar.conflicts import ConflictLog, open_for_read, pod_entries, settle
from devstack.sidecar.workspace import Workspace
from devstack.sync.v1 import sync_pb2 as pb


class Reason(enum.StrEnum):
    CONFLICT = "conflict"
    IO = "io-error"


@dataclass
class Out:
    applied: bool
    path: str
    reason: object = ""
    message: str = ""


@dataclass
class Flagged:
    """An outcome that says whether it is a conflict."""

    applied: bool
    path: str
    conflict: bool
    reason: str = "conflict"
    message: str = ""


def test_the_log_keeps_reported_conflicts_until_an_op_applies_or_they_are_settled() -> None:
    clock = iter([10.0, 20.0, 30.0, 40.0, 50.0])
    log = ConflictLog(limit=3, clock=lambda: next(clock))
    log.observe([Out(False, "a", "conflict", "a changed"), Out(False, "b", Reason.CONFLICT)])
    log.observe([Out(False, "c", Reason.IO, "disk"), Out(True, "x")])  # not conflicts
    assert log.paths() == ["a", "b"]
    got = log.get("a")
    assert got is not None and (got.message, got.at) == ("a changed", 10.0)
    log.observe([Out(True, "a"), Out(False, "d", "conflict"), Out(False, "e", "conflict")])
    assert log.paths() == ["b", "d", "e"]  # a applied
    log.observe([Out(False, "f", "conflict")])
    assert log.paths() == ["d", "e", "f"]  # at most 3: the oldest report goes
    log.settle(["e", "nope"])
    assert log.paths() == ["d", "f"] and len(log) == 2
    log.observe([Flagged(False, "g", True, "unsafe-path"), Flagged(False, "h", False)])
    assert log.paths() == ["d", "f", "g"]  # the flag decides


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


def _synced(ws: Workspace, path: str, data: bytes) -> None:
    """As if sync wrote ``data`` at ``path``."""
    (ws.root / path).parent.mkdir(parents=True, exist_ok=True)
    (ws.root / path).write_bytes(data)
    ws._record(path, Entry(path, Kind.FILE, len(data), 0o644, hash_bytes(data)))


def test_listing_settling_and_reading(ws: Workspace) -> None:
    _synced(ws, "a.txt", b"one")
    _synced(ws, "lib/b.txt", b"two")
    _synced(ws, "same.txt", b"same")
    (ws.root / "a.txt").write_bytes(b"the app's")  # DIRTY
    (ws.root / "lib" / "b.txt").write_bytes(b"the app's too")  # DIRTY
    (ws.root / "untracked.txt").write_bytes(b"the app's own")
    log = ConflictLog()
    log.observe([Out(False, "untracked.txt", "conflict", "exists in the workspace")])
    resp = pod_entries(ws, IgnoreRules(), [], log)
    assert [e.path for e in resp.entries] == ["a.txt", "lib/b.txt", "untracked.txt"]
    a, _, u = resp.entries
    assert a.entry.state == pb.SYNC_STATE_DIRTY and a.entry.digest == hash_bytes(b"the app's")
    assert a.ancestor.digest == hash_bytes(b"one") and a.message == ""
    assert a.mtime_ns == os.stat(ws.root / "a.txt").st_mtime_ns
    assert not u.HasField("ancestor") and u.message == "exists in the workspace"
    assert not resp.truncated
    assert [
        e.path for e in pod_entries(ws, IgnoreRules.from_patterns(["lib/"]), [], log).entries
    ] == [
        "a.txt",
        "untracked.txt",
    ]

    # Settled only where the workspace still holds what was listed.
    stale = pb.ResolveItem(path="lib/b.txt")
    stale.expected.CopyFrom(entry_to_pb(Entry("lib/b.txt", Kind.FILE, 3, 0o644, hash_bytes(b"x"))))
    results = settle(ws, [pb.ResolveItem(path="a.txt", expected=a.entry), stale], log)
    assert [(r.path, r.resolved, r.reason) for r in results] == [
        ("a.txt", True, ""),
        ("lib/b.txt", False, "changed"),
    ]
    assert [e.path for e in pod_entries(ws, IgnoreRules(), [], log).entries] == [
        "lib/b.txt",
        "untracked.txt",
    ]
    # ... and it survives a restart (journaled before the reply).
    ws.close()
    again = Workspace(ws.root)
    (one,) = pod_entries(again, IgnoreRules(), ["a.txt"], log).entries
    assert one.entry.state == pb.SYNC_STATE_SYNCED

    entry, fd = open_for_read(again, "lib/b.txt")
    assert fd is not None
    try:
        assert (entry.kind, entry.size) == (Kind.FILE, len(b"the app's too"))
        assert os.read(fd, 100) == b"the app's too"
    finally:
        os.close(fd)
    again.close()


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", ".devstack/ancestors.json", "a//b", ""])
def test_unsafe_paths_are_refused(ws: Workspace, path: str) -> None:
    with pytest.raises(UnsafePathError):
        open_for_read(ws, path)
    with pytest.raises(UnsafePathError):
        pod_entries(ws, IgnoreRules(), [path], ConflictLog())
    (res,) = settle(ws, [pb.ResolveItem(path=path)], ConflictLog())
    assert (res.resolved, res.reason) == (False, "unsafe-path")


def test_nothing_is_read_through_a_symlinked_folder(ws: Workspace, tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "secret").write_text("no")
    os.symlink(outside, ws.root / "out")
    with pytest.raises(UnsafePathError, match="symlink"):
        open_for_read(ws, "out/secret")
    with pytest.raises(UnsafePathError, match="symlink"):
        pod_entries(ws, IgnoreRules(), ["out/secret"], ConflictLog())
    # the symlink itself is an entry: its target, never what it points to
    entry, fd = open_for_read(ws, "out")
    assert (entry.kind, entry.target, fd) == (Kind.SYMLINK, str(outside), None)
    os.mkfifo(ws.root / "fifo")
    with pytest.raises(UnsafePathError, match="fifo"):
        open_for_read(ws, "fifo")  # refused at once, never blocks
