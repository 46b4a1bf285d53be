"""What the sidecar does with one op, given what the workspace holds (pure).

The applier (``devstack.sidecar.workspace``) looks at the disk, asks
:func:`decide` (or :func:`decide_rename`), and executes the
:class:`Decision`; everything here is a function of values, tested with
tables. The decision is one of:

- ``APPLY``: make the change (``clear_first``: remove what stands there, an
  empty folder or a file of another kind, before);
- ``ADOPT``: the workspace already holds it: sync records it as written,
  the disk is not touched;
- ``FORGET``: a delete of what is already gone: sync forgets the path;
- ``CONFLICT``: the workspace holds what sync may not change
  (``devstack.core.sync.conflict``): the person decides;
- ``REFUSE``: the op can never apply as sent.

Checks that need the disk (where a symlink resolves through the links on
its way, whether a folder is empty) stay with the applier, which raises
:class:`~devstack.core.sync.model.RefusedError` with their reason.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from devstack.core.errors import UnsafePathError
from devstack.core.manifest import DIGEST_SIZE, Entry, Kind, SyncState
from devstack.core.paths import check_link_target, check_relpath
from devstack.core.sync.conflict import Deed, Refusal, conflict, deed, unexpected
from devstack.core.sync.model import OpKind, Reason, StagedOp

# The op kinds as module constants: these checks run once an op, and looking a
# member up on its enum class costs about ten times a global in Python 3.11.
_OP_WRITE, _OP_MKDIR, _OP_SYMLINK, _OP_DELETE, _OP_RENAME, _OP_ADOPT = (
    OpKind.WRITE,
    OpKind.MKDIR,
    OpKind.SYMLINK,
    OpKind.DELETE,
    OpKind.RENAME,
    OpKind.ADOPT,
)


class Do(enum.Enum):
    APPLY = "apply"
    ADOPT = "adopt"
    FORGET = "forget"
    CONFLICT = "conflict"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one op. ``code`` and ``why`` say why not (a conflict
    or a refusal); ``actual`` is what the workspace holds, for a conflict."""

    do: Do
    code: Reason | None = None
    why: str = ""
    actual: Entry | None = None
    clear_first: bool = False


APPLY: Final = Decision(Do.APPLY)
_CLEAR: Final = Decision(Do.APPLY, clear_first=True)
_ADOPT: Final = Decision(Do.ADOPT)
_FORGET: Final = Decision(Do.FORGET)


def _conflict(r: Refusal, actual: Entry | None, prefix: str = "") -> Decision:
    return Decision(Do.CONFLICT, r.code, prefix + r.why, actual)


def _refuse(code: Reason, why: str) -> Decision:
    return Decision(Do.REFUSE, code, why)


def check_op(op: StagedOp) -> Decision | None:
    """Why ``op`` can never apply as sent, whatever the workspace holds
    (None: it may): a kind this sidecar does not know, an unsafe path, a
    missing entry, a symlink target that leads out, a write without a file
    entry and its digest. ``why`` names the path."""
    kind = op.kind
    if kind is None:
        return _refuse(Reason.BAD_OP, f"{op.path!r}: unknown op kind")
    try:
        check_relpath(op.path)
        if op.from_path:
            check_relpath(op.from_path)
    except UnsafePathError as e:
        return _refuse(Reason.UNSAFE_PATH, str(e))
    entry = op.entry
    if entry is None:
        if kind is _OP_DELETE:
            return None
        return _refuse(Reason.BAD_FRAME, f"{op.path!r}: {kind} without an entry")
    if kind is _OP_SYMLINK:
        try:
            check_link_target(op.path, entry.target)
        except UnsafePathError as e:
            return _refuse(Reason.SYMLINK_ESCAPES, str(e))
    elif kind is _OP_WRITE and (entry.kind != Kind.FILE or len(entry.digest) != DIGEST_SIZE):
        return _refuse(Reason.BAD_FRAME, f"{op.path!r}: a write needs a file entry with a digest")
    return None


def creates_without_look(op: StagedOp, *, replica: bool) -> bool:
    """Whether the applier may first try ``op`` with a primitive that
    refuses to replace anything (``RENAME_NOREPLACE``, ``mkdir``), without
    looking: where nothing is, :func:`decide` says ``APPLY`` for it, and
    where something is the primitive fails and the applier looks, then
    decides."""
    kind = op.kind
    return op.expected_absent and not replica and (kind is _OP_WRITE or kind is _OP_MKDIR)


