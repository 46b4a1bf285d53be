"""The first round's feed (``devstack.cli.syncer._Feed``): where a large file
found by the scan goes among the small changes not sent yet. Tables, with a
scan fed by hand."""

from __future__ import annotations

import asyncio

import pytest

from devstack.cli import syncer as syncer_mod
from devstack.cli.syncer import _Feed, _Segments
from devstack.core.manifest import Entry, Kind
from devstack.core.plan import Action, Change, Plan, plan
from devstack.core.sync.batching import Limits, pack

INLINE = 100
LIMITS = Limits(INLINE, max_ops=3)


def entry(path: str, size: int = 0) -> Entry:
    if path.endswith("/"):
        return Entry(path.rstrip("/"), Kind.DIRECTORY, 0, 0o755)
    return Entry(path, Kind.FILE, size, 0o644, b"d" * 16)


def small(path: str) -> Entry:
    return entry(path, 10)


def large(path: str) -> Entry:
    return entry(path, INLINE + 1)


def planner(local: dict[str, Entry]) -> Plan:
    return plan(local, {})


def paths(changes: list[Change]) -> list[str]:
    return [("+" if c.action is Action.MKDIR else "") + c.path for c in changes]


class _Scan(_Segments):
    """Segments fed by hand: the scan ends when the feed would wait for it."""

    async def next(self, *, wait: bool) -> list[Entry] | None:
        if wait and self._queue.empty() and not self.ended:
            self.end()
            await asyncio.sleep(0)
        return await super().next(wait=wait)

    def end(self) -> None:
        if not self.ended:
            self.feed(None)


async def drive(segments: list[list[Entry]], end_at: int | None) -> list[str]:
    """Feed ``segments`` (all found before anything is packed), pack batches
    as ``Syncer._send`` does, releasing after each; the scan ends once
    ``end_at`` batches were packed, or when the feed would wait for it.
    Returns the order the changes went in."""
    seg = _Scan(asyncio.get_running_loop())
    for s in segments:
        seg.feed(s)
    await asyncio.sleep(0)
    told: list[list[Change]] = []
    feed = _Feed(seg, planner, told.append)
    changes: list[Change] = []
    i, batches = 0, 0
    while i < len(changes) or not feed.done:
        if batches == end_at:
            seg.end()
            await asyncio.sleep(0)
        ended = list(changes) if feed.done else None
        await feed.top_up(changes, i, LIMITS, wait=True)
        assert ended is None or changes == ended  # once the scan ended, nothing moves
        if i >= len(changes):
            continue
        packed = pack(changes, i, LIMITS)
        i = packed.end
        feed.release(changes, i, packed)
        batches += 1
    assert told and sorted(paths(told[0])) == sorted(paths(changes))
    return paths(changes)


@pytest.mark.parametrize(
    ("segments", "end_at", "expected"),
    [
        # The large file found in the second segment goes after the first
        # batch of small ones, its folders moved up with it from behind the
        # small files of ``a``; its folder's small file stays in its place.
        (
            [
                [entry("a/"), *(small(f"a/{k}") for k in range(6)), entry("z/"), entry("z/img/")],
                [large("z/img/big"), small("z/img/s")],
            ],
            None,
            [
                "+a",
                "a/0",
                "a/1",
                "+z",
                "+z/img",
                "z/img/big",
                "a/2",
                "a/3",
                "a/4",
                "a/5",
                "z/img/s",
            ],
        ),
        # Two large files: one after each batch of small ones, never two in
        # a row while small ones wait.
        (
            [
                [entry("d/"), large("d/b1"), large("d/b2")],
                [small(f"d/s{k}") for k in range(6)],
            ],
            None,
            ["+d", "d/s0", "d/s1", "d/b1", "d/s2", "d/s3", "d/s4", "d/b2", "d/s5"],
        ),
        # Nothing but large files: each goes at once.
        ([[entry("d/"), large("d/b1"), large("d/b2")]], None, ["+d", "d/b1", "d/b2"]),
        # The scan ends with large files still waiting: they are spread
        # among the small changes not sent yet (``interleave``); the one
        # released already keeps its place.
        (
            [
                [entry("d/"), large("d/b1"), large("d/b2"), large("d/b3")],
                [small(f"d/s{k}") for k in range(8)],
            ],
            1,
            [
                "+d",
                "d/s0",
                "d/s1",
                "d/b1",
                "d/s2",
                "d/s3",
                "d/b2",
                "d/s4",
                "d/s5",
                "d/b3",
                "d/s6",
                "d/s7",
            ],
        ),
    ],
    ids=["folders move up", "alternating", "only large", "scan ended"],
)
def test_a_large_file_goes_after_the_next_small_batch_with_its_folders(
    segments: list[list[Entry]],
    end_at: int | None,
    expected: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread: list[int] = []
    real = syncer_mod.interleave

    def counted(changes: list[Change], inline_max: int) -> list[Change]:
        spread.append(len(changes))
        return real(changes, inline_max)

    monkeypatch.setattr(syncer_mod, "interleave", counted)
    order = asyncio.run(drive(segments, end_at))
    assert order == expected
    assert len(spread) == 1  # once, when the scan ended: never again
    # Whatever moved, every entry still comes after the folders it is in.
    for k, p in enumerate(order):
        parent = p.lstrip("+").rpartition("/")[0]
        if parent:
            assert order.index("+" + parent) < k, (p, order)
