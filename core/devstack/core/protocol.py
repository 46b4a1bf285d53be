"""Protocol helpers shared by ``devstack connect`` and the sidecar (pure):
version and limits, conversion between core entries and protobuf messages,
content encoding, the op kinds, token handling.
"""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from devstack.core.errors import ConfigError, ProtocolError
from devstack.core.manifest import Entry, Kind, SyncState
from devstack.sync.v1 import sync_pb2 as pb

PROTOCOL_VERSION = 1
#: Largest literal payload in one Chunk or inline Op.content.
MAX_CHUNK_BYTES = 1 << 20
#: Files up to this size travel inline in their Op.
INLINE_MAX = 256 * 1024
#: gRPC message size limit on both sides: a chunk plus framing.
MAX_MESSAGE_BYTES = 4 * MAX_CHUNK_BYTES
#: Entries per ManifestPage.
MANIFEST_PAGE = 2000
TOKEN_METADATA = "authorization"  # noqa: S105 (a header name, not a secret)
#: Where ``devstack connect`` and the sidecar look for the token file.
TOKEN_FILE_ENV = "DEVSTACK_TOKEN_FILE"  # noqa: S105 (a variable name)
#: Environment variables that lead to the token: never passed to the app,
#: reload steps or ``Exec`` commands.
TOKEN_ENV_VARS: Final = (TOKEN_FILE_ENV, "DEVSTACK_TOKEN")

#: Wire op kind -> its name, which is also ``devstack.core.plan.Action``'s
#: value and the sidecar applier's op kind.
OP_NAMES: Final[Mapping[int, str]] = {
    pb.OP_WRITE: "write",
    pb.OP_MKDIR: "mkdir",
    pb.OP_SYMLINK: "symlink",
    pb.OP_DELETE: "delete",
    pb.OP_RENAME: "rename",
    pb.OP_CHMOD: "chmod",
    pb.OP_ADOPT: "adopt",
}
#: Op name (``Action.value``) -> wire op kind.
OP_CODES: Final[Mapping[str, int]] = {name: code for code, name in OP_NAMES.items()}

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


def entry_to_pb(e: Entry) -> pb.Entry:
    return pb.Entry(
        path=e.path,
        kind=int(e.kind),  # type: ignore[arg-type]
        size=e.size,
        mode=e.mode,
        digest=e.digest,
        target=e.target,
        state=int(e.state),  # type: ignore[arg-type]
    )


def entry_from_pb(m: pb.Entry) -> Entry:
    try:
        kind = Kind(m.kind)
    except ValueError as e:
        raise ProtocolError(f"{m.path!r}: unsupported entry kind {m.kind}") from e
    try:
        state = SyncState(m.state)
    except ValueError:
        state = SyncState.UNTRACKED
    return Entry(m.path, kind, m.size, m.mode & 0o7777, bytes(m.digest), m.target, state)


def worth_compressing(path: str, size: int) -> bool:
    dot = path.rfind(".")
    return size >= 512 and (dot < 0 or path[dot:].lower() not in _COMPRESSED)


def encode(data: bytes, *, compress: bool) -> tuple[bytes, int]:
    """(payload, Compression) with zlib only where it saves at least 10%."""
    if compress and len(data) >= 512:
        packed = zlib.compress(data, 1)
        if len(packed) < len(data) * 0.9:
            return packed, pb.COMPRESSION_ZLIB
    return data, pb.COMPRESSION_NONE


def decode(payload: bytes, compression: int, *, limit: int) -> bytes:
    """Decode a payload, refusing one longer than ``limit`` bytes on the
    wire or once inflated (so a small compressed frame cannot inflate into
    memory exhaustion). ``encode`` only compresses when it shrinks the data,
    so a well-formed payload is never longer than its content."""
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


def decode_chunk(payload: bytes, compression: int) -> bytes:
    """Decode one ``Chunk``'s data: at most ``MAX_CHUNK_BYTES`` either way."""
    return decode(payload, compression, limit=MAX_CHUNK_BYTES)


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
