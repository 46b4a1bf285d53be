"""The sidecar's workspace: its manifest with sync states, and the applier
that stages and commits batches (filesystem I/O; no network).

Safety rules, each enforced here and nowhere else:

- Every path is checked by ``devstack.core.paths`` and every parent folder
  is opened with ``O_NOFOLLOW`` relative to the workspace's own descriptor,
  so no write goes through a symlink or outside the workspace.
- Content is staged in ``.devstack/staging`` (same filesystem) and renamed
  into place when the batch commits: a reader sees the old file or the new
  one, never half of one, and a batch that never commits changes nothing.
- A change applies only if the path holds what the laptop expected and,
  unless the sidecar is a replica or the person forced it, nothing changed
  it since sync last wrote it (the "ancestor"); otherwise it is a conflict.
- Devices, fifos and sockets are never created, replaced or removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.core.errors import ConfigError, ProtocolError, UnsafePathError
from devstack.core.ignore import IgnoreRules
from devstack.core.logging import get_logger
from devstack.core.manifest import (
    DIGEST_SIZE,
    DigestCache,
    Entry,
    Kind,
    Manifest,
    SyncState,
    hash_fd,
    scan,
    stat_key,
)
from devstack.core.paths import RESERVED_DIR, check_link_target, check_relpath

log = get_logger("sidecar.workspace")

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: (kind, digest, symlink target) that sync last wrote at a path.
Ancestor = tuple[int, bytes, str]


@dataclass(frozen=True)
class WriteOptions:
    """Ownership and modes of what the sidecar writes."""

    uid: int | None = None
    gid: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None

    def file_perm(self, laptop_mode: int) -> int:
        if self.file_mode is None:
            return laptop_mode & 0o7777
        mode = self.file_mode
        if laptop_mode & 0o111:  # keep it executable: x wherever r is granted
            mode |= (mode & 0o444) >> 2
        return mode

    def dir_perm(self, laptop_mode: int) -> int:
        return (laptop_mode & 0o7777) if self.dir_mode is None else self.dir_mode

    @property
    def forces_modes(self) -> bool:
        return self.file_mode is not None or self.dir_mode is not None


@dataclass
class Outcome:
    """What one op did."""

    applied: bool
    path: str
    reason: str = ""
    message: str = ""
    actual: Entry | None = None


@dataclass
class StagedOp:
    """One op of an open batch."""

    index: int
    kind: str  # write | mkdir | symlink | delete | rename | chmod | adopt
    path: str
    entry: Entry | None
    expected: Entry | None
    expected_absent: bool
    from_path: str = ""
    force: bool = False
    problem: Outcome | None = None
    # write only
    fd: int = -1
    staged_name: str = ""
    written: int = 0
    hasher: Any = None  # a hashlib.blake2b while staging
    old_fd: int = -1
    old_size: int = 0
    delta: bool = False
    chunked: bool = False


@dataclass
class Counters:
    batches_applied: int = 0
    files_written: int = 0
    bytes_received: int = 0
    conflicts: int = 0


@dataclass
class _DirCache:
    """Open descriptors of folders, resolved without following symlinks."""

    root_fd: int
    fds: dict[str, int] = field(default_factory=dict)

    def get(self, folder: str, *, create_mode: int | None = None) -> int:
        if not folder:
            return self.root_fd
        hit = self.fds.get(folder)
        if hit is not None:
            return hit
        head, _, name = folder.rpartition("/")
        parent = self.get(head)
        try:
            fd = os.open(name, _O_DIR, dir_fd=parent)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePathError(
                    f"{folder!r} is a symlink or not a folder: nothing is written through it"
                ) from e
            raise
        self.fds[folder] = fd
        return fd

    def forget(self, folder: str) -> None:
        for key in [k for k in self.fds if k == folder or k.startswith(folder + "/")]:
            os.close(self.fds.pop(key))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _split(path: str) -> tuple[str, str]:
    head, _, name = path.rpartition("/")
    return head, name


class Workspace:
    """A workspace directory served by the sidecar. Thread-safe: one lock
    serialises staging and commits across sessions."""

    def __init__(
        self,
        root: Path,
        *,
        replica: bool = False,
        options: WriteOptions | None = None,
    ) -> None:
        try:
            self.root = root.resolve(strict=True)
        except (FileNotFoundError, RuntimeError) as e:
            raise ConfigError(f"workspace {root} does not exist") from e
        if not self.root.is_dir():
            raise ConfigError(f"workspace {root} is not a directory")
        self.replica = replica
        self.options = options or WriteOptions()
        self.lock = threading.RLock()
        self.counters = Counters()
        self.root_fd = os.open(self.root, _O_DIR)
        self.state_dir = self.root / RESERVED_DIR
        self.state_dir.mkdir(mode=0o700, exist_ok=True)
        if self.state_dir.is_symlink() or not self.state_dir.is_dir():
            raise ConfigError(f"{self.state_dir} must be a real directory")
        self.staging = self.state_dir / "staging"
        self.staging.mkdir(mode=0o700, exist_ok=True)
        self.staging_fd = os.open(self.staging, _O_DIR)
        for leftover in os.listdir(self.staging_fd):  # batches that never committed
            with contextlib.suppress(OSError):
                os.unlink(leftover, dir_fd=self.staging_fd)
        self.cache = DigestCache.load(self.state_dir / "digests.json")
        self.ancestors = self._load_ancestors()
        self._ancestors_dirty = False
        self._last_save = time.monotonic()

    # ------------------------------------------------------------- state

    def _load_ancestors(self) -> dict[str, Ancestor]:
        try:
            raw = json.loads((self.state_dir / "ancestors.json").read_text())
            return {p: (int(k), bytes.fromhex(d), t) for p, (k, d, t) in raw["paths"].items()}
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return {}

    def save_state(self, *, force: bool = True) -> None:
        """Persist ancestors and the digest cache (atomically). Without
        ``force`` it saves at most every few seconds."""
        with self.lock:
            if not force and time.monotonic() - self._last_save < 5.0:
                return
            if self._ancestors_dirty:
                data = {
                    "version": 1,
                    "paths": {p: [k, d.hex(), t] for p, (k, d, t) in self.ancestors.items()},
                }
                tmp = self.state_dir / f"ancestors.json.tmp{os.getpid()}"
                tmp.write_text(json.dumps(data, separators=(",", ":")))
                os.replace(tmp, self.state_dir / "ancestors.json")
                self._ancestors_dirty = False
            if self.cache.dirty:
                self.cache.save(self.state_dir / "digests.json")
            self._last_save = time.monotonic()

    def close(self) -> None:
        self.save_state()
        os.close(self.staging_fd)
        os.close(self.root_fd)

    def _record(self, path: str, entry: Entry | None) -> None:
        if entry is None:
            self.ancestors.pop(path, None)
        else:
            self.ancestors[path] = (int(entry.kind), entry.digest, entry.target)
        self._ancestors_dirty = True

    def _state(self, e: Entry) -> SyncState:
        anc = self.ancestors.get(e.path)
        if anc is None:
            return SyncState.UNTRACKED
        if anc == (int(e.kind), e.digest, e.target):
            return SyncState.SYNCED
        return SyncState.DIRTY

    def manifest(self, rules: IgnoreRules) -> Manifest:
        """The workspace as it is now, each entry with its sync state."""
        with self.lock:
            found = scan(self.root, rules=rules, cache=self.cache)
            self.cache.retain(found)
            out: Manifest = {}
            for p, e in found.items():
                st = self._state(e)
                out[p] = (
                    e
                    if st == SyncState.UNTRACKED
                    else Entry(e.path, e.kind, e.size, e.mode, e.digest, e.target, st)
                )
            # Forget ancestors of paths that are gone (the app deleted them).
            for p in [p for p in self.ancestors if p not in found and not rules.ignored(p)]:
                self._record(p, None)
            return out

    # ------------------------------------------------------------- reading

    def _current(self, dirs: _DirCache, path: str) -> Entry | None:
        """What is at ``path`` now (never following a final symlink)."""
        head, name = _split(path)
        try:
            parent = dirs.get(head)
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return Entry(path, Kind.DIRECTORY, 0, stat.S_IMODE(mode))
        if stat.S_ISLNK(mode):
            return Entry(path, Kind.SYMLINK, 0, 0o777, b"", os.readlink(name, dir_fd=parent))
        if stat.S_ISREG(mode):
            key = stat_key(st)
            digest = self.cache.get(path, key)
            if digest is None:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    digest = hash_fd(fd)
                finally:
                    os.close(fd)
                self.cache.put(path, key, digest)
            return Entry(path, Kind.FILE, st.st_size, stat.S_IMODE(mode), digest)
        raise UnsafePathError(f"{path!r} is a device, fifo or socket: the sidecar never touches it")

    def signature_source(self, path: str) -> tuple[int, int, bytes] | None:
        """(fd, size, digest) of a regular file at ``path`` for a delta
        signature, or None. The caller closes the fd."""
        check_relpath(path)
        dirs = _DirCache(self.root_fd)
        try:
            head, name = _split(path)
            try:
                fd = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirs.get(head)
                )
            except OSError:
                return None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                return None
            digest = self.cache.get(path, stat_key(st))
            if digest is None:
                digest = hash_fd(fd)
                self.cache.put(path, stat_key(st), digest)
            return fd, st.st_size, digest
        finally:
            dirs.close()

    # ------------------------------------------------------------- batches

    def open_batch(self, seq: int, ops: list[StagedOp]) -> Batch:
        return Batch(self, seq, ops)


class Batch:
    """A batch being staged. ``commit`` applies it; ``abort`` discards it."""

    def __init__(self, ws: Workspace, seq: int, ops: list[StagedOp]) -> None:
        self.ws = ws
        self.seq = seq
        self.ops = ops
        self.bytes = 0
        self._dirs = _DirCache(ws.root_fd)
        for op in ops:
            if op.problem is None:
                try:
                    self._prepare(op)
                except (UnsafePathError, ProtocolError) as e:
                    op.problem = Outcome(False, op.path, e.reason, str(e))

    def _prepare(self, op: StagedOp) -> None:
        check_relpath(op.path)
        if op.from_path:
            check_relpath(op.from_path)
        if (
            op.kind in ("write", "mkdir", "symlink", "chmod", "adopt", "rename")
            and op.entry is None
        ):
            raise ProtocolError(f"{op.path!r}: {op.kind} without an entry")
        if op.kind == "symlink":
            assert op.entry is not None
            check_link_target(op.path, op.entry.target)
        if op.kind != "write":
            return
        assert op.entry is not None
        if op.entry.kind != Kind.FILE or len(op.entry.digest) != DIGEST_SIZE:
            raise ProtocolError(f"{op.path!r}: a write needs a file entry with a digest")
        op.staged_name = f"{self.seq}-{op.index}-{secrets.token_hex(6)}"
        op.fd = os.open(
            op.staged_name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=self.ws.staging_fd,
        )
        op.hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
        if op.delta:
            head, name = _split(op.path)
            try:
                op.old_fd = os.open(
                    name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dirs.get(head)
                )
            except FileNotFoundError as e:
                raise ProtocolError(f"{op.path!r}: delta against a file that does not exist") from e
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UnsafePathError(f"{op.path!r} is a symlink: no delta through it") from e
                raise
            st = os.fstat(op.old_fd)
            if not stat.S_ISREG(st.st_mode):
                raise ProtocolError(f"{op.path!r}: delta base is not a regular file")
            op.old_size = st.st_size

    def op(self, index: int) -> StagedOp:
        if not 0 <= index < len(self.ops):
            raise ProtocolError(f"batch {self.seq}: chunk for op {index}, which does not exist")
        op = self.ops[index]
        if op.kind != "write" or not op.chunked:
            raise ProtocolError(f"batch {self.seq}: chunk for op {index}, which takes no chunks")
        return op

    def _append(self, op: StagedOp, data: bytes) -> None:
        assert op.entry is not None and op.hasher is not None
        if op.written + len(data) > op.entry.size:
            raise ProtocolError(
                f"{op.path!r}: more content than the declared {op.entry.size} bytes"
            )
        view = memoryview(data)
        while view:
            n = os.write(op.fd, view)
            view = view[n:]
        op.hasher.update(data)
        op.written += len(data)

    def write(self, index: int, data: bytes) -> None:
        """Append literal content to a staged write."""
        op = self.op(index)
        if op.problem is not None:
            return
        self._append(op, data)
        self.bytes += len(data)

    def copy(self, index: int, offset: int, length: int) -> None:
        """Append a range of the file's current content (delta)."""
        op = self.op(index)
        if op.problem is not None:
            return
        if not op.delta or op.old_fd < 0:
            raise ProtocolError(f"{op.path!r}: copy range in an op that is not a delta")
        if offset + length > op.old_size:
            raise ProtocolError(f"{op.path!r}: copy range past the end of the current content")
        pos = offset
        end = offset + length
        while pos < end:
            data = os.pread(op.old_fd, min(1 << 20, end - pos), pos)
            if not data:
                raise ProtocolError(f"{op.path!r}: the current content shrank during the delta")
            self._append(op, data)
            pos += len(data)

    def inline(self, index: int, data: bytes) -> None:
        op = self.ops[index]
        if op.problem is None:
            self._append(op, data)
            self.bytes += len(data)

    # ------------------------------------------------------------- commit

    def abort(self) -> None:
        for op in self.ops:
            self._release(op, unlink=True)
        self._dirs.close()

    def _release(self, op: StagedOp, *, unlink: bool) -> None:
        if op.fd >= 0:
            os.close(op.fd)
            op.fd = -1
        if op.old_fd >= 0:
            os.close(op.old_fd)
            op.old_fd = -1
        if unlink and op.staged_name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(op.staged_name, dir_fd=self.ws.staging_fd)
            op.staged_name = ""

    def commit(self) -> list[Outcome]:
        """Apply every op in order; each either applies or reports why not."""
        ws = self.ws
        outcomes: list[Outcome] = []
        with ws.lock:
            try:
                for op in self.ops:
                    if op.problem is not None:
                        outcomes.append(op.problem)
                        self._release(op, unlink=True)
                        continue
                    try:
                        outcome = self._apply(op)
                    except UnsafePathError as e:
                        outcome = Outcome(False, op.path, e.reason, str(e))
                    except ProtocolError as e:
                        outcome = Outcome(False, op.path, e.reason, str(e))
                    except OSError as e:
                        outcome = Outcome(
                            False, op.path, "io-error", f"{op.path!r}: {e.strerror or e}"
                        )
                    finally:
                        self._release(op, unlink=True)
                    outcomes.append(outcome)
                    if outcome.reason == "conflict":
                        ws.counters.conflicts += 1
            finally:
                self._dirs.close()
            ws.counters.batches_applied += 1
            ws.counters.bytes_received += self.bytes
            ws.save_state(force=False)
        return outcomes

    def _conflict(self, op: StagedOp, actual: Entry | None, why: str) -> Outcome:
        return Outcome(False, op.path, "conflict", f"{op.path!r}: {why}", actual)

    def _check(self, op: StagedOp, path: str, current: Entry | None) -> Outcome | None:
        """The conflict rules; None when the op may go ahead."""
        if self.ws.replica:
            return None
        if op.expected_absent:
            if current is not None:
                return self._conflict(
                    op, current, "exists in the workspace, the laptop expected nothing"
                )
        elif op.expected is not None:
            if current is None:
                return self._conflict(op, None, "is gone from the workspace")
            if not current.same_content(op.expected):
                return self._conflict(
                    op, current, "changed in the workspace (not what the laptop expected)"
                )
        if op.force or current is None:
            return None
        anc = self.ws.ancestors.get(path)
        if anc is not None and anc != (int(current.kind), current.digest, current.target):
            return self._conflict(op, current, "changed in the workspace since the last sync")
        return None

    def _apply(self, op: StagedOp) -> Outcome:
        ws = self.ws
        dirs = self._dirs
        path = op.path
        head, name = _split(path)
        kind = op.kind
        if kind == "rename":
            current = ws._current(dirs, op.from_path)
            if current is None or (
                not ws.replica and op.expected is not None and not current.same_content(op.expected)
            ):
                return self._conflict(
                    op, current, f"rename source {op.from_path!r} is not as expected"
                )
            if not ws.replica:
                anc = ws.ancestors.get(op.from_path)
                if anc is not None and anc != (int(current.kind), current.digest, current.target):
                    return self._conflict(op, current, "rename source changed since the last sync")
            target_now = ws._current(dirs, path)
            if target_now is not None and not ws.replica:
                return self._conflict(op, target_now, "rename target exists in the workspace")
            src_head, src_name = _split(op.from_path)
            os.rename(src_name, name, src_dir_fd=dirs.get(src_head), dst_dir_fd=dirs.get(head))
            if current.kind == Kind.DIRECTORY:
                dirs.forget(op.from_path)
            ws.cache.forget(op.from_path)
            ws._record(op.from_path, None)
            ws._record(path, current)
            return Outcome(True, path)

        current = ws._current(dirs, path)
        if kind == "adopt":
            assert op.entry is not None
            if current is None or not current.same_content(op.entry):
                return self._conflict(
                    op, current, "cannot adopt: the workspace holds something else"
                )
            ws._record(path, current)
            return Outcome(True, path)
        problem = self._check(op, path, current)
        if problem is not None:
            return problem
        parent = dirs.get(head)

        if kind == "delete":
            if current is None:
                ws._record(path, None)
                return Outcome(True, path)
            if current.kind == Kind.DIRECTORY:
                try:
                    os.rmdir(name, dir_fd=parent)
                except OSError as e:
                    if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                        return Outcome(
                            False,
                            path,
                            "not-empty",
                            f"{path!r}: kept, it holds files sync did not create",
                        )
                    raise
                dirs.forget(path)
            else:
                os.unlink(name, dir_fd=parent)
            ws.cache.forget(path)
            ws._record(path, None)
            return Outcome(True, path)

        assert op.entry is not None
        opts = ws.options
        if kind == "mkdir":
            mode = opts.dir_perm(op.entry.mode)
            if current is not None and current.kind != Kind.DIRECTORY:
                self._remove(parent, name, current)
                current = None
            if current is None:
                os.mkdir(name, 0o700, dir_fd=parent)
            self._chmod_chown(parent, name, mode, directory=True)
            dirs.forget(path)
            ws._record(path, op.entry)
            return Outcome(True, path)

        if kind == "chmod":
            if current is None or current.kind == Kind.SYMLINK:
                return self._conflict(op, current, "nothing to chmod")
            mode = (
                opts.dir_perm(op.entry.mode)
                if current.kind == Kind.DIRECTORY
                else opts.file_perm(op.entry.mode)
            )
            self._chmod_chown(
                parent, name, mode, directory=current.kind == Kind.DIRECTORY, chown=False
            )
            ws._record(path, current)
            return Outcome(True, path)

        if kind == "symlink":
            tmp = f"{self.seq}-{op.index}-{secrets.token_hex(6)}.link"
            os.symlink(op.entry.target, tmp, dir_fd=ws.staging_fd)
            if opts.uid is not None or opts.gid is not None:
                os.chown(
                    tmp,
                    opts.uid if opts.uid is not None else -1,
                    opts.gid if opts.gid is not None else -1,
                    dir_fd=ws.staging_fd,
                    follow_symlinks=False,
                )
            if current is not None and current.kind == Kind.DIRECTORY:
                self._remove(parent, name, current)
            os.rename(tmp, name, src_dir_fd=ws.staging_fd, dst_dir_fd=parent)
            ws._record(path, op.entry)
            return Outcome(True, path)

        if kind == "write":
            assert op.hasher is not None
            if op.written != op.entry.size:
                return Outcome(
                    False,
                    path,
                    "incomplete",
                    f"{path!r}: got {op.written} of {op.entry.size} bytes; nothing written",
                )
            if op.hasher.digest() != op.entry.digest:
                return Outcome(
                    False, path, "digest-mismatch", f"{path!r}: content does not match its digest"
                )
            os.fchmod(op.fd, opts.file_perm(op.entry.mode))
            if opts.uid is not None or opts.gid is not None:
                os.fchown(
                    op.fd,
                    opts.uid if opts.uid is not None else -1,
                    opts.gid if opts.gid is not None else -1,
                )
            os.close(op.fd)
            op.fd = -1
            if current is not None and current.kind == Kind.DIRECTORY:
                self._remove(parent, name, current)
            os.rename(op.staged_name, name, src_dir_fd=ws.staging_fd, dst_dir_fd=parent)
            op.staged_name = ""
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            ws.cache.put(path, stat_key(st), op.entry.digest)
            ws._record(path, op.entry)
            ws.counters.files_written += 1
            return Outcome(True, path)

        raise ProtocolError(f"{path!r}: unknown op {kind!r}")

    def _remove(self, parent: int, name: str, current: Entry) -> None:
        """Remove what stands where a different kind must go (an empty folder
        only: a folder with content is replaced only after its children)."""
        if current.kind == Kind.DIRECTORY:
            os.rmdir(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    def _chmod_chown(
        self, parent: int, name: str, mode: int, *, directory: bool, chown: bool = True
    ) -> None:
        flags = (os.O_RDONLY | os.O_DIRECTORY if directory else os.O_RDONLY) | os.O_NOFOLLOW
        try:
            fd = os.open(name, flags | os.O_CLOEXEC, dir_fd=parent)
        except PermissionError:
            os.chmod(name, mode, dir_fd=parent)
            return
        try:
            os.fchmod(fd, mode)
            opts = self.ws.options
            if chown and (opts.uid is not None or opts.gid is not None):
                os.fchown(
                    fd,
                    opts.uid if opts.uid is not None else -1,
                    opts.gid if opts.gid is not None else -1,
                )
        finally:
            os.close(fd)


@contextlib.contextmanager
def open_workspace(root: Path, **kwargs: object) -> Iterator[Workspace]:
    ws = Workspace(root, **kwargs)  # type: ignore[arg-type]
    try:
        yield ws
    finally:
        ws.close()
