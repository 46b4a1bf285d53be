"""Protocol helpers shared by ``devstack connect`` and the sidecar (pure):
version and limits, conversion between core entries and protobuf messages,
content encoding, token handling. The op kinds and outcome reasons, and their
wire values, are ``devstack.core.sync``'s.
"""

from __future__ import annotations

import hmac
import sys
import zlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from operator import add, mul
from pathlib import Path
from typing import Any, Final

from devstack.core.errors import ConfigError, ProtocolError, StreamError
from devstack.core.manifest import Entry, Kind, SyncState, gc_paused, make_entry
from devstack.core.sync.wire import OP_KIND_FROM_PB, OP_KIND_TO_PB
from devstack.sync.v1 import sync_pb2 as pb

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

PROTOCOL_VERSION = 1
#: Largest literal payload in one Chunk or inline Op.content.
MAX_CHUNK_BYTES = 1 << 20
#: Files up to this size travel inline in their Op.
INLINE_MAX = 256 * 1024
#: gRPC message size limit on both sides: a chunk plus framing.
MAX_MESSAGE_BYTES = 4 * MAX_CHUNK_BYTES
#: Entries per ManifestPage of ``Entry`` messages.
MANIFEST_PAGE = 2000
TOKEN_METADATA = "authorization"  # noqa: S105 (a header name, not a secret)
#: Where ``devstack connect`` and the sidecar look for the token file.
TOKEN_FILE_ENV = "DEVSTACK_TOKEN_FILE"  # noqa: S105 (a variable name)
#: Environment variables that lead to the token: never passed to the app,
#: reload steps or ``Exec`` commands.
TOKEN_ENV_VARS: Final = (TOKEN_FILE_ENV, "DEVSTACK_TOKEN")

#: Wire op kind -> its name (``OpKind``'s value). The mapping itself has
#: one home, ``devstack.core.sync.wire``; these are views of it by name.
OP_NAMES: Final[Mapping[int, str]] = {code: k.value for code, k in OP_KIND_FROM_PB.items()}
#: Op name (``OpKind``'s value) -> wire op kind.
OP_CODES: Final[Mapping[str, int]] = {k.value: code for k, code in OP_KIND_TO_PB.items()}

#: Extensions whose content is already compressed: never worth zlib.
_COMPRESSED = frozenset(
    [
        ".gz",
        ".tgz",
        ".bz2",
        ".xz",
        ".zst",
        ".zip",
        ".jar",
        ".war",
        ".whl",
        ".png",
        ".jpg",
        ".jpeg",
        ".gif",
        ".webp",
        ".mp3",
        ".mp4",
        ".mov",
        ".avif",
        ".woff",
        ".woff2",
        ".pdf",
        ".7z",
        ".br",
    ]
)


_KINDS: Final[Mapping[int, Kind]] = {int(k): k for k in Kind}
_STATES: Final[Mapping[int, SyncState]] = {int(s): s for s in SyncState}


def fill_entry_pb(m: pb.Entry, e: Entry) -> None:
    """Set every field of an ``Entry`` message in place (a part of a
    message being built, perhaps filled before)."""
    m.path = e.path
    m.kind = e.kind  # type: ignore[assignment]
    m.size = e.size
    m.mode = e.mode
    m.digest = e.digest
    m.target = e.target
    m.state = e.state  # type: ignore[assignment]


def entry_to_pb(e: Entry) -> pb.Entry:
    m = pb.Entry()
    fill_entry_pb(m, e)
    return m


def entry_from_pb(m: pb.Entry) -> Entry:
    kind = _KINDS.get(m.kind)
    if kind is None:
        raise ProtocolError(f"{m.path!r}: unsupported entry kind {m.kind}")
    state = _STATES.get(m.state, SyncState.UNTRACKED)
    return Entry(m.path, kind, m.size, m.mode & 0o7777, m.digest, m.target, state)


#: Bytes of one columnar manifest page, about: well under
#: ``MAX_MESSAGE_BYTES`` whatever the path lengths.
MANIFEST_PAGE_BYTES = 2 << 20


