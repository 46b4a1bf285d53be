"""devstack.core.sync.wire: the core's enums and the protocol's, mapped in
one place, both ways, with nothing left out."""

from __future__ import annotations

import pytest

from devstack.core.protocol import OP_CODES, OP_NAMES
from devstack.core.sync.model import OpKind, Reason
from devstack.core.sync.wire import (
    OP_KIND_TO_PB,
    REASON_TO_PB,
    op_kind_from_pb,
    op_kind_to_pb,
    problem_reason,
    reason_from_pb,
    reason_to_pb,
)
from devstack.sync.v1 import sync_pb2 as pb


def test_every_op_kind_has_its_own_wire_value_and_back() -> None:
    wire = {v for v in pb.OpKind.values() if v != pb.OP_UNSPECIFIED}
    assert set(OP_KIND_TO_PB) == set(OpKind)
    assert set(OP_KIND_TO_PB.values()) == wire  # one each, none left out
    for kind in OpKind:
        assert op_kind_from_pb(op_kind_to_pb(kind)) is kind
        assert pb.OpKind.Name(op_kind_to_pb(kind)) == f"OP_{kind.name}"
    assert op_kind_from_pb(pb.OP_UNSPECIFIED) is None
    assert op_kind_from_pb(99) is None  # a newer client's kind: refused, bad-op


def test_every_reason_has_its_own_wire_value_and_back() -> None:
    wire = {v for v in pb.ProblemReason.values() if v != pb.PROBLEM_REASON_UNSPECIFIED}
    assert set(REASON_TO_PB) == set(Reason)
    assert set(REASON_TO_PB.values()) == wire
    for reason in Reason:
        assert reason_from_pb(reason_to_pb(reason)) is reason
        assert pb.ProblemReason.Name(reason_to_pb(reason)) == f"PROBLEM_REASON_{reason.name}"
    assert reason_from_pb(pb.PROBLEM_REASON_UNSPECIFIED) is None
    assert reason_from_pb(99) is None


def test_the_views_by_name_follow_the_one_mapping() -> None:
    assert {op_kind_to_pb(k): k.value for k in OpKind} == OP_NAMES
    assert {k.value: op_kind_to_pb(k) for k in OpKind} == OP_CODES


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (pb.PROBLEM_REASON_SYMLINK_ESCAPES, "unsafe-path", Reason.SYMLINK_ESCAPES),
        (pb.PROBLEM_REASON_UNTRACKED, "conflict", Reason.UNTRACKED),
        # a sidecar that predates the enum: read by its string
        (pb.PROBLEM_REASON_UNSPECIFIED, "conflict", Reason.NOT_AS_EXPECTED),
        (pb.PROBLEM_REASON_UNSPECIFIED, "unsafe-path", Reason.UNSAFE_PATH),
        (pb.PROBLEM_REASON_UNSPECIFIED, "digest-mismatch", Reason.DIGEST_MISMATCH),
        (pb.PROBLEM_REASON_UNSPECIFIED, "not-empty", Reason.NOT_EMPTY),
        (pb.PROBLEM_REASON_UNSPECIFIED, "io-error", Reason.IO_ERROR),
        (pb.PROBLEM_REASON_UNSPECIFIED, "something-new", None),
        # a newer sidecar's reason: read by its string too
        (99, "unsafe-path", Reason.UNSAFE_PATH),
    ],
)
def test_a_problems_reason(code: int, reason: str, expected: Reason | None) -> None:
    p = pb.Problem(path="a", reason=reason)
    p.code = code  # type: ignore[assignment]
    assert problem_reason(p) is expected


def test_problem_keeps_the_fields_old_clients_read() -> None:
    """Wire compatibility: ``code`` and ``fix`` are new field numbers; the
    four fields a client that predates them reads keep their numbers and
    types, so it reads every Problem as before (and ignores the rest)."""
    fields = {f.name: (f.number, f.type) for f in pb.Problem.DESCRIPTOR.fields}
    string, message, enum = 9, 11, 14  # FieldDescriptor.TYPE_*
    assert fields == {
        "path": (1, string),
        "reason": (2, string),
        "message": (3, string),
        "actual": (4, message),
        "code": (5, enum),
        "fix": (6, string),
    }
