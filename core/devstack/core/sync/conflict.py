"""The conflict rule (pure): what sync may do to what a workspace holds.
Written once: the sidecar's applier applies it to every op, whatever the
client says; the laptop's planner applies the same function so that it does
not send what the sidecar would refuse (an optimisation, never the guard).

A workspace entry's :class:`~devstack.core.manifest.SyncState` says how it
relates to what sync last wrote there: ``SYNCED`` (still that), ``DIRTY``
(the app changed it since) or ``UNTRACKED`` (sync never wrote it: seeded
from the image, or made by the app).

- A replica may do anything; so may sync to what it wrote and nobody changed.
- What the app changed is a conflict (``CHANGED_IN_WORKSPACE``), unless the
  person forces the laptop's side (``connect --force``); even then it is
  never moved elsewhere.
- What sync never wrote is never removed or moved, and a folder of it is
  never replaced (``UNTRACKED``); its content may be overwritten (the
  laptop's version of a file the image seeded), and a file or symlink
  replaced by another kind.
- The sidecar also applies an op only where the workspace holds what the
  laptop expected (:func:`unexpected`, ``NOT_AS_EXPECTED``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from devstack.core.manifest import Entry, Kind, SyncState
from devstack.core.sync.model import Reason


class Deed(enum.Enum):
    """What an op does to the entry already at its path."""

    REMOVE = "remove"  # delete it; nothing takes its place
    OVERWRITE = "overwrite"  # new content, mode or target; the same kind of thing
    REPLACE = "replace"  # another kind of thing takes its place
    MOVE = "move"  # rename it to another path


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why sync may not do something: a conflict reason and a sentence."""

    code: Reason
    why: str


def deed(new: Entry | None, current: Entry) -> Deed:
    """What putting ``new`` (None: nothing) where ``current`` is does to it."""
    if new is None:
        return Deed.REMOVE
    return Deed.OVERWRITE if new.kind == current.kind else Deed.REPLACE


_CHANGED = Refusal(Reason.CHANGED_IN_WORKSPACE, "changed in the workspace since the last sync")
_UNTRACKED = {
    d: Refusal(
        Reason.UNTRACKED,
        "sync did not create it (seeded from the image or made by the app): "
        f"only --mode replica {what} it",
    )
    for d, what in (
        (Deed.REMOVE, "removes"),
        (Deed.MOVE, "moves"),
        (Deed.REPLACE, "replaces"),
    )
}


def conflict(
    act: Deed, current: Entry, state: SyncState, *, replica: bool, force: bool = False
) -> Refusal | None:
    """Why sync may not do ``act`` to ``current``, a workspace entry in
    ``state``; None when it may.

    >>> conflict(Deed.OVERWRITE, Entry("a", Kind.FILE), SyncState.UNTRACKED, replica=False)
    """
    if replica or state == SyncState.SYNCED:
        return None
    if state == SyncState.DIRTY:
        return None if force and act != Deed.MOVE else _CHANGED
    if act == Deed.OVERWRITE or (act == Deed.REPLACE and current.kind != Kind.DIRECTORY):
        return None
    return _UNTRACKED[act]


def unexpected(
    expected: Entry | None, expected_absent: bool, current: Entry | None
) -> Refusal | None:
    """Why the workspace's ``current`` entry is not what the laptop
    expected (``expected``, or nothing when ``expected_absent``; neither:
    anything will do); None when it is. Modes aside."""
    if expected_absent:
        if current is not None:
            return Refusal(
                Reason.NOT_AS_EXPECTED, "exists in the workspace, the laptop expected nothing"
            )
    elif expected is not None:
        if current is None:
            return Refusal(Reason.NOT_AS_EXPECTED, "is gone from the workspace")
        if not current.same_content(expected):
            return Refusal(
                Reason.NOT_AS_EXPECTED, "changed in the workspace (not what the laptop expected)"
            )
    return None