def manifest_messages(entries: Sequence[Entry], *, columnar: bool) -> list[pb.ServerMessage]:
    """The sidecar's manifest as the ``ServerMessage`` pages that follow
    ``Welcome`` (at least one; the last has ``last=True``): in columnar form
    (``ManifestColumns``, built column by column, pages of about
    ``MANIFEST_PAGE_BYTES``) or, for a client that did not ask for it, as
    ``Entry`` messages."""
    pages: list[pb.ServerMessage] = []
    if not columnar:
        for i in range(0, len(entries), MANIFEST_PAGE):
            msg = pb.ServerMessage()
            page = msg.manifest.entries
            for e in entries[i : i + MANIFEST_PAGE]:
                fill_entry_pb(page.add(), e)
            pages.append(msg)
    elif entries:
        with gc_paused():
            columns = tuple(zip(*entries, strict=True))
            paths, targets = columns[0], columns[5]
            # Encoded bytes per entry, about: its path and target (up to 4
            # bytes a character) and at most 40 for the other columns.
            cost: Iterable[int] = map(len, paths)
            if any(targets):
                cost = map(add, cost, map(len, targets))
            if not all(map(str.isascii, paths)) or not all(map(str.isascii, targets)):
                cost = map(mul, cost, repeat(4))
            ends = list(accumulate(map(add, cost, repeat(40))))
            start = 0
            while start < len(entries):
                # The first entry past the budget ends the page (at least one entry).
                budget = (ends[start - 1] if start else 0) + MANIFEST_PAGE_BYTES
                end = max(bisect_right(ends, budget), start + 1)
                pages.append(_columns_message([c[start:end] for c in columns]))
                start = end
    if not pages:
        pages.append(pb.ServerMessage(manifest=pb.ManifestPage()))
    pages[-1].manifest.last = True
    return pages


def _columns_message(columns: list[Sequence[Any]]) -> pb.ServerMessage:
    paths, kinds, sizes, modes, digests, targets, states = columns
    msg = pb.ServerMessage()
    cols = msg.manifest.columns
    cols.paths.extend(paths)
    cols.kinds.extend(kinds)
    cols.sizes.extend(sizes)
    cols.modes.extend(modes)
    cols.digests.extend(digests)
    if any(targets):
        cols.targets.extend([t for k, t in zip(kinds, targets, strict=True) if k == Kind.SYMLINK])
    cols.states.extend(states)
    return msg


def read_manifest_page(page: pb.ManifestPage, into: dict[str, Entry]) -> None:
    """Add the entries of one manifest page (either form) to ``into``, the
    columnar form in bulk. A page whose columns disagree in length, or an
    entry of an unknown kind, is a ``ProtocolError``; an unknown sync state
    reads as untracked."""
    for m in page.entries:
        e = entry_from_pb(m)
        into[e.path] = e
    if not page.HasField("columns"):
        return
    cols = page.columns
    # Lists first: zip over the message's own containers is slower.
    paths, sizes, modes, digests = (
        list(cols.paths),
        list(cols.sizes),
        list(cols.modes),
        list(cols.digests),
    )
    n = len(paths)
    if not (len(cols.kinds) == len(sizes) == len(modes) == len(digests) == len(cols.states) == n):
        raise ProtocolError("manifest page: its columns have different lengths")
    try:
        kinds = list(map(_KINDS.__getitem__, cols.kinds))
    except KeyError as e:
        raise ProtocolError(f"manifest page: unsupported entry kind {e.args[0]}") from e
    if n and max(modes) > 0o7777:
        modes = [m & 0o7777 for m in modes]
    states = list(map(_STATES.get, cols.states, repeat(SyncState.UNTRACKED)))
    symlinks = kinds.count(Kind.SYMLINK)
    if len(cols.targets) != symlinks:
        raise ProtocolError(
            f"manifest page: {len(cols.targets)} symlink target(s) for {symlinks} symlink(s)"
        )
    targets: Iterable[str] = repeat("")
    if symlinks:
        given = iter(cols.targets)
        targets = [next(given) if k == Kind.SYMLINK else "" for k in kinds]
    with gc_paused():
        rows = zip(paths, kinds, sizes, modes, digests, targets, states, strict=False)
        into.update(zip(paths, map(make_entry, rows), strict=True))


