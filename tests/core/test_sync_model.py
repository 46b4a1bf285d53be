"""devstack.core.sync.model: op kinds, reasons, the frozen staged op and
outcomes, as tables."""

from __future__ import annotations

import pytest

from devstack.core.errors import (
    ConfigError,
    DevstackError,
    ProtocolError,
    UnsafePathError,
    WorkspaceIOError,
)
from devstack.core.manifest import Entry, Kind
from devstack.core.plan import Action
from devstack.core.sync.model import (
    OpKind,
    Outcome,
    Reason,
    RefusedError,
    StagedOp,
    done,
    not_applied,
    reason_of,
)

#: reason -> (the Problem.reason string older peers read, a conflict?)
REASONS: dict[Reason, tuple[str, bool]] = {
    Reason.NOT_AS_EXPECTED: ("conflict", True),
    Reason.CHANGED_IN_WORKSPACE: ("conflict", True),
    Reason.UNTRACKED: ("conflict", True),
    Reason.SYMLINK_ESCAPES: ("unsafe-path", False),
    Reason.UNSAFE_PATH: ("unsafe-path", False),
    Reason.THROUGH_SYMLINK: ("unsafe-path", False),
    Reason.SPECIAL_FILE: ("unsafe-path", False),
    Reason.UNREADABLE: ("unsafe-path", False),
    Reason.CHANGED_MEANWHILE: ("unsafe-path", False),
    Reason.NOT_EMPTY: ("not-empty", False),
    Reason.INCOMPLETE: ("incomplete", False),
    Reason.DIGEST_MISMATCH: ("digest-mismatch", False),
    Reason.BAD_OP: ("bad-op", False),
    Reason.BAD_FRAME: ("bad-frame", False),
    Reason.IO_ERROR: ("io-error", False),
}


def test_the_table_names_every_reason() -> None:
    assert set(REASONS) == set(Reason)


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.value)
def test_each_reason_keeps_the_string_older_peers_read(reason: Reason) -> None:
    legacy, is_conflict = REASONS[reason]
    assert reason.legacy == legacy
    assert reason.conflict is is_conflict
    assert reason.fix and "\n" not in reason.fix  # one sentence for a person


def test_a_refusal_names_its_own_fix() -> None:
    assert ".devstackignore" in Reason.SYMLINK_ESCAPES.fix
    assert "--force" in Reason.CHANGED_IN_WORKSPACE.fix
    assert "--mode replica" in Reason.UNTRACKED.fix


def test_op_kinds_are_the_planners_actions_and_their_names() -> None:
    assert Action is OpKind
    assert [k.value for k in OpKind] == [
        "mkdir",
        "write",
        "symlink",
        "delete",
        "rename",
        "chmod",
        "adopt",
    ]
    assert OpKind("write") is OpKind.WRITE and str(OpKind.WRITE) == "write"


def test_a_staged_op_is_immutable() -> None:
    e = Entry("a", Kind.FILE, 1, 0o644, b"\0" * 16)
    op = StagedOp(0, OpKind.WRITE, "a", e, None, True)
    with pytest.raises(AttributeError):
        op.force = True  # type: ignore[misc]
    assert op._replace(force=True).force and not op.force
    assert (op.from_path, op.force, op.delta, op.chunked) == ("", False, False, False)
    assert StagedOp(1, None, "a", None, None, False).kind is None  # a wire kind nobody knows


@pytest.mark.parametrize(
    ("outcome", "reason", "conflict", "fix"),
    [
        (done("a"), "", False, ""),
        (done("a", changed=False), "", False, ""),
        (
            not_applied("a", Reason.UNTRACKED, "'a': no"),
            "conflict",
            True,
            Reason.UNTRACKED.fix,
        ),
        (
            not_applied("a", Reason.SYMLINK_ESCAPES, "'a': out"),
            "unsafe-path",
            False,
            Reason.SYMLINK_ESCAPES.fix,
        ),
    ],
)
def test_outcomes(outcome: Outcome, reason: str, conflict: bool, fix: str) -> None:
    assert (outcome.reason, outcome.conflict, outcome.fix) == (reason, conflict, fix)
    assert outcome.applied is (outcome.code is None)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (RefusedError(Reason.SPECIAL_FILE, "fifo"), Reason.SPECIAL_FILE),
        (RefusedError(Reason.SYMLINK_ESCAPES, "out"), Reason.SYMLINK_ESCAPES),
        (UnsafePathError("bad path"), Reason.UNSAFE_PATH),
        (ProtocolError("bad frame"), Reason.BAD_FRAME),
        (WorkspaceIOError("disk full"), Reason.IO_ERROR),
        (ConfigError("other"), Reason.BAD_FRAME),
    ],
)
def test_reason_of_an_error(error: DevstackError, reason: Reason) -> None:
    assert reason_of(error) is reason


def test_a_refusal_is_an_unsafe_path_error_to_those_that_catch_those() -> None:
    e = RefusedError(Reason.THROUGH_SYMLINK, "'d' is a symlink")
    assert isinstance(e, UnsafePathError) and e.reason == "unsafe-path"
    assert str(e) == "'d' is a symlink"
