"""The sync model (pure): what an operation is, what became of it, and why.

- :class:`OpKind` is the one name of an operation's kind: the planner's
  changes, the client's batches and the sidecar's applier all use it, and
  ``devstack.core.sync.wire`` maps it to the protocol's ``OpKind``.
- :class:`Reason` says why an op was not applied. Each reason has a stable
  name (its value), the coarser string that older peers know
  (:attr:`Reason.legacy`, sent in ``Problem.reason``), whether it is a
  conflict (the workspace holds something sync may not change) or a
  refusal (an op that can never apply as sent), and a fix for a person.
- :class:`StagedOp` is one op of a batch as the sidecar received it: an
  immutable value; what staging its content needs lives with the applier.
- :class:`Outcome` is what one op did.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

from devstack.core.errors import DevstackError, ProtocolError, UnsafePathError, WorkspaceIOError
from devstack.core.manifest import Entry


class OpKind(enum.StrEnum):
    """The kind of one operation; its value is the name in logs and
    messages (``write``, ``mkdir``, ...)."""

    MKDIR = "mkdir"
    WRITE = "write"
    SYMLINK = "symlink"
    DELETE = "delete"
    RENAME = "rename"
    CHMOD = "chmod"
    ADOPT = "adopt"


class Reason(enum.Enum):
    """Why an op was not applied. Conflicts first, then refusals."""

    #: The workspace holds something else than the laptop expected there
    #: (or nothing, where it expected something; or something where it
    #: expected nothing).
    NOT_AS_EXPECTED = "not-as-expected"
    #: The app changed the entry since sync last wrote it.
    CHANGED_IN_WORKSPACE = "changed-in-workspace"
    #: Sync never wrote the entry (seeded from the image or made by the
    #: app): only a replica removes, moves or replaces it.
    UNTRACKED = "untracked"
    #: A symlink whose target leads out of the workspace (or into
    #: ``.devstack/``), by its own text or through the links on its way.
    SYMLINK_ESCAPES = "symlink-escapes"
    #: A path sync never uses: absolute, ``..``, too long, ``.devstack/``.
    UNSAFE_PATH = "unsafe-path"
    #: Something on the way (a folder of the path, or the file a delta
    #: reads) is a symlink or not a folder in the workspace.
    THROUGH_SYMLINK = "through-symlink"
    #: A device, fifo or socket: never created, replaced or removed.
    SPECIAL_FILE = "special-file"
    #: A folder below a folder being moved cannot be read, so the symlinks
    #: in it cannot be checked.
    UNREADABLE = "unreadable"
    #: The workspace changed under the op while it was applied.
    CHANGED_MEANWHILE = "changed-meanwhile"
    #: A folder that holds files sync did not create is kept.
    NOT_EMPTY = "not-empty"
    #: Less content arrived than the op declared.
    INCOMPLETE = "incomplete"
    #: The content does not match its digest.
    DIGEST_MISMATCH = "digest-mismatch"
    #: An op kind this sidecar does not know.
    BAD_OP = "bad-op"
    #: An op that breaks the protocol.
    BAD_FRAME = "bad-frame"
    #: The workspace's disk refused the op.
    IO_ERROR = "io-error"

    @property
    def legacy(self) -> str:
        """The ``Problem.reason`` string, as peers that predate the enum
        read it (``conflict``, ``unsafe-path``, ...)."""
        return _LEGACY[self]

    @property
    def conflict(self) -> bool:
        """A conflict (the person decides), not a refusal."""
        return self in _CONFLICTS

    @property
    def fix(self) -> str:
        """What a person can do about it, in one sentence."""
        return _FIXES[self]


_CONFLICTS: Final = frozenset(
    {Reason.NOT_AS_EXPECTED, Reason.CHANGED_IN_WORKSPACE, Reason.UNTRACKED}
)
#: Refusals that older peers know as "unsafe-path".
_UNSAFE: Final = frozenset(
    {
        Reason.SYMLINK_ESCAPES,
        Reason.THROUGH_SYMLINK,
        Reason.SPECIAL_FILE,
        Reason.UNREADABLE,
        Reason.CHANGED_MEANWHILE,
    }
)
_LEGACY: Final = {
    r: "conflict" if r in _CONFLICTS else "unsafe-path" if r in _UNSAFE else r.value for r in Reason
}
_TAKE_A_SIDE = (
    "keep the laptop's version with `devstack connect --force`, or the pod's by "
    "copying it to the laptop"
)
_FIXES: Final = {
    Reason.NOT_AS_EXPECTED: _TAKE_A_SIDE,
    Reason.CHANGED_IN_WORKSPACE: _TAKE_A_SIDE,
    Reason.UNTRACKED: (
        "sync leaves what it did not create alone: remove it in the pod "
        "(`devstack exec -- rm -r PATH`), or run the sidecar with --mode replica"
    ),
    Reason.SYMLINK_ESCAPES: (
        "point the link inside the synced folder (a relative target, with '..' only "
        "at its start), or list it in .devstackignore"
    ),
    Reason.UNSAFE_PATH: "rename it on the laptop, or list it in .devstackignore",
    Reason.THROUGH_SYMLINK: (
        "the pod holds a symlink or a file where the laptop has a folder: remove it "
        "in the pod (`devstack exec -- rm PATH`)"
    ),
    Reason.SPECIAL_FILE: (
        "a device, fifo or socket is never touched: remove it in the pod, or list the "
        "path in .devstackignore"
    ),
    Reason.UNREADABLE: (
        "make the folder readable to the sidecar's user in the pod, or remove it there"
    ),
    Reason.CHANGED_MEANWHILE: "the pod changed it meanwhile: sync tries again next round",
    Reason.NOT_EMPTY: "remove the files sync did not create in the pod, or keep the folder",
    Reason.INCOMPLETE: "the file changed while it was sent: connect sends it again",
    Reason.DIGEST_MISMATCH: "the file changed while it was sent: connect sends it again",
    Reason.BAD_OP: "use the same devstack version for connect and the sidecar",
    Reason.BAD_FRAME: "use the same devstack version for connect and the sidecar",
    Reason.IO_ERROR: "check the pod's disk: free space and permissions of the workspace",
}


class RefusedError(UnsafePathError):
    """An op the sidecar refuses, with the specific :class:`Reason` (an
    ``UnsafePathError`` to everything that catches those)."""

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(message)
        self.code = code


def reason_of(error: DevstackError) -> Reason:
    """The reason an error gives an op that raised it."""
    if isinstance(error, RefusedError):
        return error.code
    if isinstance(error, UnsafePathError):
        return Reason.UNSAFE_PATH
    if isinstance(error, ProtocolError):
        return Reason.BAD_FRAME
    if isinstance(error, WorkspaceIOError):
        return Reason.IO_ERROR
    return Reason.BAD_FRAME


class StagedOp(NamedTuple):
    """One op of a batch, as the sidecar received it: an immutable value
    (a named tuple, as ``Entry`` is, so that a batch of thousands is cheap
    to build).

    ``kind`` is None for a wire kind this sidecar does not know (the op is
    refused, ``BAD_OP``). ``entry`` is what ``path`` must hold afterwards
    (None for a delete); ``expected`` what the laptop believes is there now
    (``expected_absent``: nothing). For a rename, ``from_path`` moves and
    ``expected`` describes it. ``delta``: a write built from the current
    content plus copy ranges; ``chunked``: its content comes in chunks, not
    inline."""

    #: Its place in the batch (the field shadows ``tuple.index``).
    index: int  # type: ignore[assignment]
    kind: OpKind | None
    path: str
    entry: Entry | None
    expected: Entry | None
    expected_absent: bool
    from_path: str = ""
    force: bool = False
    delta: bool = False
    chunked: bool = False


class Outcome(NamedTuple):
    """What one op did: applied, or not (``code`` says why)."""

    applied: bool
    path: str
    code: Reason | None = None
    message: str = ""
    #: For conflicts: what the workspace holds at ``path`` now.
    actual: Entry | None = None
    #: Whether the disk changed (an ``adopt`` of identical content, or the
    #: delete of what is already gone, applies without changing anything:
    #: nothing for the app to reload).
    changed: bool = True

    @property
    def reason(self) -> str:
        """The ``Problem.reason`` string ("" when applied)."""
        return "" if self.code is None else self.code.legacy

    @property
    def conflict(self) -> bool:
        return self.code is not None and self.code.conflict

    @property
    def fix(self) -> str:
        return "" if self.code is None else self.code.fix


def done(path: str, *, changed: bool = True) -> Outcome:
    """An applied op (``changed``: the disk changed)."""
    return Outcome(True, path, changed=changed)


def not_applied(path: str, code: Reason, message: str, actual: Entry | None = None) -> Outcome:
    """An op that was not applied, and why."""
    return Outcome(False, path, code, message, actual)
