"""devstack.core.sync.decide: what the sidecar does with an op given what
the workspace holds, as tables."""

from __future__ import annotations

import itertools

import pytest

from devstack.core.manifest import Entry, Kind, SyncState, hash_bytes
from devstack.core.sync.decide import (
    Do,
    check_op,
    chmod_tracks,
    content_problem,
    creates_without_look,
    decide,
    decide_rename,
    rename_source,
)
from devstack.core.sync.model import OpKind, Reason, StagedOp

S, D, U = SyncState.SYNCED, SyncState.DIRTY, SyncState.UNTRACKED
NAE, CHANGED, UNTRACKED = Reason.NOT_AS_EXPECTED, Reason.CHANGED_IN_WORKSPACE, Reason.UNTRACKED


def f(path: str = "a", content: bytes = b"x", mode: int = 0o644) -> Entry:
    return Entry(path, Kind.FILE, len(content), mode, hash_bytes(content))


def d(path: str = "a", mode: int = 0o755) -> Entry:
    return Entry(path, Kind.DIRECTORY, 0, mode)


def ln(path: str = "a", target: str = "b") -> Entry:
    return Entry(path, Kind.SYMLINK, 0, 0o777, b"", target)


def op(
    kind: OpKind,
    entry: Entry | None,
    expected: Entry | None = None,
    *,
    absent: bool = False,
    force: bool = False,
    path: str = "a",
    from_path: str = "",
) -> StagedOp:
    return StagedOp(0, kind, path, entry, expected, absent, from_path, force)


W, MK, SL, DEL, CH, AD = (
    OpKind.WRITE,
    OpKind.MKDIR,
    OpKind.SYMLINK,
    OpKind.DELETE,
    OpKind.CHMOD,
    OpKind.ADOPT,
)
NEW, OLD, APP = f(content=b"new"), f(content=b"old"), f(content=b"app")

