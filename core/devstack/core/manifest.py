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

from devstack.core.ignore import IgnoreRules
from devstack.core.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, RESERVED_DIR

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


#: Opening a file to read it: never through a final symlink (ELOOP), and
#: never waiting (a FIFO's open blocks until a writer comes; ``O_NONBLOCK``
#: has no effect on a regular file).
_O_FILE = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def open_regular(name: str, *, dir_fd: int | None = None) -> tuple[int, os.stat_result] | None:
    """``name`` opened for reading, with its ``fstat``, if it is a regular
    file; None if it is anything else (a FIFO, socket, device or folder,
    perhaps swapped in since it was looked at). The caller closes the fd.
    Raises ``OSError`` if it cannot be opened (``ELOOP``: a symlink)."""
    try:
        fd = os.open(name, _O_FILE, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ENXIO:  # a socket, or a device with no driver
            return None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if stat.S_ISREG(st.st_mode):
        return fd, st
    os.close(fd)
    return None


def hash_file(name: str, *, dir_fd: int | None = None) -> bytes | None:
    """Digest of the regular file ``name``; None if it is not one."""
    opened = open_regular(name, dir_fd=dir_fd)
    if opened is None:
        return None
    try:
        return hash_fd(opened[0])
    finally:
        os.close(opened[0])


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

    def copy(self) -> DigestCache:
        """A cache of its own with the same entries (to fill elsewhere, then
        ``merge`` back)."""
        other = DigestCache()
        other._entries = dict(self._entries)
        return other

    def merge(self, filled: DigestCache, base: DigestCache) -> int:
        """Take from ``filled`` (a ``copy`` of this cache as ``base`` was,
        filled since) each entry it added or changed, unless this cache's
        own entry for that path changed since ``base`` too (someone wrote or
        hashed the file meanwhile: theirs is the newer). How many it took."""
        mine, before = self._entries, base._entries
        took = 0
        for path, hit in filled._entries.items():
            old = before.get(path)
            if hit == old or mine.get(path) != old:
                continue
            mine[path] = hit
            took += 1
        if took:
            self.dirty = True
        return took

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
_SPECIAL = "special file (device, fifo or socket) is never synced"
_TOO_LONG = f"path longer than {MAX_PATH_BYTES} bytes is never synced"
#: Folder descriptors a scan keeps open at most (see ``_Folders``).
HELD_FOLDERS_MAX = 64


def _state(ancestors: Mapping[str, Ancestor] | None, e: Entry) -> Entry:
    anc = ancestors.get(e.path) if ancestors is not None else None
    if anc is None:
        return e
    same = anc[0] == e.kind and anc[1] == e.digest and anc[2] == e.target
    return make_entry((*e[:6], SyncState.SYNCED if same else SyncState.DIRTY))


def _read_lines_at(dir_fd: int, name: str) -> list[str]:
    """``ignore._read_lines`` for a file in an open folder. Only a regular
    file is read: not a FIFO (which would block), nor through a symlink
    (as git does not)."""
    try:
        opened = open_regular(name, dir_fd=dir_fd)
    except OSError:
        return []
    if opened is None:
        return []
    fd = opened[0]
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    finally:
        os.close(fd)


class _Folders:
    """Opens the folders of one scan, each relative to its parent's
    descriptor with ``O_NOFOLLOW``: no folder on the way is a symlink (not
    even one swapped in since it was listed), and no path given to the
    kernel is longer than one name, so a tree of any depth reads back.

    A listed folder's descriptor stays open while some of its subfolders
    are still to be opened, but at most ``HELD_FOLDERS_MAX`` of them,
    whatever the depth (the first kept is closed first): a folder whose
    parent's descriptor was closed is reached by walking down from the
    nearest ancestor still open, keeping on the way those needed again."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        #: folder -> how many of its subfolders are still to be opened.
        self.pending: dict[str, int] = {}
        #: folder -> its descriptor, the first kept first.
        self.held: dict[str, int] = {}

    def open(self, folder: str) -> int:
        """Open ``folder`` (not the root); the caller owns the descriptor
        until it hands it to ``listed``."""
        head, _, name = folder.rpartition("/")
        try:
            parent = self.held.get(head) if head else self.root_fd
            if parent is not None:
                return os.open(name, _O_DIR, dir_fd=parent)
            parent, owned = self._reach(head)
            try:
                return os.open(name, _O_DIR, dir_fd=parent)
            finally:
                if owned:
                    os.close(parent)
        finally:
            left = self.pending.pop(head, 0) - 1
            if left > 0:
                self.pending[head] = left
            elif (fd := self.held.pop(head, None)) is not None:
                os.close(fd)

    def listed(self, folder: str, fd: int, subfolders: int) -> None:
        """``folder`` was listed through ``fd``, with ``subfolders`` to
        open next: keep ``fd`` for them, or close it."""
        if not folder:
            return
        if subfolders:
            self.pending[folder] = subfolders
            self._hold(folder, fd)
        else:
            os.close(fd)

    def close(self) -> None:
        for fd in self.held.values():
            os.close(fd)
        self.held.clear()

    def _hold(self, folder: str, fd: int) -> None:
        if len(self.held) >= HELD_FOLDERS_MAX:
            os.close(self.held.pop(next(iter(self.held))))
        self.held[folder] = fd

    def _reach(self, folder: str) -> tuple[int, bool]:
        """A descriptor of ``folder`` (not held), and whether the caller
        closes it."""
        held = self.held
        base = max((k for k in held if folder.startswith(k + "/")), key=len, default="")
        fd, owned, path = held[base] if base else self.root_fd, False, base
        for name in folder[len(base) + 1 if base else 0 :].split("/"):
            try:
                child = os.open(name, _O_DIR, dir_fd=fd)
            finally:
                if owned:
                    os.close(fd)
            path = f"{path}/{name}" if path else name
            fd, owned = child, not self.pending.get(path)
            if not owned:  # a subfolder of it is still to be opened
                self._hold(path, fd)
        return fd, owned


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
    into: Manifest | None = None,
    emit: Callable[[list[Entry]], None] | None = None,
    emit_every: int = 512,
) -> Manifest:
    """Walk ``root`` (or only the subtree ``under``, itself included) and
    return its manifest. Ignored paths, the reserved ``.devstack/`` folder
    and special files (devices, fifos, sockets) are left out, and so are
    paths longer than ``MAX_PATH_BYTES`` (no sync operation could name
    them); the latter two are reported in ``skipped``. Each folder is opened
    once, relative to its parent and never through a symlink (see
    ``_Folders``), and its entries are looked at relative to it.

    Each folder's ``.gitignore`` applies below it; ``nested`` collects the
    lines of every one that was applied (folder -> lines), the root's aside.
    With ``deferred``, a non-empty file of at most ``defer_max`` bytes that
    the cache does not know is not read: its entry has an empty digest and
    its path goes in ``deferred`` (the laptop hashes a new file as it reads
    it to send it). With ``ancestors`` (the sidecar's record of what sync
    wrote), each entry gets its ``SyncState``; otherwise all are untracked.

    ``into``: the dict to fill (and return), instead of a new one. With
    ``emit``, the entries go out as they are found too, on the scanning
    thread: ``emit(entries)`` after a folder's listing once ``emit_every``
    of them gathered, and once more at the end with the rest. A folder
    always goes out before what it holds (``under``'s own entry does not
    go out)."""
    manifest: Manifest = {} if into is None else into
    try:
        root_fd = os.open(root, _O_DIR)
    except OSError as e:
        if not isinstance(e, _UNLISTABLE) and e.errno != errno.ELOOP:
            raise
        return manifest
    folders = _Folders(root_fd)
    try:
        stack: list[tuple[str, IgnoreRules, bool]] = [("", rules, True)]
        if under:
            entry, rules = _under(root_fd, under, rules, cache, skipped, deferred, defer_max)
            if entry is None:
                return manifest
            manifest[under] = _state(ancestors, entry)
            if entry.kind != Kind.DIRECTORY:
                return manifest
            stack = [(under, rules, rules.clean(under))]
        _walk(
            folders,
            stack,
            manifest,
            cache,
            skipped,
            nested,
            deferred,
            defer_max,
            ancestors,
            emit,
            emit_every,
        )
    finally:
        folders.close()
        os.close(root_fd)
    return manifest


def _walk(
    folders: _Folders,
    stack: list[tuple[str, IgnoreRules, bool]],
    manifest: Manifest,
    cache: DigestCache,
    skipped: list[Skipped] | None,
    nested: dict[str, tuple[str, ...]] | None,
    deferred: list[str] | None,
    defer_max: int,
    ancestors: Mapping[str, Ancestor] | None,
    emit: Callable[[list[Entry]], None] | None = None,
    emit_every: int = 512,
) -> None:
    """``scan``'s loop: list the folders on ``stack`` and those below;
    ``emit``: see ``scan``."""
    fresh: list[Entry] = []
    keep = fresh.append if emit is not None else None
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
            dir_fd = folders.open(folder) if folder else folders.root_fd
        except OSError as e:
            if not isinstance(e, _UNLISTABLE) and e.errno != errno.ELOOP:
                raise
            if skipped is not None and folder:
                skipped.append(Skipped(folder, f"cannot list: {e.strerror}"))
            continue
        subfolders = 0
        try:
            try:
                with os.scandir(dir_fd) as it:
                    listing = list(it)
            except _UNLISTABLE as e:
                if skipped is not None and folder:
                    skipped.append(Skipped(folder, f"cannot list: {e.strerror}"))
                listing = []
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
            # Bytes left for a name here; only a deep folder checks its names.
            room = MAX_PATH_BYTES - len(prefix.encode("utf-8", "surrogateescape"))
            tight = room < MAX_NAME_BYTES
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
                except PermissionError as e:  # listable, not searchable (r without x)
                    if skipped is not None and folder:
                        skipped.append(Skipped(folder, f"cannot list: {e.strerror}"))
                    break
                mode = st.st_mode
                is_dir = s_isdir(mode)
                hidden, child_clean = child_ignored(rel, name, is_dir=is_dir, clean=clean)
                if hidden:
                    continue
                if tight and len(name.encode("utf-8", "surrogateescape")) > room:
                    if skipped is not None:
                        skipped.append(Skipped(rel, _TOO_LONG))
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
                            read = hash_file(name, dir_fd=dir_fd)
                        except OSError as e:
                            read, why = None, f"cannot read: {e.strerror or e}"
                        else:
                            why = _SPECIAL  # swapped in since it was listed
                        if read is None:
                            if skipped is not None:
                                skipped.append(Skipped(rel, why))
                            continue
                        digest = read
                        cache.put(rel, key, digest)
                    if ancestor is not None and (anc := ancestor(rel)) is not None:
                        same = anc[1] == digest and anc[0] == k_file and not anc[2]
                        state = synced if same else dirty
                    made = manifest[rel] = make(
                        (rel, k_file, size, mode & 0o7777, digest, "", state)
                    )
                    if keep is not None:
                        keep(made)
                elif is_dir:
                    if ancestor is not None and (anc := ancestor(rel)) is not None:
                        state = synced if anc[0] == k_dir and not anc[1] and not anc[2] else dirty
                    made = manifest[rel] = make((rel, k_dir, 0, mode & 0o7777, b"", "", state))
                    if keep is not None:
                        keep(made)
                    stack.append((rel, folder_rules, child_clean))
                    subfolders += 1
                elif s_islnk(mode):
                    try:
                        target = os.readlink(name, dir_fd=dir_fd)
                    except OSError:
                        continue
                    if ancestor is not None and (anc := ancestor(rel)) is not None:
                        same = anc[0] == k_link and not anc[1] and anc[2] == target
                        state = synced if same else dirty
                    made = manifest[rel] = make((rel, k_link, 0, 0o777, b"", target, state))
                    if keep is not None:
                        keep(made)
                elif skipped is not None:
                    skipped.append(Skipped(rel, _SPECIAL))
        except BaseException:
            if folder:
                os.close(dir_fd)
            raise
        folders.listed(folder, dir_fd, subfolders)
        if emit is not None and len(fresh) >= emit_every:
            emit(fresh)
            fresh = []
            keep = fresh.append
    if emit is not None and fresh:
        emit(fresh)


def _under(
    root_fd: int,
    under: str,
    rules: IgnoreRules,
    cache: DigestCache,
    skipped: list[Skipped] | None,
    deferred: list[str] | None,
    defer_max: int,
) -> tuple[Entry | None, IgnoreRules]:
    """The entry at ``under`` (None if there is nothing to scan there) and
    ``rules`` with the ``.gitignore`` of every folder above it, the root's
    aside: its folders are walked one at a time as ``_Folders`` does."""
    if len(under.encode("utf-8", "surrogateescape")) > MAX_PATH_BYTES:
        if skipped is not None:
            skipped.append(Skipped(under, _TOO_LONG))
        return None, rules
    head, _, name = under.rpartition("/")
    fd, sub = root_fd, ""
    try:
        for part in head.split("/") if head else ():
            child = os.open(part, _O_DIR, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd, sub = child, f"{sub}/{part}" if sub else part
            lines = _read_lines_at(fd, ".gitignore")
            if lines:
                rules = rules.nested(sub, lines)
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        return _entry(fd, name, under, st, cache, skipped, deferred, defer_max), rules
    except OSError as e:
        if not isinstance(e, _UNLISTABLE) and e.errno != errno.ELOOP:
            raise
        return None, rules
    finally:
        if fd != root_fd:
            os.close(fd)


def _entry(
    dir_fd: int,
    name: str,
    rel: str,
    st: os.stat_result,
    cache: DigestCache,
    skipped: list[Skipped] | None,
    deferred: list[str] | None,
    defer_max: int,
) -> Entry | None:
    """The entry for ``name`` in the open folder ``dir_fd``, as ``scan``
    makes it for ``rel``."""
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
                    read = hash_file(name, dir_fd=dir_fd)
                except OSError as e:
                    if skipped is not None:
                        skipped.append(Skipped(rel, f"cannot read: {e.strerror or e}"))
                    return None
                if read is None:
                    if skipped is not None:
                        skipped.append(Skipped(rel, _SPECIAL))
                    return None
                digest = read
            cache.put(rel, key, digest)
        return Entry(rel, Kind.FILE, st.st_size, perm, digest)
    if stat.S_ISDIR(mode):
        return Entry(rel, Kind.DIRECTORY, 0, perm)
    if stat.S_ISLNK(mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            return None
        return Entry(rel, Kind.SYMLINK, 0, 0o777, b"", target)
    if skipped is not None:
        skipped.append(Skipped(rel, _SPECIAL))
    return None
