"""New folders staged whole (``workspace._Tree``): a folder a batch creates
where nothing is goes into place in one rename with the files and folders
the batch creates in it; everything else about the applier stays as it was.
On a real directory (no network)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.core.ignore import IgnoreRules
from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.core.sync.model import OpKind, Reason
from devstack.sidecar.workspace import StagedOp, Workspace, open_workspace


def _op(i: int, kind: OpKind, path: str, entry: Entry | None, **kw: object) -> StagedOp:
    return StagedOp(
        index=i, kind=kind, path=path, entry=entry, expected=None, expected_absent=True, **kw
    )  # type: ignore[arg-type]


def mkdir(i: int, path: str, mode: int = 0o755) -> StagedOp:
    return _op(i, OpKind.MKDIR, path, Entry(path, Kind.DIRECTORY, 0, mode))


def write(i: int, path: str, data: bytes, mode: int = 0o644, **kw: object) -> StagedOp:
    return _op(
        i, OpKind.WRITE, path, Entry(path, Kind.FILE, len(data), mode, hash_bytes(data)), **kw
    )


def symlink(i: int, path: str, target: str) -> StagedOp:
    return _op(i, OpKind.SYMLINK, path, Entry(path, Kind.SYMLINK, 0, 0o777, b"", target))


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    root = tmp_path / "ws"
    root.mkdir()
    w = Workspace(root)
    yield w
    w.close()


def staging(ws: Workspace) -> list[str]:
    return sorted(os.listdir(ws.root / ".devstack" / "staging"))


#: A new tree: src/ (0o750) with a file, src/pkg/ (0o711) with two, and an
#: executable; then an empty folder, and a file at the top.
TREE: dict[str, bytes | int] = {
    "src": 0o750,
    "src/a.py": b"print('a')\n",
    "src/pkg": 0o711,
    "src/pkg/b.py": b"b = 1\n",
    "src/pkg/run.sh": b"#!/bin/sh\n",
    "src/pkg/empty.txt": b"",
    "top.txt": b"top\n",
}


def tree_ops() -> list[StagedOp]:
    ops = []
    for i, (path, v) in enumerate(TREE.items()):
        if isinstance(v, int):
            ops.append(mkdir(i, path, v))
        else:
            ops.append(write(i, path, v, 0o755 if path.endswith(".sh") else 0o644))
    return ops


def stage(ws: Workspace, seq: int, ops: list[StagedOp], content: dict[int, bytes]):  # type: ignore[no-untyped-def]
    batch = ws.open_batch(seq, ops)
    for i, data in content.items():
        batch.inline(i, data)
    return batch


def test_a_new_folder_goes_in_whole_with_its_content(ws: Workspace) -> None:
    ops = tree_ops()
    batch = stage(ws, 1, ops, {i: v for i, v in enumerate(TREE.values()) if isinstance(v, bytes)})
    # staged, nothing of it is in the workspace yet: the folder is in staging whole
    assert not (ws.root / "src").exists() and not (ws.root / "top.txt").exists()
    [tree] = [n for n in staging(ws) if n.endswith(".t")]
    staged = ws.root / ".devstack" / "staging" / tree / "0"
    assert (staged / "pkg" / "b.py").read_bytes() == b"b = 1\n"

    out = batch.commit()
    assert [(o.applied, o.path) for o in out] == [(True, p) for p in TREE]
    for path, v in TREE.items():
        st = os.lstat(ws.root / path)
        if isinstance(v, int):
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == v, path
        else:
            assert (ws.root / path).read_bytes() == v
            want = 0o755 if path.endswith(".sh") else 0o644
            assert stat.S_IMODE(st.st_mode) == want, path
    assert staging(ws) == []
    assert ws.counters.files_written == 5
    # what sync wrote is recorded: each entry is SYNCED, and an app's edit is DIRTY
    manifest = ws.manifest(IgnoreRules())
    assert {p: manifest[p].state for p in TREE} == {p: SyncState.SYNCED for p in TREE}
    (ws.root / "src/pkg/b.py").write_bytes(b"b = 2\n")
    assert ws.manifest(IgnoreRules())["src/pkg/b.py"].state == SyncState.DIRTY


def test_a_file_whose_content_is_not_as_declared_is_left_out_of_the_folder(
    ws: Workspace,
) -> None:
    ops = [mkdir(0, "d"), write(1, "d/good", b"good"), write(2, "d/bad", b"declared")]
    out = stage(ws, 1, ops, {1: b"good", 2: b"tampered"}).commit()
    assert [(o.applied, o.code) for o in out] == [
        (True, None),
        (True, None),
        (False, Reason.DIGEST_MISMATCH),
    ]
    assert sorted(os.listdir(ws.root / "d")) == ["good"]
    assert staging(ws) == []


def test_a_folder_that_appeared_meanwhile_takes_each_op_on_its_own(ws: Workspace) -> None:
    """The app made the folder (and a file in it) after the batch was
    staged: the rename refuses to replace it, and each op goes as it would
    alone, so the app's file is kept and the others go in."""
    ops = [mkdir(0, "d"), write(1, "d/new", b"new"), write(2, "d/mine", b"sync's")]
    batch = stage(ws, 1, ops, {1: b"new", 2: b"sync's"})
    (ws.root / "d").mkdir()
    (ws.root / "d" / "mine").write_bytes(b"the app's")
    out = batch.commit()
    assert out[1].applied and not out[2].applied and out[2].conflict, out
    assert (ws.root / "d" / "new").read_bytes() == b"new"
    assert (ws.root / "d" / "mine").read_bytes() == b"the app's"
    assert staging(ws) == []