# name: (op, what the workspace holds, its state, replica) -> (do, reason, clear first)
DECIDE: dict[
    str, tuple[StagedOp, Entry | None, SyncState, bool, tuple[Do, Reason | None, bool]]
] = {
    "a new file where nothing is": (
        op(W, NEW, absent=True),
        None,
        U,
        False,
        (Do.APPLY, None, False),
    ),
    "a new file where the app made one": (
        op(W, NEW, absent=True),
        APP,
        U,
        False,
        (Do.CONFLICT, NAE, False),
    ),
    "a replica writes where the app made one": (
        op(W, NEW, absent=True),
        APP,
        U,
        True,
        (Do.APPLY, None, False),
    ),
    "an update of what sync wrote": (op(W, NEW, OLD), OLD, S, False, (Do.APPLY, None, False)),
    "an update of what the app changed": (
        op(W, NEW, OLD),
        OLD,
        D,
        False,
        (Do.CONFLICT, CHANGED, False),
    ),
    "a forced update of what the app changed": (
        op(W, NEW, OLD, force=True),
        OLD,
        D,
        False,
        (Do.APPLY, None, False),
    ),
    "an update of a file that is gone": (
        op(W, NEW, OLD),
        None,
        U,
        False,
        (Do.CONFLICT, NAE, False),
    ),
    "an update of a file that is not as expected": (
        op(W, NEW, OLD),
        APP,
        S,
        False,
        (Do.CONFLICT, NAE, False),
    ),
    "the laptop's version of a seeded file": (
        op(W, NEW, OLD),
        OLD,
        U,
        False,
        (Do.APPLY, None, False),
    ),
    "a file over an empty folder sync made": (
        op(W, NEW, d()),
        d(),
        S,
        False,
        (Do.APPLY, None, True),
    ),
    "a file over a folder the image seeded": (
        op(W, NEW, d()),
        d(),
        U,
        False,
        (Do.CONFLICT, UNTRACKED, False),
    ),
    "a file over a seeded symlink": (op(W, NEW, ln()), ln(), U, False, (Do.APPLY, None, False)),
    "a symlink over a file sync wrote": (op(SL, ln(), OLD), OLD, S, False, (Do.APPLY, None, False)),
    "a symlink over a folder sync made": (op(SL, ln(), d()), d(), S, False, (Do.APPLY, None, True)),
    "a folder over a file sync wrote": (op(MK, d(), OLD), OLD, S, False, (Do.APPLY, None, True)),
    "a folder where one is": (op(MK, d(mode=0o700), d()), d(), S, False, (Do.APPLY, None, False)),
    "a folder over a file a replica has": (op(MK, d()), APP, D, True, (Do.APPLY, None, True)),
    "a delete of what sync wrote": (op(DEL, None, OLD), OLD, S, False, (Do.APPLY, None, False)),
    "a delete of what is gone": (op(DEL, None, OLD), None, U, True, (Do.FORGET, None, False)),
    "a delete of what the app changed": (
        op(DEL, None, OLD),
        OLD,
        D,
        False,
        (Do.CONFLICT, CHANGED, False),
    ),
    "a forced delete of what the app changed": (
        op(DEL, None, OLD, force=True),
        OLD,
        D,
        False,
        (Do.APPLY, None, False),
    ),
    "a delete of a seeded file, forced": (
        op(DEL, None, OLD, force=True),
        OLD,
        U,
        False,
        (Do.CONFLICT, UNTRACKED, False),
    ),
    "a delete whose entry is set is still a removal": (
        op(DEL, NEW, OLD, force=True),
        OLD,
        U,
        False,
        (Do.CONFLICT, UNTRACKED, False),
    ),
    "a chmod of what sync wrote": (
        op(CH, f(mode=0o755), f()),
        f(),
        S,
        False,
        (Do.APPLY, None, False),
    ),
    "a chmod of a seeded file": (
        op(CH, f(mode=0o755), f()),
        f(),
        U,
        False,
        (Do.APPLY, None, False),
    ),
    "a chmod of nothing": (op(CH, f(mode=0o755)), None, U, True, (Do.CONFLICT, NAE, False)),
    "a chmod of a symlink": (op(CH, ln()), ln(), S, True, (Do.CONFLICT, NAE, False)),
    "an adoption of what is identical": (
        op(AD, f(), f()),
        f(mode=0o600),
        U,
        False,
        (Do.ADOPT, None, False),
    ),
    "an adoption of what the app changed": (
        op(AD, f(), f()),
        APP,
        D,
        True,
        (Do.CONFLICT, NAE, False),
    ),
    "an adoption of nothing": (op(AD, f()), None, U, False, (Do.CONFLICT, NAE, False)),
}


@pytest.mark.parametrize("name", list(DECIDE))
def test_decide(name: str) -> None:
    staged, current, state, replica, (do, code, clear) = DECIDE[name]
    got = decide(staged, current, state, replica=replica)
    assert (got.do, got.code, got.clear_first) == (do, code, clear)
    if do is Do.CONFLICT:
        assert got.actual == current and got.why
    else:
        assert got.actual is None and not got.why


@pytest.mark.parametrize(
    ("staged", "code", "why"),
    [
        (op(W, NEW, absent=True), None, ""),
        (op(DEL, None, OLD), None, ""),
        (StagedOp(0, None, "a", NEW, None, True), Reason.BAD_OP, "'a': unknown op kind"),
        (op(W, NEW, path="../a"), Reason.UNSAFE_PATH, "'..' segments are not allowed"),
        (op(W, NEW, path=".devstack/x"), Reason.UNSAFE_PATH, "reserved for the sidecar"),
        (op(OpKind.RENAME, NEW, from_path="/etc/x"), Reason.UNSAFE_PATH, "absolute paths"),
        (op(MK, None), Reason.BAD_FRAME, "'a': mkdir without an entry"),
        (op(W, d()), Reason.BAD_FRAME, "a write needs a file entry with a digest"),
        (op(W, f()._replace(digest=b"short")), Reason.BAD_FRAME, "with a digest"),
        (
            op(SL, ln(target="../out")),
            Reason.SYMLINK_ESCAPES,
            "symlink target leaves the workspace",
        ),
        (op(SL, ln(target="/etc")), Reason.SYMLINK_ESCAPES, "absolute symlink targets"),
        (op(SL, ln(target=".devstack")), Reason.SYMLINK_ESCAPES, "symlink into .devstack/"),
        (op(SL, ln(target="x/../../y")), Reason.SYMLINK_ESCAPES, "'..' after a name"),
        (op(SL, ln("d/l", "../x"), path="d/l"), None, ""),
    ],
)
def test_check_op(staged: StagedOp, code: Reason | None, why: str) -> None:
    got = check_op(staged)
    if code is None:
        assert got is None
    else:
        assert got is not None and (got.do, got.code) == (Do.REFUSE, code)
        assert why in got.why


