"""Batch packing of ``devstack connect`` (devstack.core.sync.batching), as
tables: a list of changes in, the batches they travel in out."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from devstack.core.delta import DELTA_THRESHOLD
from devstack.core.manifest import Entry, Kind
from devstack.core.plan import Action, Change
from devstack.core.sync.batching import Carry, Limits, carry, pack, wants_delta


def write(path: str, size: int, old: int | None = None) -> Change:
    expected = Entry(path, Kind.FILE, old, 0o644) if old is not None else None
    return Change(Action.WRITE, path, Entry(path, Kind.FILE, size, 0o644), expected)


def mkdir(path: str) -> Change:
    return Change(Action.MKDIR, path, Entry(path, Kind.DIRECTORY, 0, 0o755), None)


def delete(path: str) -> Change:
    return Change(Action.DELETE, path, None, Entry(path, Kind.FILE, 1, 0o644))


def link(path: str) -> Change:
    return Change(Action.SYMLINK, path, Entry(path, Kind.SYMLINK, 0, 0o777, b"", "x"), None)


#: Small numbers, so that the tables stay readable.
LIMITS = Limits(inline_max=100, max_bytes=250, max_ops=4)


@dataclass
class Case:
    changes: list[Change]
    #: Each batch: its paths, with "*" after a chunked one.
    batches: list[list[str]]


CASES: dict[str, Case] = {
    "nothing": Case([], []),
    "ops without content fill a batch up to max_ops": Case(
        [mkdir("d"), link("l"), delete("x"), mkdir("e"), delete("y")],
        [["d", "l", "x", "e"], ["y"]],
    ),
    "inline content up to max_bytes": Case(
        [write("a", 100), write("b", 100), write("c", 50), write("d", 1)],
        [["a", "b", "c"], ["d"]],
    ),
    "a file that would pass max_bytes starts the next batch": Case(
        [write("a", 100), write("b", 100), write("c", 60)], [["a", "b"], ["c"]]
    ),
    "a large file goes chunked and ends its batch": Case(
        [write("a", 10), write("big", 101), write("b", 10)], [["a", "big*"], ["b"]]
    ),
    "large files go one per batch": Case(
        [write("big1", 5000), write("big2", 101)], [["big1*"], ["big2*"]]
    ),
    "an empty file is inline and costs nothing": Case(
        [write("e1", 0)] * 3 + [mkdir("d")] * 2, [["e1", "e1", "e1", "d"], ["d"]]
    ),
    "an inline file at exactly inline_max is inline": Case(
        [write("a", 100), write("b", 100)], [["a", "b"]]
    ),
    "ops without content ride along with inline ones": Case(
        [mkdir("d"), write("d/a", 100), delete("z"), write("d/b", 100), write("d/c", 100)],
        [["d", "d/a", "z", "d/b"], ["d/c"]],
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_packing(name: str) -> None:
    case = CASES[name]
    got: list[list[str]] = []
    i = 0
    while i < len(case.changes):
        packed = pack(case.changes, i, LIMITS)
        assert packed.end > i, "a batch always moves forward"
        got.append([c.path + ("*" if how is Carry.CHUNKED else "") for c, how in packed.items])
        assert sum(1 for _ in packed.items) <= LIMITS.max_ops
        assert packed.inline_bytes <= LIMITS.max_bytes or len(packed.items) == 1
        i = packed.end
    assert got == case.batches


def test_a_file_larger_than_max_bytes_inline_still_moves() -> None:
    """A sidecar whose chunk limit is above the batch budget: the file goes
    alone, so no batch is ever empty."""
    packed = pack([write("a", 300), write("b", 1)], 0, Limits(inline_max=400, max_bytes=250))
    assert [c.path for c, _ in packed.items] == ["a"] and packed.end == 1


@pytest.mark.parametrize(
    ("change", "how"),
    [
        (write("a", 100), Carry.INLINE),
        (write("a", 101), Carry.CHUNKED),
        (mkdir("d"), Carry.NONE),
        (link("l"), Carry.NONE),
        (delete("x"), Carry.NONE),
        (Change(Action.CHMOD, "a", Entry("a", Kind.FILE, 5000, 0o755), None), Carry.NONE),
        (Change(Action.ADOPT, "a", Entry("a", Kind.FILE, 5000, 0o644), None), Carry.NONE),
    ],
)
def test_how_content_travels(change: Change, how: Carry) -> None:
    assert carry(change, 100) is how


@pytest.mark.parametrize(
    ("change", "delta"),
    [
        (write("a", 10_000_000, old=DELTA_THRESHOLD), True),
        (write("a", 10_000_000, old=DELTA_THRESHOLD - 1), False),  # too small to pay off
        (write("a", 10_000_000), False),  # nothing there yet
        (
            Change(
                Action.WRITE,
                "a",
                Entry("a", Kind.FILE, 10_000_000, 0o644),
                Entry("a", Kind.SYMLINK, DELTA_THRESHOLD, 0o777, b"", "t"),
            ),
            False,  # a symlink is there, not a file
        ),
    ],
)
def test_when_a_delta_is_worth_asking_for(change: Change, delta: bool) -> None:
    assert wants_delta(change) is delta
