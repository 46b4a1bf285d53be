"""What sync may do to what a workspace holds (pure): the one home of the
safe-mode rules.

The sidecar applies them to every op, whatever the client says; the laptop's
planner applies the same function so that it does not send what the sidecar
would refuse (an optimisation, never the guard).

A workspace entry's :class:`~devstack.core.manifest.SyncState` says how it
relates to what sync last wrote there: ``SYNCED`` (still that), ``DIRTY``
(the app changed it since) or ``UNTRACKED`` (sync never wrote it: seeded
from the image, or made by the app).

- A replica may do anything; so may sync to what it wrote and nobody changed.
- What the app changed is a conflict, unless the person forces the laptop's
  side (``connect --force``); even then it is never moved elsewhere.
- What sync never wrote is never removed or moved, and a folder of it is
  never replaced; its content may be overwritten (the laptop's version of a
  file the image seeded), and a file or symlink replaced by another kind.
"""

from __future__ import annotations

import enum

from devstack.core.manifest import Kind, SyncState


class Deed(enum.Enum):
    """What an op does to the entry already at its path."""

    REMOVE = "remove"  # delete it; nothing takes its place
    OVERWRITE = "overwrite"  # new content, mode or target; the same kind of thing
    REPLACE = "replace"  # another kind of thing takes its place
    MOVE = "move"  # rename it to another path


def refusal(
    deed: Deed, state: SyncState, kind: Kind, *, replica: bool, force: bool = False
) -> str | None:
    """Why sync may not do ``deed`` to an entry of ``kind`` in ``state``;
    None when it may.

    >>> refusal(Deed.OVERWRITE, SyncState.UNTRACKED, Kind.FILE, replica=False) is None
    True
    """
    if replica or state == SyncState.SYNCED:
        return None
    if state == SyncState.DIRTY:
        if force and deed != Deed.MOVE:
            return None
        return "changed in the workspace since the last sync"
    if deed == Deed.OVERWRITE or (deed == Deed.REPLACE and kind != Kind.DIRECTORY):
        return None
    what = "removes" if deed == Deed.REMOVE else "moves" if deed == Deed.MOVE else "replaces"
    return (
        "sync did not create it (seeded from the image or made by the app): "
        f"only --mode replica {what} it"
    )