KINDS = list(OpKind)


@pytest.mark.parametrize(
    ("kind", "absent", "replica"), list(itertools.product(KINDS, (False, True), (False, True)))
)
def test_creating_without_a_look_is_what_decide_says_where_nothing_is(
    kind: OpKind, absent: bool, replica: bool
) -> None:
    entry = {W: NEW, MK: d(), SL: ln()}.get(kind)
    staged = op(kind, entry, None if absent else OLD, absent=absent)
    fast = creates_without_look(staged, replica=replica)
    assert fast is (absent and not replica and kind in (W, MK))
    if fast:  # the primitive that refuses to replace acts as decide would
        assert decide(staged, None, U, replica=replica).do is Do.APPLY


SRC = f("s", b"moved")
TO = f("t", b"moved")
RENAME = op(OpKind.RENAME, TO, SRC, path="t", from_path="s")


@pytest.mark.parametrize(
    ("source", "state", "target", "replica", "do", "code", "why"),
    [
        (SRC, S, None, False, Do.APPLY, None, ""),
        (None, U, None, False, Do.CONFLICT, NAE, "rename source 's' is not as expected"),
        (APP, S, None, False, Do.CONFLICT, NAE, "rename source 's' is not as expected"),
        (APP, S, None, True, Do.APPLY, None, ""),
        (None, U, None, True, Do.CONFLICT, NAE, "rename source 's' is not as expected"),
        (SRC, D, None, False, Do.CONFLICT, CHANGED, "rename source 's': changed in the"),
        (SRC, U, None, False, Do.CONFLICT, UNTRACKED, "rename source 's': sync did not"),
        (SRC, S, APP, False, Do.CONFLICT, NAE, "rename target exists in the workspace"),
        (SRC, U, APP, True, Do.APPLY, None, ""),
    ],
)
def test_decide_rename(
    source: Entry | None,
    state: SyncState,
    target: Entry | None,
    replica: bool,
    do: Do,
    code: Reason | None,
    why: str,
) -> None:
    got = decide_rename(RENAME, source, state, target, replica=replica)
    assert (got.do, got.code) == (do, code)
    assert got.why.startswith(why)
    if do is Do.CONFLICT:
        assert got.actual == (target if "target" in why else source)
    # Its first part, asked before the target is looked at.
    first = rename_source(RENAME, source, replica=replica)
    assert (first is not None) is why.endswith("is not as expected")
    assert first is None or first == got


@pytest.mark.parametrize(
    ("state", "current", "new", "tracks"),
    [
        (S, f(), f(mode=0o755), True),
        (D, APP, f(mode=0o755), True),
        (U, f(), f(mode=0o755), True),  # what the laptop holds too
        (U, APP, f(mode=0o755), False),  # the app's file is not taken on by a chmod
    ],
)
def test_chmod_tracks(state: SyncState, current: Entry, new: Entry, tracks: bool) -> None:
    assert chmod_tracks(state, current, new) is tracks


@pytest.mark.parametrize(
    ("written", "digest", "expected"),
    [
        (3, hash_bytes(b"new"), None),
        (2, hash_bytes(b"new"), (Reason.INCOMPLETE, "'a': got 2 of 3 bytes; nothing written")),
        (3, hash_bytes(b"nex"), (Reason.DIGEST_MISMATCH, "'a': content does not match its digest")),
    ],
)
def test_content_problem(written: int, digest: bytes, expected: tuple[Reason, str] | None) -> None:
    assert content_problem("a", NEW, written, digest) == expected
