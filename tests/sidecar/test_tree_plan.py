"""Which ops of a batch are staged whole with a new folder
(``workspace._Tree.plan``, pure), as a table: ops in, each member's path in
the staged tree out."""

from __future__ import annotations

import pytest

from devstack.core.manifest import Entry, Kind, hash_bytes
from devstack.core.sync.model import OpKind, StagedOp
from devstack.sidecar.workspace import _Tree


def op(i: int, spec: str) -> StagedOp:
    """``m:d`` a new folder, ``w:d/f`` a new file, ``e:d/f`` a write that
    expects a file there, ``D:d/f`` a delta, ``l:d/l`` a symlink, ``r:to<from``
    a rename, ``x:p`` a delete."""
    kind, path = spec.split(":")
    from_path = ""
    if kind == "r":
        path, from_path = path.split("<")
    data = b"x"
    file = Entry(path, Kind.FILE, 1, 0o644, hash_bytes(data))
    kinds = {
        "m": (OpKind.MKDIR, Entry(path, Kind.DIRECTORY, 0, 0o755)),
        "w": (OpKind.WRITE, file),
        "e": (OpKind.WRITE, file),
        "D": (OpKind.WRITE, file),
        "l": (OpKind.SYMLINK, Entry(path, Kind.SYMLINK, 0, 0o777, b"", "t")),
        "r": (OpKind.RENAME, file),
        "x": (OpKind.DELETE, None),
    }
    k, entry = kinds[kind]
    expects = kind in "eDrx"
    return StagedOp(
        index=i,
        kind=k,
        path=path,
        entry=entry,
        expected=file if expects else None,
        expected_absent=not expects,
        from_path=from_path,
        delta=kind == "D",
    )


CASES: dict[str, tuple[str, dict[int, str]]] = {
    "a new folder with its files": ("m:d w:d/a w:d/b", {0: "0", 1: "0/a", 2: "0/b"}),
    "a folder in it, and a file in that": (
        "m:d m:d/e w:d/e/f w:d/g",
        {0: "0", 1: "0/e", 2: "0/e/f", 3: "0/g"},
    ),
    "a lone new folder is not staged": ("m:d m:d/e", {}),
    "two new folders, each its own root": (
        "m:a w:a/f m:b w:b/g",
        {0: "0", 1: "0/f", 2: "2", 3: "2/g"},
    ),
    "an op elsewhere changes nothing it holds": (
        "m:d w:d/a w:x l:y x:z w:d/b",
        {0: "0", 1: "0/a", 5: "0/b"},
    ),
    "a symlink in it: later ops in it go one by one": (
        "m:d w:d/a l:d/l w:d/b",
        {0: "0", 1: "0/a"},
    ),
    "a write that expects something in it": ("m:d w:d/a e:d/b w:d/c", {0: "0", 1: "0/a"}),
    "a delta is never a member": ("m:d w:d/a D:d/b w:d/c", {0: "0", 1: "0/a"}),
    "the same path again": ("m:d w:d/a w:d/a w:d/b", {0: "0", 1: "0/a"}),
    "a folder above it renamed": ("m:p/d w:p/d/a r:q<p w:p/d/b", {0: "0", 1: "0/a"}),
    "a folder above it as a rename's target": ("m:p/d w:p/d/a r:p<q w:p/d/b", {0: "0", 1: "0/a"}),
    "a write listed before its folder is not in it": (
        "w:d/a m:d w:d/b",
        {1: "1", 2: "1/b"},
    ),
    "a new folder inside a closed one is no root": (
        "m:d w:d/a l:d/l m:d/e w:d/e/f",
        {0: "0", 1: "0/a"},
    ),
    "a folder made above a root: the root takes nothing after it": (
        "m:a/b w:a/b/f m:a w:a/g w:a/b/h",
        {0: "0", 1: "0/f", 2: "2", 3: "2/g"},
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_tree_plan(name: str) -> None:
    given, want = CASES[name]
    ops = [op(i, spec) for i, spec in enumerate(given.split())]
    assert _Tree.plan(ops, {}) == want


def test_a_refused_op_changes_nothing_and_closes_nothing() -> None:
    from devstack.core.sync.model import Reason, not_applied

    ops = [op(i, spec) for i, spec in enumerate(["m:d", "w:d/a", "l:d/l", "w:d/b"])]
    refused = {2: not_applied("d/l", Reason.UNSAFE_PATH, "refused")}
    assert _Tree.plan(ops, refused) == {0: "0", 1: "0/a", 3: "0/b"}