COMPRESS_MODES: Final = ("auto", "always", "never")
#: ``auto``: how much of a file is compressed to judge whether all of it is
#: worth compressing.
SAMPLE_BYTES = 64 * 1024
#: Smallest content worth compressing at all, file by file (zlib) and in the
#: session's stream (where a small file can point back at an earlier one).
_MIN_COMPRESS = 512
_MIN_STREAM = 64
#: The session stream's window: a file may point back this far into the
#: content sent before it. The sidecar refuses a frame that asks for more.
STREAM_WINDOW_LOG = 24
#: zstd level of the session stream, and its long-distance matcher, which
#: finds a repeat anywhere in the window (a file copied, a vendored
#: library, generated code) at about the speed of level 3 alone.
STREAM_LEVEL = 3
#: Bytes a stream piece may exceed its content by: a frame header (at most
#: 18, on the first piece) and 3 per block of at most 128 KiB, which zstd
#: emits raw when they do not shrink.
_STREAM_SLACK = 18


def stream_overhead(limit: int) -> int:
    """The most a stream piece of ``limit`` bytes of content can take."""
    return limit + _STREAM_SLACK + 3 * (limit // (128 * 1024) + 1)


class StreamCompressor:
    """The client's side of a session's ``COMPRESSION_ZSTD_STREAM``: one
    Zstandard frame for the whole session, flushed after each piece.

    Pure computation, but a stream: ``compress`` must be called in the order
    the pieces are sent, one call at a time (the caller's one thread for it).
    Its output for a piece is never more than ``stream_overhead`` of it."""

    def __init__(self) -> None:
        P = zstd.CompressionParameter
        self._z = zstd.ZstdCompressor(
            options={
                P.compression_level: STREAM_LEVEL,
                P.window_log: STREAM_WINDOW_LOG,
                P.enable_long_distance_matching: 1,
            }
        )

    def compress(self, data: bytes) -> bytes:
        return self._z.compress(data, mode=zstd.ZstdCompressor.FLUSH_BLOCK)


class StreamDecompressor:
    """The sidecar's side of a session's ``COMPRESSION_ZSTD_STREAM``.

    ``decompress`` must see every stream piece of the session, in the order
    the messages came, including a piece whose op is refused: a piece left
    out would break every piece after it. Any error is the session's end
    (``StreamError``), never one op's problem: the stream cannot go on."""

    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor(
            options={zstd.DecompressionParameter.window_log_max: STREAM_WINDOW_LOG}
        )

    def decompress(self, payload: bytes, *, limit: int) -> bytes:
        """The content of one piece, at most ``limit`` bytes: a longer one
        (or a piece longer on the wire than such content can be) ends the
        session before it is inflated in memory."""
        if len(payload) > stream_overhead(limit):
            raise StreamError(
                f"a stream piece of {len(payload)} bytes exceeds the limit of {limit}"
            )
        try:
            out = self._d.decompress(payload, max_length=limit + 1)
        except zstd.ZstdError as e:
            raise StreamError(f"corrupt zstd stream: {e}") from e
        if len(out) > limit:
            raise StreamError(f"a stream piece inflates past the limit of {limit} bytes")
        if self._d.eof:
            raise StreamError("the zstd stream ended inside the session")
        if not self._d.needs_input:
            raise StreamError("a stream piece does not end at a block flush")
        return out


def worth_compressing(path: str, size: int, *, least: int = _MIN_COMPRESS) -> bool:
    dot = path.rfind(".")
    return size >= least and (dot < 0 or path[dot:].lower() not in _COMPRESSED)


def encode(data: bytes, *, compress: bool) -> tuple[bytes, int]:
    """(payload, Compression) with zlib only where it saves at least 10%."""
    if compress and len(data) >= _MIN_COMPRESS:
        packed = zlib.compress(data, 1)
        if len(packed) < len(data) * 0.9:
            return packed, pb.COMPRESSION_ZLIB
    return data, pb.COMPRESSION_NONE


def _sample_shrinks(data: bytes) -> bool:
    """Whether the first ``SAMPLE_BYTES`` of ``data`` shrink by 10% through
    zlib level 1: the judge of a large file, in both modes."""
    head = zlib.compress(data[:SAMPLE_BYTES], 1)
    return len(head) < SAMPLE_BYTES * 0.9


class ContentEncoder:
    """Encodes one file's content, piece by piece in order (the whole of a
    small file, or its chunks), under a compression mode:

    - ``never``: every piece raw.
    - ``always``: every piece of at least 512 bytes is compressed (zlib
      level 1) and sent so wherever that makes it smaller.
    - ``auto``: a file too small, or whose extension says it is already
      compressed, goes raw; otherwise the first 64 KiB of its first piece
      larger than that are compressed, and only if that saves at least 10%
      is the rest of the file compressed, so an incompressible file costs
      one 64 KiB trial, not a pass over all of it. Smaller pieces before
      it (a delta's literals) are each tried, as a small file is.

    With the session's ``stream`` (``COMPRESSION_ZSTD_STREAM``), what the
    mode compresses goes through the stream instead of zlib, and small files
    from 64 bytes: the stream's piece is sent even where it does not shrink,
    since the stream has taken it in. ``worth`` is the same judgement alone,
    for a caller that feeds the stream later, in sending order.

    Pure computation; zlib releases the GIL, so it runs well in the threads
    that read the files."""

    def __init__(
        self, path: str, size: int, mode: str = "auto", stream: StreamCompressor | None = None
    ) -> None:
        if mode not in COMPRESS_MODES:
            raise ValueError(f"compression mode {mode!r}: use one of {', '.join(COMPRESS_MODES)}")
        self._stream = stream
        self._compress: bool | None = {"never": False, "always": True}.get(mode)
        self._least = _MIN_STREAM if stream is not None else _MIN_COMPRESS
        if self._compress is None and not worth_compressing(path, size, least=self._least):
            self._compress = False

    def worth(self, data: bytes) -> bool:
        """Whether the next piece is to be compressed (``auto`` judges a
        file by its first large piece, once)."""
        if self._compress is False or len(data) < self._least:
            return False
        if self._compress or len(data) <= SAMPLE_BYTES:
            return True
        self._compress = _sample_shrinks(data)
        return self._compress

    def encode(self, data: bytes) -> tuple[bytes, int]:
        """(payload, Compression) for the next piece of the file."""
        worth = self.worth(data)
        if self._stream is None:
            return encode(data, compress=worth)
        if worth:
            return self._stream.compress(data), pb.COMPRESSION_ZSTD_STREAM
        return data, pb.COMPRESSION_NONE


def decode(
    payload: bytes, compression: int, *, limit: int, stream: StreamDecompressor | None = None
) -> bytes:
    """Decode a payload, refusing one longer than ``limit`` bytes on the
    wire or once inflated (so a small compressed frame cannot inflate into
    memory exhaustion). ``encode`` only compresses when it shrinks the data,
    so a well-formed zlib payload is never longer than its content. A
    stream piece needs the session's ``stream``, and its errors are
    ``StreamError``."""
    if compression == pb.COMPRESSION_ZSTD_STREAM:
        if stream is None:
            raise StreamError("a zstd stream piece in a session that did not agree to one")
        return stream.decompress(payload, limit=limit)
    if len(payload) > limit:
        raise ProtocolError(f"chunk of {len(payload)} bytes exceeds the limit of {limit}")
    if compression == pb.COMPRESSION_NONE:
        return payload
    if compression != pb.COMPRESSION_ZLIB:
        raise ProtocolError(f"unknown compression {compression}")
    d = zlib.decompressobj()
    try:
        out = d.decompress(payload, limit + 1)
    except zlib.error as e:
        raise ProtocolError(f"corrupt zlib payload: {e}") from e
    if len(out) > limit or d.unconsumed_tail:
        raise ProtocolError(f"compressed chunk inflates past the limit of {limit} bytes")
    return out


def decode_chunk(
    payload: bytes, compression: int, stream: StreamDecompressor | None = None
) -> bytes:
    """Decode one ``Chunk``'s data: at most ``MAX_CHUNK_BYTES`` of content."""
    return decode(payload, compression, limit=MAX_CHUNK_BYTES, stream=stream)


def read_token(path: Path) -> str:
    """The token in a file (surrounding whitespace stripped); one clear error
    if it is missing or empty."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError as e:
        raise ConfigError(f"token file {path} does not exist") from e
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read token file {path}: {e}") from e
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def token_matches(expected: str, given: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(expected.encode(), given.encode())


def bearer(token: str) -> tuple[tuple[str, str]]:
    """gRPC call metadata carrying the token."""
    return ((TOKEN_METADATA, f"Bearer {token}"),)
