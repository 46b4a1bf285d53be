"""The manifest: what a tree holds, path by path (data model, scanner and
digest cache).

``Entry`` and ``Manifest`` are plain data. ``scan`` reads the local
filesystem (the laptop's source tree or the sidecar's workspace) and hashes
file content with BLAKE2b-128, reusing a ``DigestCache`` keyed by size,
mtime, ctime and inode so that an unchanged tree is not read again.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import gc
import hashlib
import json
import os
import stat
import struct
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from devstack.core.ignore import IgnoreRules, for_folder
from devstack.core.paths import RESERVED_DIR

DIGEST_SIZE = 16
_READ_BLOCK = 1 << 20


class Kind(enum.IntEnum):
    """Entry kinds; values match the protocol's ``Kind``."""

    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3


class SyncState(enum.IntEnum):
    """How a sidecar entry relates to what sync last wrote; values match
    the protocol's ``SyncState``."""

    UNTRACKED = 0
    SYNCED = 1
    DIRTY = 2


class Entry(NamedTuple):
    """What is at one path: an immutable value. A named tuple rather than a
    dataclass so that a manifest of 100,000 entries is built, compared and
    taken apart column by column in bulk (see ``make_entry``).

    A file's ``digest`` is empty only while the laptop has deferred hashing
    a new file until it reads it to send it (see ``scan``'s ``defer``)."""

    path: str
    kind: Kind
    size: int = 0
    mode: int = 0
    digest: bytes = b""
    target: str = ""
    state: SyncState = SyncState.UNTRACKED

    def same_content(self, other: Entry | None) -> bool:
        """Same kind and content (digest or link target), modes aside."""
        return (
            other is not None
            and self.kind == other.kind
            and self.digest == other.digest
            and self.target == other.target
        )

    def same(self, other: Entry | None, *, modes: bool = True) -> bool:
        """Same content and, if ``modes``, the same permission bits."""
        return self.same_content(other) and (
            not modes or other is None or self.kind == Kind.SYMLINK or self.mode == other.mode
        )


#: An ``Entry`` from all seven fields in order, without the keyword
#: handling of ``Entry(...)``: for building manifests in bulk.
make_entry: Callable[[Iterable[Any]], Entry] = functools.partial(tuple.__new__, Entry)

#: path -> entry. Paths are '/'-separated and relative to the root.
Manifest = dict[str, Entry]

_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector while building or taking apart
    a large manifest: each collection would walk every entry already built,
    for nothing (entries hold no cycles). Nests and works across threads:
    the collector is back as it was once the last pause ends."""
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def hash_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


#: The digest of empty content.
EMPTY_DIGEST = hash_bytes(b"")


def hash_fd(fd: int) -> bytes:
    """Digest of an open file's content from its current offset."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    while True:
        block = os.read(fd, _READ_BLOCK)
        if not block:
            return h.digest()
        h.update(block)


def hash_file(path: str | Path, *, dir_fd: int | None = None) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


