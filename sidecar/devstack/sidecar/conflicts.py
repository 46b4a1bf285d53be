"""The workspace's side of conflicts (filesystem I/O; no network): what
``devstack conflicts`` compares with the laptop, what ``devstack resolve``
settles, and the file content ``resolve --take pod`` copies back.

A conflict is a path whose workspace entry changed since sync last wrote it
(its ``SyncState`` is ``DIRTY``: the app wrote it) while the laptop holds
something else there. The sidecar cannot see the laptop, so it answers with
its own side only: every ``DIRTY`` path, and every path a batch reported as
a conflict since it started (``ConflictLog``: a path the app created where
the laptop created one too is ``UNTRACKED``, not ``DIRTY``), each with its
metadata and what sync last wrote there. The laptop compares.

Settling a path makes its current workspace entry what sync last wrote (the
ancestor), if it is still the entry the person saw: the next sync then
replaces it with the laptop's version through the ordinary, atomic batch
path (``--take laptop``), or finds the laptop's copy of it equal and adopts
it (``--take pod``, once the content was copied back). Nothing in the
workspace is written; only the ancestor journal is.

Every path is checked by ``devstack.core.paths`` and looked at through
folders opened with ``O_NOFOLLOW`` from the workspace's own descriptor:
nothing is read through a symlink, or outside the workspace, and a fifo is
never opened in a way that blocks.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from devstack.core.errors import UnsafePathError
from devstack.core.ignore import IgnoreRules
from devstack.core.logging import clip, get_logger
from devstack.core.manifest import (
    DIGEST_SIZE,
    Entry,
    Kind,
    SyncState,
    hash_fd,
    open_regular,
    stat_key,
)
from devstack.core.paths import check_relpath
from devstack.core.protocol import entry_from_pb, entry_to_pb
from devstack.sidecar.workspace import Workspace
from devstack.sync.v1 import sync_pb2 as pb

log = get_logger("sidecar.conflicts")

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Paths the log remembers; past it the oldest reports are forgotten (the
#: ``DIRTY`` scan still finds what the app changed).
LOG_LIMIT = 10_000
#: Paths one ``Conflicts`` or ``Resolve`` call may name.
MAX_PATHS = 10_000
#: Bytes of entries one ``ConflictsResponse`` lists, well under the
#: message limit; past them it says ``truncated``.
REPLY_BYTES = 3 << 20
#: Bytes of one ``FileChunk``'s data.
READ_CHUNK = 1 << 20


def _is_conflict(outcome: object) -> bool:
    """Whether a not-applied outcome is a conflict: its ``conflict`` flag,
    else its ``reason`` (the ``Problem.reason`` string)."""
    flag = getattr(outcome, "conflict", None)
    if isinstance(flag, bool):
        return flag
    reason = getattr(outcome, "reason", "")
    return str(getattr(reason, "value", reason)) == "conflict"


@dataclass(frozen=True)
class Reported:
    """A conflict a batch reported: its message and when (Unix seconds)."""

    message: str
    at: float


class ConflictLog:
    """The conflicts batches reported since the sidecar started, by path;
    a path leaves it when an op at it applies or a person settles it.
    Thread-safe: session threads record, ``Conflicts`` reads."""

    def __init__(self, limit: int = LOG_LIMIT, *, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._reported: dict[str, Reported] = {}
        self._limit = limit
        self._clock = clock

    def observe(self, outcomes: Iterable[object]) -> None:
        """Take in a committed batch's outcomes (objects with ``applied``,
        ``path``, ``message`` and ``conflict`` or ``reason``)."""
        now = self._clock()
        with self._lock:
            for o in outcomes:
                path = str(getattr(o, "path", ""))
                if getattr(o, "applied", False):
                    self._reported.pop(path, None)
                elif _is_conflict(o):
                    self._reported.pop(path, None)  # newest last
                    self._reported[path] = Reported(clip(str(getattr(o, "message", ""))), now)
            while len(self._reported) > self._limit:
                del self._reported[next(iter(self._reported))]

    def settle(self, paths: Iterable[str]) -> None:
        with self._lock:
            for p in paths:
                self._reported.pop(p, None)

    def get(self, path: str) -> Reported | None:
        with self._lock:
            return self._reported.get(path)

    def paths(self) -> list[str]:
        with self._lock:
            return list(self._reported)

    def __len__(self) -> int:
        with self._lock:
            return len(self._reported)


# --------------------------------------------------------------- looking


def _open_parent(root_fd: int, path: str) -> tuple[int, str]:
    """The descriptor of ``path``'s folder (opened without following a
    symlink at any level; the caller closes it unless it is ``root_fd``)
    and the last name. ``UnsafePathError`` if a folder on the way is a
    symlink or not a folder; ``FileNotFoundError`` if one is missing."""
    check_relpath(path)
    *folders, name = path.split("/")
    fd = root_fd
    try:
        for i, part in enumerate(folders):
            try:
                child = os.open(part, _O_DIR, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePathError(
                        f"{'/'.join(folders[: i + 1])!r} is a symlink or not a folder: "
                        "nothing is read through it"
                    ) from e
                raise
            if fd != root_fd:
                os.close(fd)
            fd = child
    except BaseException:
        if fd != root_fd:
            os.close(fd)
        raise
    return fd, name


def look(ws: Workspace, path: str) -> tuple[Entry | None, int]:
    """What is at ``path`` now (with its sync state) and its modification
    time in nanoseconds; (None, 0) if nothing is there. Call with
    ``ws.lock`` held (the digest cache is shared)."""
    try:
        parent, name = _open_parent(ws.root_fd, path)
    except (FileNotFoundError, NotADirectoryError):
        return None, 0
    try:
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None, 0
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            entry = Entry(path, Kind.DIRECTORY, 0, stat.S_IMODE(mode))
        elif stat.S_ISLNK(mode):
            entry = Entry(path, Kind.SYMLINK, 0, 0o777, b"", os.readlink(name, dir_fd=parent))
        elif stat.S_ISREG(mode):
            digest = ws.cache.get(path, stat_key(st))
            if digest is None:
                opened = open_regular(name, dir_fd=parent)  # never blocks on a fifo
                if opened is None:
                    raise UnsafePathError(f"{path!r} is no longer a regular file")
                fd, st = opened
                try:
                    digest = hash_fd(fd)
                finally:
                    os.close(fd)
                ws.cache.put(path, stat_key(st), digest)
            entry = Entry(path, Kind.FILE, st.st_size, stat.S_IMODE(st.st_mode), digest)
        else:
            raise UnsafePathError(f"{path!r} is a device, fifo or socket: never synced")
        return entry._replace(state=ws.state(path, entry)), st.st_mtime_ns
    finally:
        if parent != ws.root_fd:
            os.close(parent)


def _ancestor_pb(ws: Workspace, path: str) -> pb.Entry | None:
    anc = ws.ancestors.get(path)
    if anc is None:
        return None
    kind, digest, target = anc
    return pb.Entry(path=path, kind=kind, digest=digest, target=target)  # type: ignore[arg-type]


def pod_entries(
    ws: Workspace,
    rules: IgnoreRules,
    paths: Sequence[str],
    reported: ConflictLog,
    *,
    limit_bytes: int = REPLY_BYTES,
) -> pb.ConflictsResponse:
    """The workspace's side of possible conflicts: ``paths`` if given (each
    checked; ``UnsafePathError`` for one that is not a safe relative path),
    else every ``DIRTY`` path and every reported one, in path order, minus
    what ``rules`` ignore. Runs on a worker thread."""
    if len(paths) > MAX_PATHS:
        raise UnsafePathError(f"{len(paths)} paths: one call may name at most {MAX_PATHS}")
    for p in paths:
        check_relpath(p)
    resp = pb.ConflictsResponse()
    with ws.lock:
        known: dict[str, Entry] = {}
        if paths:
            wanted = sorted(set(paths))
        else:
            manifest = ws.manifest(rules)
            known = {p: e for p, e in manifest.items() if e.state == SyncState.DIRTY}
            logged = [p for p in reported.paths() if not rules.excludes(p)]
            wanted = sorted(known.keys() | set(logged))
            del manifest
        room = limit_bytes
        for p in wanted:
            try:
                entry, mtime = look(ws, p)
            except UnsafePathError:
                if paths:
                    raise
                continue  # swapped for a fifo meanwhile, or under a symlink now
            item = pb.PodEntry(path=p, mtime_ns=mtime)
            if entry is not None:
                item.entry.CopyFrom(entry_to_pb(entry))
            anc = _ancestor_pb(ws, p)
            if anc is not None:
                item.ancestor.CopyFrom(anc)
            r = reported.get(p)
            if r is not None:
                item.message, item.reported_at = r.message, r.at
            room -= item.ByteSize() + 8
            if room < 0:
                resp.truncated = True
                break
            resp.entries.append(item)
    return resp


# --------------------------------------------------------------- settling


def settle(
    ws: Workspace, items: Sequence[pb.ResolveItem], reported: ConflictLog
) -> list[pb.ResolveResult]:
    """Make each item's current workspace entry what sync last wrote, if it
    is still the one expected (same kind and content); write the ancestor
    journal before returning. Runs on a worker thread."""
    if len(items) > MAX_PATHS:
        raise UnsafePathError(f"{len(items)} paths: one call may name at most {MAX_PATHS}")
    results: list[pb.ResolveResult] = []
    settled: list[str] = []
    with ws.lock:
        for item in items:
            path = item.path
            res = pb.ResolveResult(path=path)
            results.append(res)
            try:
                check_relpath(path)
                expected = (
                    entry_from_pb(item.expected)
                    if item.HasField("expected") and item.expected.kind
                    else None
                )
                current, _ = look(ws, path)
            except UnsafePathError as e:
                res.reason, res.message = e.reason, clip(str(e))
                continue
            except OSError as e:
                res.reason = "io-error"
                res.message = clip(f"{path!r}: {e.strerror or e}")
                continue
            same = current is None if expected is None else expected.same_content(current)
            if not same:
                res.reason = "changed"
                res.message = clip(
                    f"{path!r} changed in the workspace since it was listed: "
                    "list the conflicts again"
                )
                continue
            ws._record(path, current)
            res.resolved = True
            settled.append(path)
        ws.save_state(force=False)  # journaled before the reply
    reported.settle(settled)
    return results


# --------------------------------------------------------------- reading


def open_for_read(ws: Workspace, path: str) -> tuple[Entry, int | None]:
    """The entry at ``path`` (digest left empty) and, for a regular file, a
    descriptor to read it from (the caller closes it; a symlink has none).
    ``UnsafePathError`` for an unsafe path, a symlinked folder on the way,
    a device, fifo or socket; ``FileNotFoundError`` if nothing is there;
    ``IsADirectoryError`` for a folder."""
    parent, name = _open_parent(ws.root_fd, path)
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            return Entry(path, Kind.SYMLINK, 0, 0o777, b"", os.readlink(name, dir_fd=parent)), None
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a folder", path)
        opened = open_regular(name, dir_fd=parent)
        if opened is None:
            raise UnsafePathError(f"{path!r} is a device, fifo or socket: never read")
        fd, st = opened
        return Entry(path, Kind.FILE, st.st_size, stat.S_IMODE(st.st_mode)), fd
    finally:
        if parent != ws.root_fd:
            with contextlib.suppress(OSError):
                os.close(parent)


def content_hasher() -> hashlib.blake2b:
    """The digest ``FileChunk.digest`` carries: the manifest's (BLAKE2b-128)."""
    return hashlib.blake2b(digest_size=DIGEST_SIZE)


def read_piece(fd: int, offset: int, left: int, hasher: hashlib.blake2b) -> bytes:
    """Up to ``READ_CHUNK`` bytes (never more than ``left``) at ``offset``,
    hashed into ``hasher`` in the same pass. Runs on a worker thread."""
    data = os.pread(fd, min(READ_CHUNK, left), offset)
    hasher.update(data)
    return data
