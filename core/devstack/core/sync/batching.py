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