StatKey = tuple[int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


#: The digest cache file: magic, format version, entry count, then the
#: lengths of the three blocks that follow (paths, numbers, digests).
_CACHE_MAGIC = b"dsdc"
_CACHE_VERSION = 2
_CACHE_HEADER = struct.Struct("<4sIIQQQ")


class DigestCache:
    """path -> (stat key, digest). A hit means the file was not touched since
    it was hashed. Persisted so a restart does not rehash a tree.

    The file is binary and versioned, so that loading 100,000 entries costs
    a few milliseconds: a header, the paths NUL-separated in UTF-8, the four
    stat numbers of each entry as 64-bit little-endian integers, and the
    digests back to back. A file of an unknown version, a torn or corrupt
    one, is an empty cache (a cache: losing it costs a rehash); the JSON
    files of version 1 are still read."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[StatKey, bytes]] = {}
        self.dirty = False

    def get(self, path: str, key: StatKey) -> bytes | None:
        hit = self._entries.get(path)
        return hit[1] if hit is not None and hit[0] == key else None

    def put(self, path: str, key: StatKey, digest: bytes) -> None:
        self._entries[path] = (key, digest)
        self.dirty = True

    def forget(self, path: str) -> None:
        if self._entries.pop(path, None) is not None:
            self.dirty = True

    def retain(self, paths: Iterable[str]) -> None:
        """Drop entries for paths no longer present."""
        keep = paths.keys() if isinstance(paths, Mapping) else set(paths)
        stale = self._entries.keys() - keep
        if stale:
            for p in stale:
                del self._entries[p]
            self.dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        """The paths it holds a digest for."""
        return iter(self._entries)

    @classmethod
    def load(cls, path: Path) -> DigestCache:
        cache = cls()
        try:
            data = path.read_bytes()
        except OSError:
            return cache
        try:
            with gc_paused():
                if data.startswith(_CACHE_MAGIC):
                    cache._entries = _decode_cache(data)
                else:
                    cache._entries = _decode_cache_v1(data)
                    cache.dirty = True  # so it is written again in the current format
        except (ValueError, TypeError, AttributeError, KeyError, struct.error):
            return cls()
        return cache

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename)."""
        data = _encode_cache(self._entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        self.dirty = False


def _encode_cache(entries: Mapping[str, tuple[StatKey, bytes]]) -> bytes:
    paths: list[str] = []
    signed: array[int] = array("q")  # mtime_ns, ctime_ns (may be negative)
    unsigned: array[int] = array("Q")  # size, inode
    digests: list[bytes] = []
    for p, ((size, mtime, ctime, ino), digest) in entries.items():
        if "\0" in p or len(digest) != DIGEST_SIZE:
            continue  # cannot be written back; a miss costs a rehash
        paths.append(p)
        signed.append(mtime)
        signed.append(ctime)
        unsigned.append(size)
        unsigned.append(ino)
        digests.append(digest)
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        signed.byteswap()
        unsigned.byteswap()
    blob = "\0".join(paths).encode("utf-8", "surrogatepass")
    numbers = signed.tobytes() + unsigned.tobytes()
    packed = b"".join(digests)
    header = _CACHE_HEADER.pack(
        _CACHE_MAGIC, _CACHE_VERSION, len(paths), len(blob), len(numbers), len(packed)
    )
    return header + blob + numbers + packed


def _decode_cache(data: bytes) -> dict[str, tuple[StatKey, bytes]]:
    magic, version, n, n_blob, n_numbers, n_digests = _CACHE_HEADER.unpack_from(data)
    if magic != _CACHE_MAGIC or version != _CACHE_VERSION:
        raise ValueError(f"digest cache version {version}")
    start = _CACHE_HEADER.size
    if n_numbers != 32 * n or n_digests != DIGEST_SIZE * n:
        raise ValueError("digest cache sizes disagree")
    if len(data) != start + n_blob + n_numbers + n_digests:
        raise ValueError("digest cache is torn")
    if n == 0:
        return {}
    paths = data[start : start + n_blob].decode("utf-8", "surrogatepass").split("\0")
    if len(paths) != n:
        raise ValueError("digest cache paths disagree")
    start += n_blob
    signed: array[int] = array("q")
    signed.frombytes(data[start : start + 16 * n])
    unsigned: array[int] = array("Q")
    unsigned.frombytes(data[start + 16 * n : start + 32 * n])
    if sys.byteorder != "little":  # pragma: no cover - big-endian hosts
        signed.byteswap()
        unsigned.byteswap()
    start += n_numbers
    keys = zip(unsigned[0::2], signed[0::2], signed[1::2], unsigned[1::2], strict=True)
    digests = [data[i : i + DIGEST_SIZE] for i in range(start, start + n_digests, DIGEST_SIZE)]
    return dict(zip(paths, zip(keys, digests, strict=True), strict=True))


def _decode_cache_v1(data: bytes) -> dict[str, tuple[StatKey, bytes]]:
    raw = json.loads(data)
    out: dict[str, tuple[StatKey, bytes]] = {}
    for p, (size, mtime, ctime, ino, digest) in raw.get("entries", {}).items():
        out[p] = ((size, mtime, ctime, ino), bytes.fromhex(digest))
    return out


@dataclass(frozen=True)
class Skipped:
    """An entry the scanner left out, with why (special files, bad names)."""

    path: str
    reason: str


#: What sync last wrote at a path: (kind, digest, symlink target).
Ancestor = tuple[int, bytes, str]

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
#: A folder the scan cannot list: it reports it in ``skipped`` and goes on.
_UNLISTABLE = (FileNotFoundError, NotADirectoryError, PermissionError)


def _state(ancestors: Mapping[str, Ancestor] | None, e: Entry) -> Entry:
    anc = ancestors.get(e.path) if ancestors is not None else None
    if anc is None:
        return e
    same = anc[0] == e.kind and anc[1] == e.digest and anc[2] == e.target
    return make_entry((*e[:6], SyncState.SYNCED if same else SyncState.DIRTY))


def _read_lines_at(dir_fd: int, name: str) -> list[str]:
    """``ignore._read_lines`` for a file in an open folder."""
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    except OSError:
        return []
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    finally:
        os.close(fd)


def scan(
    root: Path,
    *,
    rules: IgnoreRules,
    cache: DigestCache,
    under: str = "",
    skipped: list[Skipped] | None = None,
    nested: dict[str, tuple[str, ...]] | None = None,
    deferred: list[str] | None = None,
    defer_max: int = 0,
    ancestors: Mapping[str, Ancestor] | None = None,
) -> Manifest:
    """Walk ``root`` (or only the subtree ``under``, itself included) and
    return its manifest. Ignored paths, the reserved ``.devstack/`` folder
    and special files (devices, fifos, sockets) are left out; the latter are
    reported in ``skipped``. Each folder is opened once (never through a
    symlink) and its entries are looked at relative to it.

    Each folder's ``.gitignore`` applies below it; ``nested`` collects the
    lines of every one that was applied (folder -> lines), the root's aside.
    With ``deferred``, a non-empty file of at most ``defer_max`` bytes that
    the cache does not know is not read: its entry has an empty digest and
    its path goes in ``deferred`` (the laptop hashes a new file as it reads
    it to send it). With ``ancestors`` (the sidecar's record of what sync
    wrote), each entry gets its ``SyncState``; otherwise all are untracked."""
    manifest: Manifest = {}
    root_s = os.fspath(root)
    stack: list[tuple[str, IgnoreRules, bool]]
    if under:
        try:
            st = os.lstat(os.path.join(root_s, under))
        except (FileNotFoundError, NotADirectoryError):
            return manifest
        folder = under.rpartition("/")[0]
        rules = for_folder(root, rules, folder)
        entry = _entry(root_s, under, st, cache, skipped, deferred, defer_max)
        if entry is None:
            return manifest
        manifest[under] = _state(ancestors, entry)
        if entry.kind != Kind.DIRECTORY:
            return manifest
        stack = [(under, rules, rules.clean(under))]
    else:
        stack = [("", rules, True)]
    entries = cache._entries
    ancestor = ancestors.get if ancestors is not None else None
    make = make_entry
    untracked, synced, dirty = SyncState.UNTRACKED, SyncState.SYNCED, SyncState.DIRTY
    k_file, k_dir, k_link = Kind.FILE, Kind.DIRECTORY, Kind.SYMLINK
    s_isreg, s_isdir, s_islnk = stat.S_ISREG, stat.S_ISDIR, stat.S_ISLNK
    defer = deferred is not None
    while stack:
        folder, folder_rules, clean = stack.pop()
        try:
            # O_NOFOLLOW: a folder replaced by a symlink since it was seen
            # is not listed (ELOOP), as a folder that vanished is not.
            dir_fd = os.open(f"{root_s}/{folder}" if folder else root_s, _O_DIR)
        except OSError as e:
            if not isinstance(e, _UNLISTABLE) and e.errno != errno.ELOOP:
                raise
            if skipped is not None and folder:
                skipped.append(Skipped(folder, f"cannot list: {e.strerror}"))
            continue
        try:
            try:
                with os.scandir(dir_fd) as it:
                    listing = list(it)
            except _UNLISTABLE as e:
                if skipped is not None and folder:
                    skipped.append(Skipped(folder, f"cannot list: {e.strerror}"))
                continue
            if folder:
                for de in listing:
                    if de.name == ".gitignore":
                        lines = _read_lines_at(dir_fd, ".gitignore")
                        if lines:
                            folder_rules = folder_rules.nested(folder, lines)
                            if nested is not None:
                                nested[folder] = tuple(lines)
                        break
            prefix = folder + "/" if folder else ""
            child_ignored = folder_rules.child_ignored
            for de in listing:
                name = de.name
                if not folder and name == RESERVED_DIR:
                    continue
                rel = prefix + name
                if not name.isascii():
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        if skipped is not None:
                            skipped.append(Skipped(rel, "file name is not valid UTF-8"))
                        continue
                try:
                    st = de.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                mode = st.st_mode
                is_dir = s_isdir(mode)
                hidden, child_clean = child_ignored(rel, name, is_dir=is_dir, clean=clean)
                if hidden:
                    continue
                state = untracked
                if s_isreg(mode):
                    size = st.st_size
                    key = (size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                    hit = entries.get(rel)
                    if hit is not None and hit[0] == key:
                        digest = hit[1]
                    elif size == 0:
                        digest = EMPTY_DIGEST
                        cache.put(rel, key, digest)
                    elif defer and size <= defer_max:
                        digest = b""
                        deferred.append(rel)  # type: ignore[union-attr]
                    else:
                        try:
                            digest = hash_file(name, dir_fd=dir_fd)
                        except OSError as e:
                            if skipped is not None:
                                skipped.append(Skipped(rel, f"cannot read: {e.strerror or e}"))
                            continue
                        cache.put(rel, key, digest)
                    if ancestor is not None and (anc := ancestor(rel)) is not None:
                        same = anc[1] == digest and anc[0] == k_file and not anc[2]
                        state = synced if same else dirty
                    manifest[rel] = make((rel, k_file, size, mode & 0o7777, digest, "", state))
                elif is_dir:
                    if ancestor is not None and (anc := ancestor(rel)) is not None:
                        state = synced if anc[0] == k_dir and not anc[1] and not anc[2] else dirty
                    manifest[rel] = make((rel, k_dir, 0, mode & 0o7777, b"", "", state))
                    stack.append((rel, folder_rules, child_clean))
                elif s_islnk(mode):
                    try:
                        target = os.readlink(name, dir_fd=dir_fd)
                    except OSError:
                        continue
                    if ancestor is not None and (anc := ancestor(rel)) is not None:
                        same = anc[0] == k_link and not anc[1] and anc[2] == target
                        state = synced if same else dirty
                    manifest[rel] = make((rel, k_link, 0, 0o777, b"", target, state))
                elif skipped is not None:
                    skipped.append(
                        Skipped(rel, "special file (device, fifo or socket) is never synced")
                    )
        finally:
            os.close(dir_fd)
    return manifest


def _entry(
    root_s: str,
    rel: str,
    st: os.stat_result,
    cache: DigestCache,
    skipped: list[Skipped] | None,
    deferred: list[str] | None,
    defer_max: int,
) -> Entry | None:
    """The entry for one path, as ``scan`` makes it."""
    mode = st.st_mode
    perm = stat.S_IMODE(mode)
    if stat.S_ISREG(mode):
        key = stat_key(st)
        digest = cache.get(rel, key)
        if digest is None:
            if st.st_size == 0:
                digest = EMPTY_DIGEST
            elif deferred is not None and st.st_size <= defer_max:
                deferred.append(rel)
                return Entry(rel, Kind.FILE, st.st_size, perm, b"")
            else:
                try:
                    digest = hash_file(os.path.join(root_s, rel))
                except OSError as e:
                    if skipped is not None:
                        skipped.append(Skipped(rel, f"cannot read: {e.strerror or e}"))
                    return None
            cache.put(rel, key, digest)
        return Entry(rel, Kind.FILE, st.st_size, perm, digest)
    if stat.S_ISDIR(mode):
        return Entry(rel, Kind.DIRECTORY, 0, perm)
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(os.path.join(root_s, rel))
        except OSError:
            return None
        return Entry(rel, Kind.SYMLINK, 0, 0o777, b"", target)
    if skipped is not None:
        skipped.append(Skipped(rel, "special file (device, fifo or socket) is never synced"))
    return None