def decide(op: StagedOp, current: Entry | None, state: SyncState, *, replica: bool) -> Decision:
    """What to do with ``op`` (any kind but a rename, which
    :func:`decide_rename` takes) where the workspace holds ``current``, in
    ``state`` (ignored when ``current`` is None). ``op`` passed
    :func:`check_op`."""
    kind = op.kind
    assert kind is not None and kind is not _OP_RENAME
    new = op.entry
    if kind is _OP_ADOPT:
        assert new is not None
        if current is None or not current.same_content(new):
            return Decision(
                Do.CONFLICT,
                Reason.NOT_AS_EXPECTED,
                "cannot adopt: the workspace holds something else",
                current,
            )
        return _ADOPT
    if not replica:
        r = unexpected(op.expected, op.expected_absent, current)
        if r is not None:
            return _conflict(r, current)
        if current is not None:
            act = Deed.REMOVE if kind is _OP_DELETE else deed(new, current)
            r = conflict(act, current, state, replica=False, force=op.force)
            if r is not None:
                return _conflict(r, current)
    return _BY_KIND[kind](current)


def _delete(current: Entry | None) -> Decision:
    return _FORGET if current is None else APPLY


def _chmod(current: Entry | None) -> Decision:
    if current is None or current.kind == Kind.SYMLINK:
        return Decision(Do.CONFLICT, Reason.NOT_AS_EXPECTED, "nothing to chmod", current)
    return APPLY


def _mkdir(current: Entry | None) -> Decision:
    """A folder: a file or symlink there goes first."""
    return _CLEAR if current is not None and current.kind != Kind.DIRECTORY else APPLY


def _place(current: Entry | None) -> Decision:
    """A file or symlink, renamed into place: it replaces a file or symlink
    there in the same step, but an (empty) folder there goes first."""
    return _CLEAR if current is not None and current.kind == Kind.DIRECTORY else APPLY


#: The rest of the decision, by kind, once the conflict rule let the op go.
_BY_KIND: Final[dict[OpKind, Callable[[Entry | None], Decision]]] = {
    OpKind.DELETE: _delete,
    OpKind.CHMOD: _chmod,
    OpKind.MKDIR: _mkdir,
    OpKind.WRITE: _place,
    OpKind.SYMLINK: _place,
}


def rename_source(op: StagedOp, source: Entry | None, *, replica: bool) -> Decision | None:
    """The conflict of a rename whose source (``op.from_path``, holding
    ``source``) is gone or not what the laptop expected; None if it is. The
    first part of :func:`decide_rename`, which the applier asks before it
    looks at the target."""
    if source is None or (
        not replica and op.expected is not None and not source.same_content(op.expected)
    ):
        return Decision(
            Do.CONFLICT,
            Reason.NOT_AS_EXPECTED,
            f"rename source {op.from_path!r} is not as expected",
            source,
        )
    return None


def decide_rename(
    op: StagedOp,
    source: Entry | None,
    source_state: SyncState,
    target: Entry | None,
    *,
    replica: bool,
) -> Decision:
    """What to do with a rename of ``op.from_path`` (holding ``source``, in
    ``source_state``) to ``op.path`` (holding ``target``): move only what
    sync wrote and nobody changed (safe mode), never onto something (unless
    a replica). The symlinks it carries are the applier's to check."""
    src = op.from_path
    first = rename_source(op, source, replica=replica)
    if first is not None:
        return first
    assert source is not None
    if not replica:
        r = conflict(Deed.MOVE, source, source_state, replica=False)
        if r is not None:
            return _conflict(r, source, f"rename source {src!r}: ")
        if target is not None:
            return Decision(
                Do.CONFLICT, Reason.NOT_AS_EXPECTED, "rename target exists in the workspace", target
            )
    return APPLY


def chmod_tracks(state: SyncState, current: Entry, new: Entry) -> bool:
    """Whether a chmod makes sync take ``current`` on as what it wrote: a
    mode is not content, so (as ``adopt`` does) only what sync wrote
    already, or what the laptop holds too, never a file of the app's."""
    return state != SyncState.UNTRACKED or current.same_content(new)


def content_problem(
    path: str, declared: Entry, written: int, digest: bytes
) -> tuple[Reason, str] | None:
    """Why staged content may not go in place (None: it may): less than
    declared, or not what its digest says."""
    if written != declared.size:
        return (
            Reason.INCOMPLETE,
            f"{path!r}: got {written} of {declared.size} bytes; nothing written",
        )
    if digest != declared.digest:
        return Reason.DIGEST_MISMATCH, f"{path!r}: content does not match its digest"
    return None
