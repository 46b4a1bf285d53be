"""The manifest: what a tree holds, path by path (data model, scanner and
digest cache).

``Entry`` and ``Manifest`` are plain data. ``scan`` reads the local
filesystem (the laptop's source tree or the sidecar's workspace) and hashes
file content with BLAKE2b-128, reusing a ``DigestCache`` keyed by size,
mtime, ctime and inode so that an unchanged tree is not read again.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devstack.core.ignore import IgnoreRules, _read_lines, for_folder
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


@dataclass(frozen=True, slots=True)
class Entry:
    """What is at one path."""

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


#: path -> entry. Paths are '/'-separated and relative to the root.
Manifest = dict[str, Entry]


def hash_bytes(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


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


class DigestCache:
    """path -> (stat key, digest). A hit means the file was not touched since
    it was hashed. Persisted as JSON so a restart does not rehash a tree."""

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
        keep = set(paths)
        for p in [p for p in self._entries if p not in keep]:
            del self._entries[p]
            self.dirty = True

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> DigestCache:
        cache = cls()
        try:
            raw = json.loads(path.read_text())
            for p, (size, mtime, ctime, ino, digest) in raw.get("entries", {}).items():
                cache._entries[p] = ((size, mtime, ctime, ino), bytes.fromhex(digest))
        except (FileNotFoundError, ValueError, TypeError, AttributeError):
            return cls()
        return cache

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename)."""
        data = {
            "version": 1,
            "entries": {p: [*k, d.hex()] for p, (k, d) in self._entries.items()},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
        self.dirty = False


@dataclass(frozen=True)
class Skipped:
    """An entry the scanner left out, with why (special files, bad names)."""

    path: str
    reason: str


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def scan(
    root: Path,
    *,
    rules: IgnoreRules,
    cache: DigestCache,
    under: str = "",
    skipped: list[Skipped] | None = None,
) -> Manifest:
    """Walk ``root`` (or only the subtree ``under``, itself included) and
    return its manifest. Ignored paths, the reserved ``.devstack/`` folder
    and special files (devices, fifos, sockets) are left out; the latter are
    reported in ``skipped``."""
    manifest: Manifest = {}
    root_s = os.fspath(root)
    if under:
        try:
            st = os.lstat(os.path.join(root_s, under))
        except (FileNotFoundError, NotADirectoryError):
            return manifest

        folder = under.rsplit("/", 1)[0] if "/" in under else ""
        rules = for_folder(root, rules, folder)
        entry = _entry(root_s, under, st, cache, rules, skipped)
        if entry is None:
            return manifest
        manifest[under] = entry
        if entry.kind != Kind.DIRECTORY:
            return manifest
        rules_here = rules.nested(under, _read_lines(root / under / ".gitignore"))
        stack = [(under, rules_here)]
    else:
        stack = [("", rules)]
    while stack:
        folder, folder_rules = stack.pop()
        for rel, st, child_rules in _children(root_s, root, folder, folder_rules, skipped):
            entry = _entry(root_s, rel, st, cache, child_rules, skipped)
            if entry is None:
                continue
            manifest[rel] = entry
            if entry.kind == Kind.DIRECTORY:
                stack.append((rel, child_rules.nested(rel, _read_lines(root / rel / ".gitignore"))))
    return manifest


def _children(
    root_s: str,
    root: Path,
    folder: str,
    rules: IgnoreRules,
    skipped: list[Skipped] | None,
) -> Iterator[tuple[str, os.stat_result, IgnoreRules]]:
    try:
        it = os.scandir(os.path.join(root_s, folder) if folder else root_s)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if skipped is not None and folder:
            skipped.append(Skipped(folder, f"cannot list: {e.strerror}"))
        return
    with it:
        for de in it:
            name = de.name
            rel = _join(folder, name)
            if not folder and name == RESERVED_DIR:
                continue
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
            if rules.ignored(rel, is_dir=stat.S_ISDIR(st.st_mode)):
                continue
            yield rel, st, rules


def _entry(
    root_s: str,
    rel: str,
    st: os.stat_result,
    cache: DigestCache,
    rules: IgnoreRules,
    skipped: list[Skipped] | None,
) -> Entry | None:
    mode = st.st_mode
    perm = stat.S_IMODE(mode)
    if stat.S_ISREG(mode):
        key = stat_key(st)
        digest = cache.get(rel, key)
        if digest is None:
            try:
                digest = hash_file(os.path.join(root_s, rel))
            except (FileNotFoundError, PermissionError, OSError) as e:
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