def test_a_symlink_in_a_new_folder_is_checked_as_any_symlink(ws: Workspace) -> None:
    ops = [
        mkdir(0, "d"),
        write(1, "d/f", b"f"),
        symlink(2, "d/in", "f"),
        symlink(3, "d/out", "../../outside"),
    ]
    out = stage(ws, 1, ops, {1: b"f"}).commit()
    assert [o.applied for o in out] == [True, True, True, False]
    assert out[3].code is Reason.SYMLINK_ESCAPES
    assert os.readlink(ws.root / "d" / "in") == "f"
    assert not os.path.lexists(ws.root / "d" / "out")


def test_a_write_under_a_folder_made_later_in_the_batch_is_not_staged_in_it(
    ws: Workspace,
) -> None:
    """Ops keep their order: a write listed before its folder's mkdir fails
    as it always did (no folder yet), and the folder still goes in."""
    ops = [write(0, "d/early", b"x"), mkdir(1, "d"), write(2, "d/late", b"y")]
    out = stage(ws, 1, ops, {0: b"x", 2: b"y"}).commit()
    assert [o.applied for o in out] == [False, True, True]
    assert sorted(os.listdir(ws.root / "d")) == ["late"]
    assert staging(ws) == []


def test_an_aborted_batch_leaves_no_staged_folder(ws: Workspace) -> None:
    batch = stage(ws, 1, [mkdir(0, "d"), mkdir(1, "d/e"), write(2, "d/e/f", b"f")], {2: b"f"})
    assert staging(ws)
    batch.abort()
    assert staging(ws) == [] and not (ws.root / "d").exists()


def test_a_staged_folder_left_by_a_crash_is_removed_at_start(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    left = root / ".devstack" / "staging" / "7-abcdef.t" / "3" / "sub"
    left.mkdir(parents=True)
    (left / "half").write_bytes(b"half a file")
    (root / ".devstack" / "staging" / "7-abcdef-4").write_bytes(b"a flat one")
    with open_workspace(root) as w:
        assert staging(w) == []


def test_a_replica_or_an_op_that_expects_something_is_not_staged_whole(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    w = Workspace(root, replica=True)
    try:
        batch = stage(w, 1, [mkdir(0, "d"), write(1, "d/f", b"f")], {1: b"f"})
        assert not [n for n in staging(w) if n.endswith(".t")]
        assert [o.applied for o in batch.commit()] == [True, True]
    finally:
        w.close()


def test_ops_take_effect_in_their_order_when_one_touches_a_staged_path(ws: Workspace) -> None:
    """A symlink at a path, then a write of that same path expecting nothing:
    the symlink goes in and the write is a conflict, exactly as one op at a
    time (the write is not staged with the folder ahead of the symlink)."""
    ops = [mkdir(0, "d"), write(1, "d/a", b"a"), symlink(2, "d/x", "a"), write(3, "d/x", b"x")]
    out = stage(ws, 1, ops, {1: b"a", 3: b"x"}).commit()
    assert [o.applied for o in out] == [True, True, True, False]
    assert out[3].conflict
    assert os.readlink(ws.root / "d" / "x") == "a"
    assert staging(ws) == []
