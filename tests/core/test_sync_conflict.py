"""devstack.core.sync.conflict: the conflict rule as a table, and the
planner and the applier's decision agreeing on it (one function)."""

from __future__ import annotations

import itertools

import pytest

from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.core.plan import plan
from devstack.core.sync.conflict import Deed, conflict, deed, unexpected
from devstack.core.sync.decide import Do, decide, decide_rename
from devstack.core.sync.model import OpKind, Reason, StagedOp

S, D, U = SyncState.SYNCED, SyncState.DIRTY, SyncState.UNTRACKED
R, OW, P, M = Deed.REMOVE, Deed.OVERWRITE, Deed.REPLACE, Deed.MOVE
F, DIR, L = Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK
CHANGED, UNTRACKED = Reason.CHANGED_IN_WORKSPACE, Reason.UNTRACKED

# (deed, state, kind of the workspace entry, replica, force) -> the reason, or None
RULE: list[tuple[Deed, SyncState, Kind, bool, bool, Reason | None]] = [
    # what sync wrote and nobody changed: anything goes
    *[(d, S, k, False, f, None) for d in Deed for k in Kind for f in (False, True)],
    # a replica: anything goes
    *[
        (d, s, k, True, f, None)
        for d in Deed
        for s in SyncState
        for k in Kind
        for f in (False, True)
    ],
    # what the app changed: a conflict, unless forced; never moved
    *[(d, D, k, False, False, CHANGED) for d in Deed for k in Kind],
    *[(d, D, k, False, True, None) for d in (R, OW, P) for k in Kind],
    *[(M, D, k, False, True, CHANGED) for k in Kind],
    # what sync never wrote: overwritten, a file or link replaced; never removed
    # or moved, a folder never replaced, forced or not
    *[(OW, U, k, False, f, None) for k in Kind for f in (False, True)],
    *[(P, U, k, False, f, None) for k in (F, L) for f in (False, True)],
    *[(P, U, DIR, False, f, UNTRACKED) for f in (False, True)],
    *[(d, U, k, False, f, UNTRACKED) for d in (R, M) for k in Kind for f in (False, True)],
]


def entry(path: str, kind: Kind, content: bytes = b"x", state: SyncState = S) -> Entry:
    if kind == F:
        return Entry(path, F, len(content), 0o644, hash_bytes(content), "", state)
    if kind == L:
        return Entry(path, L, 0, 0o777, b"", content.decode(), state)
    return Entry(path, DIR, 0, 0o755, b"", "", state)


def test_the_table_covers_every_case_once() -> None:
    keys = [row[:5] for row in RULE]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(itertools.product(Deed, SyncState, Kind, (False, True), (False, True)))


@pytest.mark.parametrize(("act", "state", "kind", "replica", "force", "code"), RULE)
def test_the_rule(
    act: Deed, state: SyncState, kind: Kind, replica: bool, force: bool, code: Reason | None
) -> None:
    got = conflict(act, entry("a", kind), state, replica=replica, force=force)
    assert (got and got.code) == code
    if got is not None:
        assert got.code.conflict
        if code is UNTRACKED:
            verb = {R: "removes", M: "moves", P: "replaces"}[act]
            assert got.why.endswith(f"only --mode replica {verb} it")


@pytest.mark.parametrize(
    ("new", "current", "expected"),
    [
        (None, F, R),
        (None, DIR, R),
        (F, F, OW),
        (L, L, OW),
        (DIR, DIR, OW),
        (F, DIR, P),
        (DIR, F, P),
        (L, F, P),
    ],
)
def test_deed(new: Kind | None, current: Kind, expected: Deed) -> None:
    assert deed(None if new is None else entry("a", new), entry("a", current)) is expected


A, B = entry("a", F, b"a"), entry("a", F, b"b")


@pytest.mark.parametrize(
    ("expected", "absent", "current", "why"),
    [
        (None, True, None, None),
        (None, True, A, "exists in the workspace, the laptop expected nothing"),
        (A, False, A, None),
        (A, False, A._replace(mode=0o600), None),  # modes aside
        (A, False, None, "is gone from the workspace"),
        (A, False, B, "changed in the workspace (not what the laptop expected)"),
        (None, False, A, None),  # no expectation: anything will do
        (None, False, None, None),
    ],
)
def test_unexpected(
    expected: Entry | None, absent: bool, current: Entry | None, why: str | None
) -> None:
    got = unexpected(expected, absent, current)
    assert (got and got.why) == why
    assert got is None or got.code is Reason.NOT_AS_EXPECTED


# The planner and the applier share the rule: for one path, whatever the two
# sides hold, the planner sends a change exactly when the sidecar would apply
# it (with the expectation the planner gives it), and its conflicts are the
# sidecar's conflicts.
LAPTOP = [None, entry("p", F, b"laptop"), entry("p", L, b"t-laptop"), entry("p", DIR)]
POD = [
    entry("p", k, c, s)
    for k, c in ((F, b"pod"), (F, b"laptop"), (L, b"t-pod"), (DIR, b""))
    for s in SyncState
]


@pytest.mark.parametrize("replica", [False, True], ids=["safe", "replica"])
@pytest.mark.parametrize("force", [False, True], ids=["plain", "forced"])
@pytest.mark.parametrize(
    "pod", POD, ids=lambda e: f"{e.kind.name}-{e.digest[:2].hex()}-{e.state.name}"
)
@pytest.mark.parametrize("laptop", LAPTOP, ids=lambda e: "none" if e is None else e.kind.name)
def test_the_planner_sends_what_the_sidecar_applies(
    laptop: Entry | None, pod: Entry, replica: bool, force: bool
) -> None:
    local = {} if laptop is None else {"p": laptop}
    p = plan(local, {"p": pod}, replica=replica, force=force)
    current: Entry | None = pod
    for ch in p.changes:  # in order, each against what the ones before left
        op = StagedOp(
            0,
            ch.action,
            ch.path,
            ch.entry,
            ch.expected,
            ch.expected is None,
            ch.from_path,
            ch.force,
        )
        state = S if current is None or current is not pod else pod.state
        got = decide(op, current, state, replica=replica)
        assert got.do in (Do.APPLY, Do.ADOPT), (ch, got)
        current = None if ch.entry is None else ch.entry
    if p.conflicts or not p.changes:
        # What the planner leaves (a conflict, the pod's own file it never
        # removes, or what is in sync already) the sidecar would not change
        # either, by the same rule.
        if laptop is None:
            op = StagedOp(0, OpKind.DELETE, "p", None, pod, False, force=force)
        else:
            kind = {F: OpKind.WRITE, L: OpKind.SYMLINK, DIR: OpKind.MKDIR}[laptop.kind]
            op = StagedOp(0, kind, "p", laptop, pod, False, force=force)
        got = decide(op, pod, pod.state, replica=replica)
        if p.conflicts or laptop is None:
            assert got.do is Do.CONFLICT and got.code in (CHANGED, UNTRACKED), (p, got)
        else:  # in sync: the planner sends nothing (the sidecar would apply it)
            assert pod.state == S and pod.same_content(laptop), p
    else:
        assert not p.conflicts


def test_a_move_of_what_the_app_changed_is_refused_even_forced() -> None:
    src = entry("a", F, b"x", D)
    op = StagedOp(0, OpKind.RENAME, "b", src._replace(path="b"), src, False, "a", True)
    got = decide_rename(op, src, D, None, replica=False)
    assert (got.do, got.code) == (Do.CONFLICT, CHANGED)
    assert got.why == "rename source 'a': changed in the workspace since the last sync"
