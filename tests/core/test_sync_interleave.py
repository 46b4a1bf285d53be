"""Spreading the large files of a plan among its small ones
(devstack.core.sync.batching.interleave), as tables: a list of changes in,
the order they are sent in out."""

from __future__ import annotations

import pytest

from devstack.core.manifest import Entry, Kind
from devstack.core.plan import Action, Change
from devstack.core.sync.batching import interleave

#: Files above this are large (chunked) in these tables.
INLINE_MAX = 100


def change(spec: str) -> Change:
    """``w:a`` a small write, ``W:a`` a large one, ``l:a`` a symlink,
    ``c:a`` a mode change, ``m:a`` a folder, ``r:a`` a rename, ``d:a`` a
    delete, ``=:a`` an adoption."""
    kind, path = spec.split(":")
    if kind in "wW":
        size = 1000 if kind == "W" else 10
        return Change(Action.WRITE, path, Entry(path, Kind.FILE, size, 0o644), None)
    if kind == "l":
        return Change(Action.SYMLINK, path, Entry(path, Kind.SYMLINK, 0, 0o777, b"", "x"), None)
    if kind == "m":
        return Change(Action.MKDIR, path, Entry(path, Kind.DIRECTORY, 0, 0o755), None)
    old = Entry(path, Kind.FILE, 1000, 0o644)
    if kind == "c":
        return Change(Action.CHMOD, path, old._replace(mode=0o755), old)
    if kind == "=":
        return Change(Action.ADOPT, path, old, old)
    if kind == "r":
        return Change(Action.RENAME, path, old, old._replace(path="from"), from_path="from")
    return Change(Action.DELETE, path, None, old)


CASES: dict[str, tuple[str, str]] = {
    "nothing": ("", ""),
    "only small files: as planned": ("w:a w:b w:c", "w:a w:b w:c"),
    "only large files: as planned": ("W:a W:b", "W:a W:b"),
    "one large file goes to the middle": ("W:a w:b w:c w:d w:e", "w:b w:c W:a w:d w:e"),
    "large files spread evenly, each kind in its order": (
        "W:a W:b w:c w:d w:e w:f w:g w:h",
        "w:c w:d W:a w:e w:f W:b w:g w:h",
    ),
    "symlinks, modes and adoptions count as small": (
        "W:a l:b c:c =:d",
        "l:b c:c W:a =:d",
    ),
    "renames and deletes keep their places": (
        "d:x m:m r:r W:a w:b w:c d:y",
        "d:x m:m r:r w:b W:a w:c d:y",
    ),
    "each run of writes on its own": (
        "W:a w:b r:n W:c w:d w:e w:f",
        "w:b W:a r:n w:d w:e W:c w:f",
    ),
    "new folders among the writes count as small": (
        "W:a w:b m:n W:c w:d w:e w:f",
        "w:b m:n W:a w:d w:e W:c w:f",
    ),
    "a large file never goes before its new folder": (
        "w:a w:b m:n W:n/x w:n/y",
        "w:a w:b m:n W:n/x w:n/y",
    ),
    "nor before a new folder further up": (
        "w:a w:b w:c m:n m:n/o w:n/o/p W:n/o/x w:n/z",
        "w:a w:b w:c m:n m:n/o W:n/o/x w:n/o/p w:n/z",
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_interleave(name: str) -> None:
    given, expected = CASES[name]
    changes = [change(s) for s in given.split()]
    got = interleave(changes, INLINE_MAX)
    want = [change(s) for s in expected.split()]
    assert got == want
    assert sorted(map(id, got)) == sorted(map(id, changes))  # the same objects, none lost
