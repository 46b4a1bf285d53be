"""The one place the core's sync enums meet the protocol's (pure; it reads
the generated protobuf module, never grpc): :class:`OpKind` and
``pb.OpKind``, :class:`Reason` and ``pb.ProblemReason``.

An op kind or a reason the other side does not know maps to None: a
sidecar refuses such an op (``BAD_OP``); a client reads such a problem by
its ``Problem.reason`` string, which every sidecar sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from devstack.core.sync.model import OpKind, Reason
from devstack.sync.v1 import sync_pb2 as pb

#: OpKind -> wire op kind.
OP_KIND_TO_PB: Final[Mapping[OpKind, pb.OpKind.ValueType]] = {
    OpKind.WRITE: pb.OP_WRITE,
    OpKind.MKDIR: pb.OP_MKDIR,
    OpKind.SYMLINK: pb.OP_SYMLINK,
    OpKind.DELETE: pb.OP_DELETE,
    OpKind.RENAME: pb.OP_RENAME,
    OpKind.CHMOD: pb.OP_CHMOD,
    OpKind.ADOPT: pb.OP_ADOPT,
}
#: Wire op kind -> OpKind.
OP_KIND_FROM_PB: Final[Mapping[int, OpKind]] = {v: k for k, v in OP_KIND_TO_PB.items()}

#: Reason -> wire reason.
REASON_TO_PB: Final[Mapping[Reason, pb.ProblemReason.ValueType]] = {
    Reason.NOT_AS_EXPECTED: pb.PROBLEM_REASON_NOT_AS_EXPECTED,
    Reason.CHANGED_IN_WORKSPACE: pb.PROBLEM_REASON_CHANGED_IN_WORKSPACE,
    Reason.UNTRACKED: pb.PROBLEM_REASON_UNTRACKED,
    Reason.SYMLINK_ESCAPES: pb.PROBLEM_REASON_SYMLINK_ESCAPES,
    Reason.UNSAFE_PATH: pb.PROBLEM_REASON_UNSAFE_PATH,
    Reason.THROUGH_SYMLINK: pb.PROBLEM_REASON_THROUGH_SYMLINK,
    Reason.SPECIAL_FILE: pb.PROBLEM_REASON_SPECIAL_FILE,
    Reason.UNREADABLE: pb.PROBLEM_REASON_UNREADABLE,
    Reason.CHANGED_MEANWHILE: pb.PROBLEM_REASON_CHANGED_MEANWHILE,
    Reason.NOT_EMPTY: pb.PROBLEM_REASON_NOT_EMPTY,
    Reason.INCOMPLETE: pb.PROBLEM_REASON_INCOMPLETE,
    Reason.DIGEST_MISMATCH: pb.PROBLEM_REASON_DIGEST_MISMATCH,
    Reason.BAD_OP: pb.PROBLEM_REASON_BAD_OP,
    Reason.BAD_FRAME: pb.PROBLEM_REASON_BAD_FRAME,
    Reason.IO_ERROR: pb.PROBLEM_REASON_IO_ERROR,
}
#: Wire reason -> Reason.
REASON_FROM_PB: Final[Mapping[int, Reason]] = {v: k for k, v in REASON_TO_PB.items()}


def op_kind_to_pb(kind: OpKind) -> pb.OpKind.ValueType:
    return OP_KIND_TO_PB[kind]


def op_kind_from_pb(value: int) -> OpKind | None:
    """The op kind, or None for one this side does not know."""
    return OP_KIND_FROM_PB.get(value)


def reason_to_pb(reason: Reason) -> pb.ProblemReason.ValueType:
    return REASON_TO_PB[reason]


def reason_from_pb(value: int) -> Reason | None:
    """The reason, or None: unset (a sidecar that predates the enum) or
    one this side does not know. Read ``Problem.reason`` then."""
    return REASON_FROM_PB.get(value)


def problem_reason(p: pb.Problem) -> Reason | None:
    """A ``Problem``'s reason: its enum if this side knows it, else read
    from its ``reason`` string as a sidecar that predates the enum sends it
    (``conflict`` reads as ``NOT_AS_EXPECTED``, ``unsafe-path`` as
    ``UNSAFE_PATH``); None for a string this side does not know."""
    known = REASON_FROM_PB.get(p.code)
    if known is not None:
        return known
    return _FROM_LEGACY.get(p.reason)


_FROM_LEGACY: Final[Mapping[str, Reason]] = {
    "conflict": Reason.NOT_AS_EXPECTED,
    **{r.value: r for r in Reason if r.legacy == r.value},
}
