"""Acknowledgement bookkeeping of ``devstack connect``
(devstack.core.sync.acks), as tables: the picture of the workspace, a
batch and its Ack in; the picture, the held paths, the stats and what the
person is told out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from devstack.core.manifest import Entry, Kind, Manifest, SyncState, hash_bytes
from devstack.core.plan import Action, Change, Conflict
from devstack.core.sync.acks import Ack, Ledger, Problem
from devstack.core.sync.model import Reason

S, D = SyncState.SYNCED, SyncState.DIRTY


def f(path: str, content: bytes = b"x", state: SyncState = S) -> Entry:
    return Entry(path, Kind.FILE, len(content), 0o644, hash_bytes(content), "", state)


def ln(path: str, target: str) -> Entry:
    return Entry(path, Kind.SYMLINK, 0, 0o777, b"", target, S)


def m(*entries: Entry) -> Manifest:
    return {e.path: e for e in entries}


WRITE_A = Change(Action.WRITE, "a", f("a", b"new"), f("a", b"old"))
NEW_B = Change(Action.WRITE, "b", f("b"), None)
LINK = Change(Action.SYMLINK, "out", ln("out", "../../etc"), None)
GONE = Change(Action.DELETE, "g", None, f("g"))
MOVE = Change(Action.RENAME, "to", f("to"), f("from"), from_path="from")

CONFLICT_A = Problem(
    "a", Reason.CHANGED_IN_WORKSPACE, "'a': changed on the laptop and in the workspace",
    actual=f("a", b"app", D),
)  # fmt: skip
ESCAPES = Problem(
    "out", Reason.SYMLINK_ESCAPES, "'out' -> '../../etc': symlink target leaves the workspace",
    fix="point it inside",
)  # fmt: skip
LEGACY_UNSAFE = Problem("out", Reason.UNSAFE_PATH, "'out' -> '../../etc': leaves")
TORN = Problem("b", Reason.DIGEST_MISMATCH, "'b': content does not match its digest")


@dataclass
class Case:
    remote: Manifest
    changes: list[Change]
    ack: Ack
    want_remote: Manifest
    held: list[str] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    synced: int = 0
    rescan: set[str] = field(default_factory=set)
    notes: int = 0
    stale: bool = False


LOCAL = m(f("a", b"new"), f("b"), ln("out", "../../etc"), f("to"))

CASES: dict[str, Case] = {
    "every op applied": Case(
        m(f("a", b"old"), f("g"), f("from")),
        [WRITE_A, NEW_B, GONE, MOVE],
        Ack(1),
        m(f("a", b"new"), f("b"), f("to")),
        synced=3,  # write, write, rename; a delete is not a file synced
    ),
    "a conflict: the workspace's version is what the laptop now knows, held": Case(
        m(f("a", b"old")),
        [WRITE_A, NEW_B],
        Ack(1, (CONFLICT_A,)),
        m(f("a", b"app", D), f("b")),
        held=["a"],
        conflicts={"a": "'a': changed on the laptop and in the workspace"},
        synced=1,
    ),
    "a conflict over something gone: the laptop now knows it is gone": Case(
        m(f("a", b"old")),
        [WRITE_A],
        Ack(1, (Problem("a", Reason.NOT_AS_EXPECTED, "'a': gone"),)),
        m(),
        held=["a"],
        conflicts={"a": "'a': gone"},
    ),
    "a refusal is held and told once, with its fix": Case(
        m(),
        [LINK, NEW_B],
        Ack(1, (ESCAPES,)),
        m(f("b")),
        held=["out"],
        problems=["out"],
        synced=1,
        notes=1,
    ),
    "content that changed while it was sent is looked at again, not held": Case(
        m(),
        [NEW_B],
        Ack(1, (TORN,)),
        m(),
        rescan={"b"},
    ),
    "an ack that could not list every problem trusts none of the unlisted ops": Case(
        m(f("a", b"old")),
        [WRITE_A, NEW_B, LINK],
        Ack(7, (ESCAPES,), omitted=3),
        m(f("a", b"old")),
        held=["out"],
        problems=["out"],
        notes=1,
        stale=True,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_an_ack(name: str) -> None:
    case = CASES[name]
    book = Ledger(remote=dict(case.remote))
    done = book.record(case.ack, case.changes, LOCAL)
    assert book.remote == case.want_remote
    assert sorted(book.held) == case.held
    for path in case.held:
        assert book.held[path] == (LOCAL.get(path), book.remote.get(path))
    assert book.stats.conflicts == case.conflicts
    assert sorted(book.stats.problems) == case.problems
    assert book.stats.files_synced == case.synced
    assert done.rescan == case.rescan
    assert len(done.notes) == case.notes
    assert (done.stale is not None) is case.stale
    if case.stale:
        assert "reading the workspace again" in str(done.stale)


def test_a_refusal_says_the_sidecars_reason_and_fix_once_per_path() -> None:
    book = Ledger()
    first = book.record(Ack(1, (ESCAPES,)), [LINK], LOCAL)
    assert first.notes == (
        "not synced: out: 'out' -> '../../etc': symlink target leaves the workspace"
        " — fix: point it inside",
    )
    assert book.stats.problems["out"] == first.notes[0].removeprefix("not synced: out: ")
    # Sent again (the laptop touched it) and refused the same way: not told again.
    assert book.record(Ack(2, (ESCAPES,)), [LINK], LOCAL).notes == ()
    # Refused for another reason: told.
    again = book.record(Ack(3, (LEGACY_UNSAFE,)), [LINK], LOCAL)
    assert len(again.notes) == 1
    # A sidecar that sends no fix: the reason's own.
    assert again.notes[0].endswith("fix: " + Reason.UNSAFE_PATH.fix)


def test_under_once_refusals_are_kept_for_the_end() -> None:
    book = Ledger(quiet=True)
    assert book.record(Ack(1, (ESCAPES,)), [LINK], LOCAL).notes == ()
    assert book.unsynced() == [("out", ESCAPES.describe())]


def test_applied_settles_what_was_held() -> None:
    book = Ledger(remote=m(f("a", b"old")))
    book.record(Ack(1, (CONFLICT_A,)), [WRITE_A], LOCAL)
    assert "a" in book.held
    forced = Change(Action.WRITE, "a", f("a", b"new"), f("a", b"app", D), force=True)
    book.record(Ack(2), [forced], LOCAL)
    assert book.held == {} and book.stats.conflicts == {}
    assert book.remote == m(f("a", b"new"))


@dataclass
class Round:
    conflicts: list[Conflict]
    changes: list[Change] = field(default_factory=list)
    scope: frozenset[str] | None = None
    #: After the round.
    conflicts_shown: dict[str, str] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def held_book() -> Ledger:
    """A conflict on ``a`` and a refusal of ``out``, both held."""
    book = Ledger(remote=m(f("a", b"old")))
    book.record(Ack(1, (CONFLICT_A, ESCAPES)), [WRITE_A, LINK], LOCAL)
    return book


def unresolved(path: str) -> Conflict:
    return Conflict(path, None, None, "unresolved conflict")


ROUNDS: dict[str, Round] = {
    "held paths neither side changed stay, each with the sidecar's words": Round(
        [unresolved("a"), unresolved("out")],
        conflicts_shown={"a": CONFLICT_A.message},
        held=["a", "out"],
        problems=["out"],
    ),
    "a new conflict the plan found joins them": Round(
        [unresolved("a"), unresolved("out"), Conflict("c", None, None, "is a folder")],
        conflicts_shown={"a": CONFLICT_A.message, "c": "is a folder"},
        held=["a", "out"],
        problems=["out"],
    ),
    "a held path that needs nothing any more is settled": Round(
        [unresolved("a")],
        conflicts_shown={"a": CONFLICT_A.message},
        held=["a"],
    ),
    "a held path being sent again stays until its ack": Round(
        [unresolved("a")],
        changes=[LINK],
        conflicts_shown={"a": CONFLICT_A.message},
        held=["a", "out"],
        problems=["out"],
    ),
    "a round that looked only at other paths settles nothing": Round(
        [],
        scope=frozenset({"b"}),
        conflicts_shown={"a": CONFLICT_A.message},
        held=["a", "out"],
        problems=["out"],
    ),
}


@pytest.mark.parametrize("name", ROUNDS)
def test_after_a_round(name: str) -> None:
    case = ROUNDS[name]
    book = held_book()
    book.round_done(case.conflicts, case.changes, case.scope)
    assert book.stats.conflicts == case.conflicts_shown
    assert sorted(book.held) == case.held
    assert sorted(book.stats.problems) == case.problems
    # Never "unresolved conflict" for a path the sidecar said more about.
    assert "unresolved conflict" not in book.stats.conflicts.values()
