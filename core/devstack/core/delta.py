"""Content-defined chunking and deltas, rsync-style (pure computation over
bytes read from an open file).

Both sides cut a file into blocks whose boundaries depend only on the bytes
around them (a windowed gear sum), so an insertion moves only the blocks it
touches. The sidecar sends the block list of the file it has (its
signature); the laptop answers with copy ranges for the blocks the sidecar
already has and literal bytes for the rest. A one-line edit to a 50 MB file
moves one or two blocks.

numpy does the per-byte work; it is imported on first use so that a sidecar
which never sees a large file does not pay for it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy.typing as npt

WINDOW = 32
MIN_BLOCK = 2 * 1024
MAX_BLOCK = 64 * 1024
_MASK = (1 << 13) - 1  # about 8 KiB between boundaries on average
_READ = 4 * 1024 * 1024

#: Files at least this large are sent as deltas when the sidecar has an
#: older version.
DELTA_THRESHOLD = 256 * 1024

_gear: Any = None


def _table() -> Any:
    global _gear
    if _gear is None:
        import numpy as np

        _gear = np.array(
            [
                int.from_bytes(hashlib.blake2b(bytes([i]), digest_size=8).digest(), "little")
                for i in range(256)
            ],
            dtype=np.uint64,
        )
    return _gear


@dataclass(frozen=True, slots=True)
class Block:
    offset: int
    length: int
    hash: int


@dataclass(frozen=True, slots=True)
class Copy:
    """Copy ``length`` bytes from ``offset`` of the old content."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Literal:
    """Bytes ``[offset, offset+length)`` of the new content, sent as is."""

    offset: int
    length: int


def _candidates(data: bytes, carry: bytes) -> npt.NDArray[Any]:
    """Offsets (relative to ``data``) just after which a boundary may fall."""
    import numpy as np

    gear = _table()
    buf = np.frombuffer(carry + data, dtype=np.uint8)
    sums = np.cumsum(gear[buf], dtype=np.uint64)
    if len(buf) < WINDOW:
        return np.empty(0, dtype=np.int64)
    windowed = sums[WINDOW - 1 :].copy()
    windowed[1:] -= sums[: len(buf) - WINDOW]
    hits = np.nonzero((windowed & np.uint64(_MASK)) == 0)[0] + WINDOW  # end offsets in buf
    return hits - len(carry)


def boundaries(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each block of the open file ``fd``."""
    start = 0
    pos = 0
    carry = b""
    while pos < size:
        data = os.pread(fd, min(_READ, size - pos), pos)
        if not data:
            break
        for c in _candidates(data, carry).tolist():
            end = pos + int(c)
            if end <= pos:
                continue
            while end - start > MAX_BLOCK:
                yield start, MAX_BLOCK
                start += MAX_BLOCK
            if end - start >= MIN_BLOCK:
                yield start, end - start
                start = end
        pos += len(data)
        carry = (carry + data)[-(WINDOW - 1) :]
    while size - start > MAX_BLOCK:
        yield start, MAX_BLOCK
        start += MAX_BLOCK
    if size > start:
        yield start, size - start


def block_hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def signature(fd: int, size: int) -> list[Block]:
    """The block list of an open file."""
    return [Block(o, n, block_hash(os.pread(fd, n, o))) for o, n in boundaries(fd, size)]


def delta(fd: int, size: int, old: list[Block]) -> list[Copy | Literal]:
    """Instructions that rebuild the open file ``fd`` from content described
    by ``old``: copies of blocks the other side has, literals for the rest.
    Adjacent copies and adjacent literals are merged."""
    have: dict[tuple[int, int], int] = {}
    for b in old:
        have.setdefault((b.hash, b.length), b.offset)
    out: list[Copy | Literal] = []
    for o, n in boundaries(fd, size):
        at = have.get((block_hash(os.pread(fd, n, o)), n))
        last = out[-1] if out else None
        if at is not None:
            if isinstance(last, Copy) and last.offset + last.length == at:
                out[-1] = Copy(last.offset, last.length + n)
            else:
                out.append(Copy(at, n))
        elif isinstance(last, Literal) and last.offset + last.length == o:
            out[-1] = Literal(last.offset, last.length + n)
        else:
            out.append(Literal(o, n))
    return out
