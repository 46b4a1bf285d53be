"""Batch packing of ``devstack connect`` (pure): which changes go in which
batch, and how each one's content travels.

A batch holds at most ``max_ops`` ops and ``max_bytes`` of inline content
(the gRPC message limit is 4 MiB). A file up to ``inline_max`` travels
inline, in its op; a larger one is ``CHUNKED`` (its content follows the
batch in bounded chunks, or as a delta against the workspace's older
version) and ends its batch, so a batch stays bounded whatever the tree
holds. Everything else (folders, symlinks, deletes, renames, modes,
adoptions) carries no content. The I/O shell reads the files and builds
the protobuf messages.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from devstack.core.delta import DELTA_THRESHOLD
from devstack.core.manifest import Kind
from devstack.core.paths import folders_above
from devstack.core.plan import Action, Change

#: Inline content per batch message (the gRPC limit is 4 MiB).
BATCH_BYTES = 2 * 1024 * 1024
#: Ops per batch.
BATCH_OPS = 2000
#: Batches in flight before waiting for an acknowledgement.
WINDOW = 4


class Carry(enum.Enum):
    """How an op's content travels."""

    NONE = "none"  # no content: a folder, symlink, delete, rename, mode, adoption
    INLINE = "inline"  # in the op itself
    CHUNKED = "chunked"  # in Chunk messages after the batch


@dataclass(frozen=True)
class Limits:
    """The bounds of one batch. ``inline_max``: the largest file sent inline
    (at most the sidecar's chunk limit)."""

    inline_max: int
    max_bytes: int = BATCH_BYTES
    max_ops: int = BATCH_OPS


@dataclass(frozen=True)
class Packed:
    """One batch: its changes with how each travels, and where the next
    batch starts in the change list."""

    items: tuple[tuple[Change, Carry], ...]
    end: int

    @property
    def inline_bytes(self) -> int:
        """Bytes of content that travel inline (as planned: a file may have
        changed since it was scanned)."""
        return sum(c.entry.size for c, how in self.items if how is Carry.INLINE and c.entry)


def carry(change: Change, inline_max: int) -> Carry:
    """How ``change``'s content travels."""
    if change.action != Action.WRITE or change.entry is None:
        return Carry.NONE
    return Carry.INLINE if change.entry.size <= inline_max else Carry.CHUNKED


def pack(changes: Sequence[Change], start: int, limits: Limits) -> Packed:
    """The batch that starts at ``changes[start]``. It takes at least one
    change (a batch always moves forward), then stops before the op that
    would pass ``max_ops`` or ``max_bytes`` of inline content, and right
    after a chunked file."""
    items: list[tuple[Change, Carry]] = []
    inline = 0
    i = start
    while i < len(changes) and len(items) < limits.max_ops:
        ch = changes[i]
        how = carry(ch, limits.inline_max)
        if how is Carry.INLINE:
            assert ch.entry is not None
            if inline + ch.entry.size > limits.max_bytes and items:
                break
            inline += ch.entry.size
        items.append((ch, how))
        i += 1
        if how is Carry.CHUNKED:
            break  # one large file ends a batch: keep batches bounded
    return Packed(tuple(items), i)


#: The actions of a plan's run of writes (``devstack.core.plan``): one change
#: per path, in depth-first path order, none depending on another's place in
#: it but on the folders it is in (a new folder goes right before its content).
_WRITES_RUN = frozenset({Action.WRITE, Action.SYMLINK, Action.CHMOD, Action.ADOPT, Action.MKDIR})


def interleave(changes: Sequence[Change], inline_max: int) -> list[Change]:
    """``changes`` with the large (chunked) writes of each run of writes
    spread evenly among that run's other changes, each kind keeping its own
    order; every other change keeps its place.

    Small files cost the sidecar per file (creating, staging, renaming) and
    large ones cost the link per byte: in path order a tree's large files
    often sit together (``assets/``), so the sidecar idles while they cross
    the link and the link idles while it applies the small ones. Spread,
    each batch of small files is applied while a large file travels."""
    out: list[Change] = []
    i, n = 0, len(changes)
    while i < n:
        if changes[i].action not in _WRITES_RUN:
            out.append(changes[i])
            i += 1
            continue
        j = i
        while j < n and changes[j].action in _WRITES_RUN:
            j += 1
        large = [c for c in changes[i:j] if carry(c, inline_max) is Carry.CHUNKED]
        if not large or len(large) == j - i:
            out.extend(changes[i:j])
        else:
            small = [c for c in changes[i:j] if carry(c, inline_max) is not Carry.CHUNKED]
            # Large file k goes after small change ceil((k + 1) * S / (L + 1)):
            # the run starts with a small one, so the sidecar has work at once,
            # and ends with small ones while there are enough.
            s, ell, placed = len(small), len(large), 0
            spread: list[Change] = []
            for k, big in enumerate(large):
                at = -(-(k + 1) * s // (ell + 1))
                spread.extend(small[placed:at])
                placed = at
                spread.append(big)
            spread.extend(small[placed:])
            out.extend(_after_folders(spread))
        i = j
    return out


def _after_folders(run: list[Change]) -> list[Change]:
    """``run`` with every change that was moved ahead of a folder it is in
    (made in this run) put right after the last such folder."""
    made = {c.path for c in run if c.action is Action.MKDIR}
    if not made:
        return run
    out: list[Change] = []
    waiting: list[Change] = []

    def waits(c: Change) -> bool:
        """Whether a folder ``c`` lies in is not made yet."""
        return any(f in made for f in folders_above(c.path))

    for c in run:
        if waits(c):
            waiting.append(c)
            continue
        out.append(c)
        if c.action is Action.MKDIR:
            made.discard(c.path)
            if waiting:
                still: list[Change] = []
                for w in waiting:
                    (still if waits(w) else out).append(w)
                waiting = still
    out.extend(waiting)  # (none: the plan makes each folder in the run)
    return out


def wants_delta(change: Change) -> bool:
    """Whether to ask the sidecar for a signature of its version first: the
    workspace holds an older file large enough for a delta to pay off."""
    old = change.expected
    return (
        change.action == Action.WRITE
        and old is not None
        and old.kind == Kind.FILE
        and old.size >= DELTA_THRESHOLD
    )
