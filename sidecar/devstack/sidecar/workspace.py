"""The sidecar's workspace: its manifest with sync states, and the applier
that stages and commits batches (filesystem I/O; no network).

The applier is the thin I/O side of ``devstack.core.sync``: each op is a
frozen ``StagedOp``; ``devstack.core.sync.decide`` says what to do with it
given what the workspace holds (apply, adopt what is identical, a conflict
or a refusal, each with its ``Reason``), and ``Batch`` looks at the disk,
asks, and executes the decision, dispatched on the op's ``OpKind``.

Safety rules, each enforced here and nowhere else:

- Every path is checked by ``devstack.core.paths`` and every parent folder
  is opened with ``O_NOFOLLOW`` relative to the workspace's own descriptor,
  so no write goes through a symlink or outside the workspace.
- No symlink sync creates or moves resolves outside the workspace: its
  target passes ``check_link_target`` at its (new) place, and then
  ``resolve_link`` follows the symlinks already on disk along its way. A
  folder moved up the tree takes its symlinks along only if they still pass.
- Content is staged in ``.devstack/staging`` (same filesystem) and renamed
  into place when the batch commits: a reader sees the old file or the new
  one, never half of one, and a batch that never commits changes nothing.
  A folder the batch creates where nothing is expected is staged whole,
  with the files and folders the batch creates in it, and renamed into
  place in one ``RENAME_NOREPLACE`` step (``_Tree``): a reader sees no
  folder or the folder with all of that batch's content, and the files in
  it take no rename each.
  A batch holds at most two staging descriptors open at a time, whatever
  its size; if the disk refuses anything while staging, the whole batch is
  discarded and ``WorkspaceIOError`` says why.
- What sync wrote (the "ancestors") is appended to
  ``.devstack/ancestors.journal`` before a batch is acknowledged, so a
  sidecar killed right after an Ack still knows, once restarted, which
  files the app changed since. The journal is folded into
  ``ancestors.json`` when it grows past the snapshot and on shutdown.
- A change applies only if the path holds what the laptop expected and,
  unless the sidecar is a replica or the person forced it, nothing changed
  it since sync last wrote it (the "ancestor"); otherwise it is a conflict.
  Where the laptop expects nothing, the rename (``RENAME_NOREPLACE``) or the
  ``mkdir`` itself refuses to replace what is there: no look, then a window.
- Devices, fifos and sockets are never created, replaced or removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import secrets
import shutil
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, TypeVar

from devstack.core import ignore as ignore_mod
from devstack.core.errors import ConfigError, ProtocolError, UnsafePathError, WorkspaceIOError
from devstack.core.ignore import IgnoreRules
from devstack.core.logging import get_logger
from devstack.core.manifest import (
    DIGEST_SIZE,
    DigestCache,
    Entry,
    Kind,
    Manifest,
    Skipped,
    StatKey,
    SyncState,
    gc_paused,
    hash_fd,
    open_regular,
    scan,
    stat_key,
)
from devstack.core.paths import (
    MAX_PATH_BYTES,
    RESERVED_DIR,
    check_link_target,
    check_relpath,
    folders_above,
    resolve_link,
)
from devstack.core.sync.decide import (
    Decision,
    Do,
    check_op,
    chmod_tracks,
    content_problem,
    creates_without_look,
    decide,
    decide_rename,
    rename_source,
)
from devstack.core.sync.model import (
    OpKind,
    Outcome,
    Reason,
    RefusedError,
    StagedOp,
    done,
    not_applied,
    reason_of,
)

log = get_logger("sidecar.workspace")

# The op kinds as module constants: these checks run once an op, and looking a
# member up on its enum class costs about ten times a global in Python 3.11.
_WRITE, _RENAME, _MKDIR = OpKind.WRITE, OpKind.RENAME, OpKind.MKDIR
T = TypeVar("T")

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
#: (kind, digest, symlink target) that sync last wrote at a path.
Ancestor = tuple[int, bytes, str]
#: Folder descriptors a batch keeps open between ops.
DIR_CACHE_LIMIT = 32
#: Folder descriptors kept while following symlinks.
SCRATCH_LIMIT = 8
#: The journal is folded into the snapshot once it is larger than this and
#: larger than the snapshot (so folding costs O(1) per record, amortised;
#: replaying this much at start-up takes a few tens of milliseconds).
JOURNAL_MIN_BYTES = 4 * 1024 * 1024
#: Seconds between saves of the digest cache (a cache: losing it costs a rehash).
CACHE_SAVE_SECONDS = 5.0
#: How long a session's first manifest waits for the start-up hashing to
#: stop (it stops within ``WARM_EVERY`` entries; a very large file takes its
#: own time, and then both hash for a while, which is only slower).
WARM_STOP_SECONDS = 2.0
#: The start-up hashing looks whether to stop after this many entries.
WARM_EVERY = 64
#: The start-up hashing's niceness (on its own thread: the app starts
#: beside it).
WARM_NICENESS = 10
#: errnos that mean the sidecar itself ran out of something.
RESOURCE_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.ENOMEM, errno.EFBIG}
)


def _io_error(what: str, e: OSError) -> WorkspaceIOError:
    name = errno.errorcode.get(e.errno or 0, "")
    why = f"{e.strerror or e}" + (f" ({name})" if name else "")
    return WorkspaceIOError(f"{what}: {why}", errno=e.errno)


#: The permission bits sync ever sets: never setuid, setgid or sticky, so a
#: client cannot plant a setuid executable owned by the sidecar's user.
PERM_BITS = 0o777


@dataclass(frozen=True)
class WriteOptions:
    """Ownership and modes of what the sidecar writes. Only permission bits
    (``PERM_BITS``) are ever set: special bits from the laptop are dropped,
    and a forced mode may not hold any."""

    uid: int | None = None
    gid: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None

    def __post_init__(self) -> None:
        for flag, mode in (("--file-mode", self.file_mode), ("--dir-mode", self.dir_mode)):
            if mode is not None and not 0 <= mode <= PERM_BITS:
                raise ConfigError(
                    f"{flag} {mode:04o}: only permission bits (0000 to 0777); sync never "
                    "sets setuid, setgid or sticky bits"
                )

    def file_perm(self, laptop_mode: int) -> int:
        if self.file_mode is None:
            return laptop_mode & PERM_BITS
        mode = self.file_mode
        if laptop_mode & 0o111:  # keep it executable: x wherever r is granted
            mode |= (mode & 0o444) >> 2
        return mode

    def dir_perm(self, laptop_mode: int) -> int:
        return (laptop_mode & PERM_BITS) if self.dir_mode is None else self.dir_mode

    @property
    def forces_modes(self) -> bool:
        return self.file_mode is not None or self.dir_mode is not None


@dataclass
class Counters:
    batches_applied: int = 0
    files_written: int = 0
    bytes_received: int = 0
    conflicts: int = 0


@dataclass
class _DirCache:
    """Open descriptors of folders, resolved without following symlinks.

    A descriptor ``get`` hands out stays open, and names the same folder,
    until ``trim`` runs, which is only ever between ops: nothing an op does
    (looking through symlinks, forgetting a folder it replaced) can close a
    descriptor that op still holds, or let its number name another folder.
    Only the folders asked for are kept (never their ancestors), most
    recently used last; ``trim`` closes the oldest beyond ``limit``."""

    root_fd: int
    limit: int = DIR_CACHE_LIMIT
    fds: dict[str, int] = field(default_factory=dict)
    #: Folders looked into by ``readlink`` only: never handed out, so they
    #: may be closed as soon as another one is opened.
    scratch: dict[str, int] = field(default_factory=dict)
    #: Forgotten (their folder was moved or removed), closed by ``trim``.
    retired: list[int] = field(default_factory=list)

    def get(self, folder: str, *, transient: bool = False) -> int:
        """The folder's descriptor, opened with ``O_NOFOLLOW`` at every
        level. ``transient``: used at once and let go (``readlink``)."""
        if not folder:
            return self.root_fd
        hit = self.fds.pop(folder, None)
        if hit is not None:
            self.fds[folder] = hit  # most recently used
            return hit
        hit = self.scratch.pop(folder, None)
        if hit is not None:
            if transient:
                self.scratch[folder] = hit
            else:  # handed out now: held until trim, like any other
                self.fds[folder] = hit
            return hit
        # Walk down from the deepest cached ancestor, closing intermediates.
        parts = folder.split("/")
        start, fd = 0, self.root_fd
        for i in range(len(parts) - 1, 0, -1):
            prefix = "/".join(parts[:i])
            cached = self.fds.get(prefix)
            if cached is None:
                cached = self.scratch.get(prefix)
            if cached is not None:
                start, fd = i, cached
                break
        owned = False
        try:
            for i in range(start, len(parts)):
                try:
                    child = os.open(parts[i], _O_DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise RefusedError(
                            Reason.THROUGH_SYMLINK,
                            f"{'/'.join(parts[: i + 1])!r} is a symlink or not a folder: "
                            "nothing is written through it",
                        ) from e
                    raise
                if owned:
                    os.close(fd)
                fd, owned = child, True
        except BaseException:
            if owned:
                os.close(fd)
            raise
        if transient:
            while len(self.scratch) >= SCRATCH_LIMIT:
                os.close(self.scratch.pop(next(iter(self.scratch))))
            self.scratch[folder] = fd
        else:
            self.fds[folder] = fd
        return fd

    def trim(self) -> None:
        """Between ops only: close what was forgotten and the oldest
        folders beyond ``limit``."""
        while self.retired:
            os.close(self.retired.pop())
        while len(self.fds) > self.limit:
            os.close(self.fds.pop(next(iter(self.fds))))

    def forget(self, folder: str) -> None:
        """Stop naming ``folder`` and what is below it (moved or removed);
        their descriptors stay open until ``trim``."""
        below = folder + "/"
        for cache in (self.fds, self.scratch):
            for key in [k for k in cache if k.startswith(below) or k == folder]:
                self.retired.append(cache.pop(key))

    def close(self) -> None:
        self.trim()
        for cache in (self.fds, self.scratch):
            for fd in cache.values():
                os.close(fd)
            cache.clear()

    def readlink(self, path: str) -> str | None:
        """The target of the symlink at ``path``, or None (not a symlink,
        missing, or under something that is not a folder)."""
        head, name = _split(path)
        try:
            return os.readlink(name, dir_fd=self.get(head, transient=True))
        except (OSError, UnsafePathError):
            return None


_RENAME_NOREPLACE = 1  # linux/fs.h
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


@functools.cache
def _renameat2() -> tuple[Callable[..., int], Callable[[], int]] | None:
    """libc's ``renameat2`` and ``get_errno`` (None without it). ctypes is
    loaded on the first commit only: the idle sidecar does without it."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn, ctypes.get_errno


def rename_noreplace(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> bool:
    """``renameat2(..., RENAME_NOREPLACE)``: rename unless something is at
    ``dst`` (then ``FileExistsError``), in one atomic step. False when the C
    library, kernel or filesystem cannot (nothing happened then)."""
    libc = _renameat2()
    if libc is None:
        return False
    fn, get_errno = libc
    # os.fsencode, without its two calls per name (this runs once a file).
    a, b = src.encode(_FS_ENCODING, _FS_ERRORS), dst.encode(_FS_ENCODING, _FS_ERRORS)
    if fn(src_dir_fd, a, dst_dir_fd, b, _RENAME_NOREPLACE) == 0:
        return True
    err = get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)  # FileExistsError for EEXIST


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
        self.lock = threading.RLock()
        self.counters = Counters()
        self.root_fd = os.open(self.root, _O_DIR)
        self.staging_fd = -1
        self._journal_fd = -1
        try:
            self.state_dir = self.root / RESERVED_DIR
            self.state_dir.mkdir(mode=0o700, exist_ok=True)
            if self.state_dir.is_symlink() or not self.state_dir.is_dir():
                raise ConfigError(f"{self.state_dir} must be a real directory")
            self.staging = self.state_dir / "staging"
            self.staging.mkdir(mode=0o700, exist_ok=True)
            self.staging_fd = os.open(self.staging, _O_DIR)
            for leftover in os.listdir(self.staging_fd):  # batches that never committed
                with contextlib.suppress(OSError):
                    try:
                        os.unlink(leftover, dir_fd=self.staging_fd)
                    except IsADirectoryError:  # a batch's staged folders (_Tree)
                        shutil.rmtree(leftover, dir_fd=self.staging_fd)
            self.options = self._check_owner(options or WriteOptions())
            #: The umask new files get, when creating a staged file with its
            #: final mode gives exactly that mode minus it (else None).
            self.umask = self._probe_umask()
            #: Whether renames may refuse to replace (see ``rename_noreplace``).
            self.noreplace = True
            self.cache = DigestCache.load(self.state_dir / "digests.json")
            self._snapshot = self.state_dir / "ancestors.json"
            self._journal = self.state_dir / "ancestors.journal"
            self.ancestors = self._load_ancestors()
            #: Ancestor changes not yet in the journal.
            self._unjournaled: dict[str, Ancestor | None] = {}
            self._snapshot_bytes = 0
            self._journal_bytes = 0
            self._journal_fd = os.open(
                self._journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            with contextlib.suppress(OSError):
                self._snapshot_bytes = self._snapshot.stat().st_size
            if os.fstat(self._journal_fd).st_size:
                self._compact()  # a fresh journal: nothing torn to append after
            self._last_cache_save = time.monotonic()
            self._warming: threading.Thread | None = None
            self._warm_stop = threading.Event()
        except BaseException:
            self._close_fds()
            raise

    # ------------------------------------------------------------ warming

    def start_warming(self) -> None:
        """Hash the workspace's files into the digest cache on a thread of
        its own, at a low priority, while nobody is connected: a pod's
        workspace is seeded from its image before the sidecar starts, and
        without this its first session's manifest would hash every file
        first. The first ``manifest`` stops it (``WARM_STOP_SECONDS``) and
        keeps what it hashed. Idempotent."""
        if self._warming is not None:
            return
        self._warming = threading.Thread(target=self._warm, name="workspace-warm", daemon=True)
        self._warming.start()

    def _warm(self) -> None:
        stop = self._warm_stop
        with contextlib.suppress(OSError, AttributeError):  # best effort; Linux only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WARM_NICENESS)

        class Stopped(Exception):
            pass

        def check(_entries: list[Entry]) -> None:
            if stop.is_set():
                raise Stopped

        t0 = time.monotonic()
        with self.lock:
            base = self.cache.copy()
        filled = base.copy()
        stopped = False
        found = 0
        try:
            rules = ignore_mod.load(self.root)
            found = len(
                scan(self.root, rules=rules, cache=filled, emit=check, emit_every=WARM_EVERY)
            )
        except Stopped:
            stopped = True
        except Exception as e:  # only a cache: the first manifest hashes instead
            log.warning("workspace.warm_failed", error=str(e), error_type=type(e).__name__)
            return
        with self.lock:
            took = self.cache.merge(filled, base)
            if took and self.root_fd >= 0:  # (not closed meanwhile)
                try:  # so that a restart does not hash again
                    self.cache.save(self.state_dir / "digests.json")
                    self._last_cache_save = time.monotonic()
                except OSError as e:
                    log.warning("workspace.warm_not_saved", error=str(e))
        log.info(
            "workspace.warmed",
            entries=found,
            hashed=took,
            stopped=stopped,
            seconds=round(time.monotonic() - t0, 3),
        )

    def _stop_warming(self) -> None:
        thread = self._warming
        if thread is None or not thread.is_alive():
            return
        self._warm_stop.set()
        thread.join(WARM_STOP_SECONDS)

    def _close_fds(self) -> None:
        for fd in (self._journal_fd, self.staging_fd, self.root_fd):
            if fd >= 0:
                os.close(fd)
        self._journal_fd = self.staging_fd = self.root_fd = -1

    def _check_owner(self, options: WriteOptions) -> WriteOptions:
        """``--owner`` as given, minus what equals our own ids; one clear
        error if we may not chown to it (a non-root sidecar without
        CAP_CHOWN), found by trying it on a scratch file."""
        uid = None if options.uid == os.geteuid() else options.uid
        gid = None if options.gid == os.getegid() else options.gid
        options = WriteOptions(uid, gid, options.file_mode, options.dir_mode)
        if uid is None and gid is None:
            return options
        probe = f"owner-probe-{secrets.token_hex(4)}"
        fd = os.open(
            probe,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            0o600,
            dir_fd=self.staging_fd,
        )
        try:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        except PermissionError as e:
            owner = f"{options.uid if options.uid is not None else ''}" + (
                f":{options.gid}" if options.gid is not None else ""
            )
            raise ConfigError(
                f"--owner {owner}: this sidecar runs as uid {os.geteuid()} gid {os.getegid()} "
                "and may not give files to another owner (that needs root or CAP_CHOWN); "
                "run the sidecar as that user instead, or drop --owner"
            ) from e
        finally:
            os.close(fd)
            os.unlink(probe, dir_fd=self.staging_fd)
        return options

    def _probe_umask(self) -> int | None:
        """The process's umask, if a file created in staging gets the mode
        asked for minus it (no default ACL there); else None, and every
        staged file is chmodded. Read from /proc, never changed."""
        try:
            with open("/proc/self/status", "rb") as f:
                umask = next(int(line.split()[1], 8) for line in f if line.startswith(b"Umask:"))
        except (OSError, StopIteration, ValueError, IndexError):
            return None
        try:
            if "system.posix_acl_default" in os.listxattr(self.staging_fd):
                return None
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
        probe = f"mode-probe-{secrets.token_hex(4)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(probe, flags, 0o666, dir_fd=self.staging_fd)
        except OSError:  # staging fails later, with a clear error, if it must
            return None
        try:
            got = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe, dir_fd=self.staging_fd)
        return umask if got == 0o666 & ~umask else None

    # ------------------------------------------------------------- state

    def _load_ancestors(self) -> dict[str, Ancestor]:
        """The snapshot, then every complete journal line over it (a torn
        last line, from a crash mid-write, is left out)."""
        try:
            raw = json.loads(self._snapshot.read_text())
            out = {p: (int(k), bytes.fromhex(d), t) for p, (k, d, t) in raw["paths"].items()}
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            out = {}
        try:
            lines = self._journal.read_bytes().split(b"\n")
        except FileNotFoundError:
            lines = []
        for line in lines:
            try:
                changes = json.loads(line)
                for p, v in changes.items():
                    if v is None:
                        out.pop(p, None)
                    else:
                        k, d, t = v
                        out[p] = (int(k), bytes.fromhex(d), t)
            except (ValueError, TypeError, AttributeError):
                break
        return out

    def _journal_flush(self) -> None:
        """Append the ancestor changes since the last flush as one line (a
        single write: a crash leaves the line whole or torn, and a torn one
        is ignored). Called before a batch is acknowledged."""
        if not self._unjournaled:
            return
        line = (
            json.dumps(
                {
                    p: None if a is None else [a[0], a[1].hex(), a[2]]
                    for p, a in self._unjournaled.items()
                },
                separators=(",", ":"),
            ).encode()
            + b"\n"
        )
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._journal_fd, view) :]
        except OSError as e:
            raise _io_error("cannot record what sync wrote (.devstack/ancestors.journal)", e) from e
        self._unjournaled.clear()
        self._journal_bytes += len(line)
        if self._journal_bytes > max(JOURNAL_MIN_BYTES, self._snapshot_bytes):
            self._compact()

    def _compact(self) -> None:
        """Write the whole ancestor map as the snapshot (write and rename),
        then empty the journal. A crash in between replays a journal the
        snapshot already holds, which changes nothing."""
        data = json.dumps(
            {
                "version": 1,
                "paths": {p: [k, d.hex(), t] for p, (k, d, t) in self.ancestors.items()},
            },
            separators=(",", ":"),
        )
        tmp = self.state_dir / f"ancestors.json.tmp{os.getpid()}"
        try:
            tmp.write_text(data)
            os.replace(tmp, self._snapshot)
            os.ftruncate(self._journal_fd, 0)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _io_error("cannot save what sync wrote (.devstack/ancestors.json)", e) from e
        self._unjournaled.clear()
        self._snapshot_bytes = len(data)
        self._journal_bytes = 0

    def save_state(self, *, force: bool = True) -> None:
        """Journal the ancestors and persist the digest cache (atomically).
        With ``force`` the journal is folded into the snapshot too; without
        it the cache is saved at most every few seconds."""
        with self.lock:
            if force:
                self._compact()
            else:
                self._journal_flush()
            if self.cache.dirty and (
                force or time.monotonic() - self._last_cache_save >= CACHE_SAVE_SECONDS
            ):
                self.cache.save(self.state_dir / "digests.json")
                self._last_cache_save = time.monotonic()

    def close(self) -> None:
        self._stop_warming()
        try:
            self.save_state()
        finally:
            self._close_fds()

    def _record(self, path: str, entry: Entry | None) -> None:
        if entry is None:
            if self.ancestors.pop(path, None) is None:
                return  # the journal has nothing for it either
            self._unjournaled[path] = None
        else:
            anc = (int(entry.kind), entry.digest, entry.target)
            self.ancestors[path] = anc
            self._unjournaled[path] = anc

    def state(self, path: str, current: Entry) -> SyncState:
        """How ``current``, at ``path`` now, relates to what sync wrote there."""
        anc = self.ancestors.get(path)
        if anc is None:
            return SyncState.UNTRACKED
        same = anc == (int(current.kind), current.digest, current.target)
        return SyncState.SYNCED if same else SyncState.DIRTY

    def _move_ancestors(self, src: str, dst: str) -> None:
        """What sync wrote below folder ``src``, now below ``dst`` (renamed)."""
        for prefix, into in ((dst + "/", None), (src + "/", dst)):
            below = [p for p in self.ancestors if p.startswith(prefix)]
            for p in below:
                anc = self.ancestors.pop(p)
                self._unjournaled[p] = None
                if into is not None:
                    moved = into + p[len(src) :]
                    self.ancestors[moved] = self._unjournaled[moved] = anc

    def manifest(self, rules: IgnoreRules) -> Manifest:
        """The workspace as it is now, each entry with its sync state: one
        scan, ignore rules and states applied as it walks."""
        self._stop_warming()
        with self.lock, gc_paused():
            skipped: list[Skipped] = []
            out = scan(
                self.root, rules=rules, cache=self.cache, ancestors=self.ancestors, skipped=skipped
            )
            self.cache.retain(out)
            # Forget ancestors of paths that are gone (the app deleted them),
            # not of those the scan could not look at (a folder the app made
            # unreadable for a while still holds what it held).
            gone = self.ancestors.keys() - out.keys()
            if gone:
                unseen = tuple(sk.path for sk in skipped)
                below = tuple(f"{u}/" for u in unseen)
                for p in [p for p in self.ancestors if p in gone and not rules.ignored(p)]:
                    if p not in unseen and not p.startswith(below):
                        self._record(p, None)
            try:
                self._journal_flush()
            except WorkspaceIOError as e:  # forgetting can wait for the next flush
                log.warning("state.journal_failed", error=str(e))
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
            digest = self.cache.get(path, stat_key(st))
            if digest is None:
                # Never blocks: the app may have put a FIFO there since.
                opened = open_regular(name, dir_fd=parent)
                if opened is not None:
                    fd, st = opened
                    try:
                        digest = hash_fd(fd)
                    finally:
                        os.close(fd)
                    self.cache.put(path, stat_key(st), digest)
            if digest is not None:
                return Entry(path, Kind.FILE, st.st_size, stat.S_IMODE(st.st_mode), digest)
        raise RefusedError(
            Reason.SPECIAL_FILE,
            f"{path!r} is a device, fifo or socket: the sidecar never touches it",
        )

    def signature_source(self, path: str) -> tuple[int, int, bytes] | None:
        """(fd, size, digest) of a regular file at ``path`` for a delta
        signature, or None. The caller closes the fd."""
        check_relpath(path)
        dirs = _DirCache(self.root_fd)
        try:
            head, name = _split(path)
            try:
                # Never blocks on a FIFO the app made there.
                opened = open_regular(name, dir_fd=dirs.get(head))
            except OSError:
                return None
            if opened is None:
                return None
            fd, st = opened
            try:
                digest = self.cache.get(path, stat_key(st))
                if digest is None:
                    digest = hash_fd(fd)
                    self.cache.put(path, stat_key(st), digest)
            except BaseException:
                os.close(fd)
                raise
            return fd, st.st_size, digest
        finally:
            dirs.close()

    # ------------------------------------------------------------- batches

    def open_batch(self, seq: int, ops: list[StagedOp]) -> Batch:
        return Batch(self, seq, ops)


class _Staging:
    """A write's content while its batch is open: the mutable side of a
    frozen :class:`StagedOp`. Descriptors are opened on demand and closed
    once the content is complete (or another op's content arrives)."""

    __slots__ = (
        "fd",
        "folder",
        "hasher",
        "index",
        "name",
        "old_fd",
        "old_size",
        "op",
        "sealed",
        "staged",
        "written",
    )

    def __init__(self, op: StagedOp, index: int, name: str) -> None:
        self.op = op
        self.index = index  # its place in the batch
        self.name = name  # in staging; "" once renamed into place or discarded
        #: None: ``name`` is in the staging folder itself; else the folder of
        #: the batch's ``_Tree`` that holds it.
        self.folder: str | None = None
        self.fd = -1
        self.staged = False  # the staging file exists
        self.sealed = False  # complete, its mode and owner set, its fd closed
        self.written = 0
        self.hasher = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self.old_fd = -1  # a delta's base, while copy ranges arrive
        self.old_size = 0


class _Tree:
    """The folders a batch creates where nothing is expected, staged whole
    in ``.devstack/staging/<token>.t`` with the files and folders the batch
    creates in them, each to be renamed into place in one step.

    A *root* is a ``mkdir`` expecting nothing whose folder is not itself
    created in the tree; its *members* are the ops after it in the batch
    that create, expecting nothing, a folder or a whole (not delta) file in
    a folder of the tree, each path once. The root's tree folder is named by
    its op index; a member's tree path mirrors its workspace path below the
    root. Symlinks, chmods, renames and deletes are never members: they run
    as ops of their own once their folder is in place, with every check of
    theirs."""

    __slots__ = ("decided", "dirs", "fd", "name", "roots", "where")

    def __init__(self, name: str, fd: int) -> None:
        self.name = name  # in staging
        self.fd = fd
        #: The tree's folders, opened with ``O_NOFOLLOW`` below ``fd``.
        self.dirs = _DirCache(fd)
        #: Root op index -> the root and its members, in op order.
        self.roots: dict[int, list[int]] = {}
        #: Op index -> its path in the tree.
        self.where: dict[int, str] = {}
        #: Outcomes of members whose root went in (or whose content was bad).
        self.decided: dict[int, Outcome] = {}

    @staticmethod
    def plan(ops: Sequence[StagedOp], problems: dict[int, Outcome]) -> dict[int, str]:
        """Op index -> tree path of every root and member (see the class).

        Members go in at their root's place in the batch, ahead of the ops
        between: so a root takes no more members once an op that is not one
        touches its folder, anything in it or above it (the same path again,
        a symlink in it, a rename of a folder above). Ops elsewhere change
        nothing the tree holds. Roots without a file below them are left out
        (a lone ``mkdir`` gains nothing from staging)."""
        folder_of: dict[str, str] = {}  # workspace folder -> its tree path
        root_of: dict[str, int] = {}  # workspace folder in the tree -> its root
        above: dict[str, list[int]] = {}  # folder above an open root -> the roots
        members: dict[int, list[int]] = {}
        closed: set[int] = set()
        where: dict[int, str] = {}

        def close(path: str) -> None:
            """Close every root ``path`` is at or in."""
            for p in (path, *folders_above(path)):
                r = root_of.get(p)
                if r is not None:
                    closed.add(r)

        for i, op in enumerate(ops):
            if i in problems:
                continue  # refused: it changes nothing
            kind, path = op.kind, op.path
            for p in (path, op.from_path) if op.from_path else (path,):
                closed.update(above.get(p, ()))  # at or above an open root
            head, _, name = path.rpartition("/")
            parent = folder_of.get(head)
            candidate = (
                op.expected_absent
                and path not in root_of
                and (kind is _MKDIR or (kind is _WRITE and not op.delta))
            )
            if candidate and parent is not None and root_of[head] not in closed:
                root = root_of[head]
                tree_path = f"{parent}/{name}"
            elif (
                candidate
                and parent is None
                and kind is _MKDIR
                and not any(f in root_of for f in (head, *folders_above(head)))
            ):
                root, tree_path = i, str(i)
                members[i] = []
                for f in folders_above(path):
                    above.setdefault(f, []).append(i)
            else:
                close(path)
                if op.from_path:
                    close(op.from_path)
                continue
            members[root].append(i)
            where[i] = tree_path
            if kind is _MKDIR:
                folder_of[path] = tree_path
                root_of[path] = root
            else:
                root_of.setdefault(path, root)  # (a file: only to close on a repeat)
        keep = {r for r, ms in members.items() if any(ops[m].kind is _WRITE for m in ms)}
        return {i: tp for i, tp in where.items() if int(tp.partition("/")[0]) in keep}


class Batch:
    """A batch being staged. ``commit`` applies it; ``abort`` discards it.

    Each op is a frozen :class:`StagedOp`; ``devstack.core.sync.decide``
    says what to do with it given what the workspace holds, and this class
    executes that. Staging holds at most one staging file and one delta
    base open at a time: a file's descriptor is opened when its content
    starts arriving and closed once it is complete or another file's
    content arrives. Any ``OSError`` while staging discards the whole batch
    and raises ``WorkspaceIOError``."""

    def __init__(self, ws: Workspace, seq: int, ops: list[StagedOp]) -> None:
        self.ws = ws
        self.seq = seq
        self.ops = ops
        self.bytes = 0
        self._dirs = _DirCache(ws.root_fd)
        #: Ops already known not to apply, by index.
        self._problems: dict[int, Outcome] = {}
        #: Each write's staging, by op index (None for other ops).
        self._staging: list[_Staging | None] = [None] * len(ops)
        self._writing: _Staging | None = None  # whose staging fd is open
        self._reading: _Staging | None = None  # whose delta base fd is open
        self._done = False
        #: Names this batch's staged files (with its seq and each op's index).
        self._token = f"{seq}-{secrets.token_hex(6)}"
        self._tree: _Tree | None = None
        problems, staging, dirs, token = self._problems, self._staging, self._dirs, self._token
        try:
            for i, op in enumerate(ops):
                refused = check_op(op)
                if refused is not None:
                    assert refused.code is not None
                    problems[i] = not_applied(op.path, refused.code, refused.why)
                elif op.kind is _WRITE:
                    st = staging[i] = _Staging(op, i, f"{token}-{op.index}")
                    if op.delta:
                        # Only look now (a soft problem if it is not there); the
                        # base is opened when the first copy range arrives.
                        try:
                            st.old_size = self._delta_base(st, keep=False)
                        except (UnsafePathError, ProtocolError, WorkspaceIOError) as e:
                            problems[i] = not_applied(op.path, reason_of(e), str(e))
                        if dirs.retired or len(dirs.fds) > dirs.limit:
                            dirs.trim()
            if not ws.replica:
                self._stage_tree()
        except OSError as e:
            self.abort()
            raise _io_error(f"batch {seq} was discarded, staging failed", e) from e

    def _stage_tree(self) -> None:
        """Make the batch's ``_Tree`` folders, and point its members' staging there."""
        where = _Tree.plan(self.ops, self._problems)
        if not where:
            return
        ws = self.ws
        name = f"{self._token}.t"
        os.mkdir(name, 0o700, dir_fd=ws.staging_fd)
        tree = self._tree = _Tree(name, os.open(name, _O_DIR, dir_fd=ws.staging_fd))
        tree.where = where
        staging = self._staging
        for i, tree_path in where.items():  # op order: a folder before what it holds
            head, _, base = tree_path.rpartition("/")
            if not head:
                tree.roots[i] = [i]
            else:
                tree.roots[int(head.partition("/")[0])].append(i)
            st = staging[i]
            if st is None:  # a folder
                os.mkdir(base, 0o700, dir_fd=self._tree_fd(head))
            else:
                st.folder, st.name = head, base
            self._trim_tree()

    def _tree_fd(self, folder: str) -> int:
        """The descriptor of ``folder`` of the batch's tree (its own
        descriptor for ""); an ``OSError`` if something replaced a folder
        there with a symlink (nothing is written through it)."""
        tree = self._tree
        assert tree is not None
        if not folder:
            return tree.fd
        try:
            return tree.dirs.get(folder)
        except RefusedError as e:
            raise OSError(errno.ELOOP, f"staged folder {folder!r} was replaced") from e

    def _stage_fd(self, st: _Staging) -> int:
        """The folder ``st``'s staged file is in."""
        return self.ws.staging_fd if st.folder is None else self._tree_fd(st.folder)

    def _trim_tree(self) -> None:
        tree = self._tree
        if tree is not None and (tree.dirs.retired or len(tree.dirs.fds) > tree.dirs.limit):
            tree.dirs.trim()

    def _delta_base(self, st: _Staging, *, keep: bool) -> int:
        """Open the regular file a delta copies from; its size. With
        ``keep`` the descriptor stays in ``st.old_fd``."""
        path = st.op.path
        head, name = _split(path)
        try:
            # Never blocks on a FIFO the app made there.
            opened = open_regular(name, dir_fd=self._dirs.get(head))
        except FileNotFoundError as e:
            raise ProtocolError(f"{path!r}: delta against a file that does not exist") from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RefusedError(
                    Reason.THROUGH_SYMLINK, f"{path!r} is a symlink: no delta through it"
                ) from e
            if e.errno in RESOURCE_ERRNOS:
                raise
            raise _io_error(f"{path!r}: cannot read the delta base", e) from e
        if opened is None:
            raise ProtocolError(f"{path!r}: delta base is not a regular file")
        fd, stat_ = opened
        if keep:
            st.old_fd = fd
        else:
            os.close(fd)
        return stat_.st_size

    def _chunked(self, index: int) -> _Staging | None:
        """The staging of op ``index``, a write whose content comes in
        chunks; None if the op will not apply (its chunks are dropped)."""
        if not 0 <= index < len(self.ops):
            raise ProtocolError(f"batch {self.seq}: chunk for op {index}, which does not exist")
        op = self.ops[index]
        if op.kind is not _WRITE or not op.chunked:
            raise ProtocolError(f"batch {self.seq}: chunk for op {index}, which takes no chunks")
        if index in self._problems:
            return None
        st = self._staging[index]
        assert st is not None  # every write without a problem is staged
        return st

    def _open_staged(self, st: _Staging) -> None:
        """Make ``st``'s staging file the one open for writing."""
        if st.fd >= 0:
            return
        if self._writing is not None and self._writing is not st:
            self._close_fd(self._writing)
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        flags |= os.O_APPEND if st.staged else os.O_CREAT | os.O_EXCL
        st.fd = os.open(st.name, flags, 0o600, dir_fd=self._stage_fd(st))
        st.staged = True
        self._writing = st

    def _seal(self, st: _Staging) -> None:
        """Give ``st``'s complete staging file its mode and owner and close
        it: nothing more is written to it, so commit only renames it."""
        entry = st.op.entry
        assert entry is not None
        opts = self.ws.options
        os.fchmod(st.fd, opts.file_perm(entry.mode))
        if opts.uid is not None or opts.gid is not None:
            os.fchown(
                st.fd,
                opts.uid if opts.uid is not None else -1,
                opts.gid if opts.gid is not None else -1,
            )
        self._close_fd(st)
        st.sealed = True

    def _close_fd(self, st: _Staging) -> None:
        if st.fd >= 0:
            fd, st.fd = st.fd, -1
            os.close(fd)
        if self._writing is st:
            self._writing = None

    def _close_base(self, st: _Staging) -> None:
        if st.old_fd >= 0:
            fd, st.old_fd = st.old_fd, -1
            os.close(fd)
        if self._reading is st:
            self._reading = None

    def _append(self, st: _Staging, data: bytes) -> None:
        """Write ``data`` after what is staged, hashing it in the same pass;
        seal the file once it is complete."""
        end = _end_after(st, data)
        if end == st.written:
            return
        if st.fd < 0:
            self._open_staged(st)
        _write_all(st.fd, data)
        st.hasher.update(data)
        st.written = end
        if st.op.entry is not None and end == st.op.entry.size:  # complete
            self._seal(st)
            self._close_base(st)

    def _stage(self, what: str, fn: Any, *args: Any) -> None:
        """Run a staging step; an OSError discards the whole batch."""
        try:
            fn(*args)
        except OSError as e:
            self.abort()
            raise _io_error(f"batch {self.seq} was discarded, {what}", e) from e

    def write(self, index: int, data: bytes) -> None:
        """Append literal content to a staged write."""
        st = self._chunked(index)
        if st is None:
            return
        self._trim_tree()
        self._stage(f"cannot stage {st.op.path!r}", self._append, st, data)
        self.bytes += len(data)

    def copy(self, index: int, offset: int, length: int) -> None:
        """Append a range of the file's current content (delta)."""
        st = self._chunked(index)
        if st is None:
            return
        op = st.op
        if not op.delta:
            raise ProtocolError(f"{op.path!r}: copy range in an op that is not a delta")
        if offset + length > st.old_size:
            raise ProtocolError(f"{op.path!r}: copy range past the end of the current content")
        self._stage(f"cannot stage {op.path!r}", self._copy, st, offset, length)

    def _copy(self, st: _Staging, offset: int, length: int) -> None:
        op = st.op
        if st.old_fd < 0:
            if self._reading is not None:
                self._close_base(self._reading)
            try:
                size = self._delta_base(st, keep=True)
            except (ProtocolError, UnsafePathError, WorkspaceIOError) as e:  # gone meanwhile
                self._problems[st.index] = not_applied(op.path, reason_of(e), str(e))
                self._release(st, unlink=True)
                return
            self._reading = st
            if size < offset + length:
                self._problems[st.index] = not_applied(
                    op.path, Reason.NOT_AS_EXPECTED, f"{op.path!r}: changed during the delta"
                )
                self._release(st, unlink=True)
                return
        pos = offset
        end = offset + length
        while pos < end:
            data = os.pread(st.old_fd, min(1 << 20, end - pos), pos)
            if not data:
                raise ProtocolError(f"{op.path!r}: the current content shrank during the delta")
            self._append(st, data)
            pos += len(data)

    def inline(self, index: int, data: bytes) -> None:
        """Stage the whole (inline) content of write ``index``."""
        if index in self._problems:
            return
        st = self._staging[index]
        if st is None:
            raise ProtocolError(f"batch {self.seq}: content for op {index}, which is no write")
        self._trim_tree()
        self._stage(f"cannot stage {st.op.path!r}", self._append, st, data)
        self.bytes += len(data)

    def inline_many(
        self, items: Sequence[tuple[int, T]], content: Callable[[StagedOp, T], bytes]
    ) -> None:
        """Stage the inline content of many writes, each in one go (its
        staging file open only while it is written): ``content(op, item)``
        gives an op's bytes; a ``ProtocolError`` from it, or content longer
        than declared, is that op's problem. Any ``OSError`` discards the
        whole batch, as in ``inline``."""
        if self._writing is not None:
            self._close_fd(self._writing)
        staging, problems = self._staging, self._problems
        for index, item in items:
            if index in problems:
                continue
            self._trim_tree()
            st = staging[index]
            if st is None:
                raise ProtocolError(f"batch {self.seq}: content for op {index}, which is no write")
            try:
                data = content(st.op, item)
                self._write_whole(st, data)
            except ProtocolError as e:
                problems[index] = not_applied(st.op.path, reason_of(e), str(e))
                continue
            except OSError as e:
                self.abort()
                raise _io_error(
                    f"batch {self.seq} was discarded, cannot stage {st.op.path!r}", e
                ) from e
            self.bytes += len(data)

    def _write_whole(self, st: _Staging, data: bytes) -> None:
        """``_append`` for ``inline_many``: the staging file is open only
        while ``data`` is written (sealed if complete, closed otherwise), and
        one that is complete at once is created with its final mode when the
        umask lets it (no chmod then)."""
        entry = st.op.entry
        assert entry is not None
        end = st.written + len(data)  # _end_after, without a call (this runs once a file)
        if end > entry.size:
            raise ProtocolError(
                f"{st.op.path!r}: more content than the declared {entry.size} bytes"
            )
        if end == st.written:
            return
        ws = self.ws
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        mode = 0o600
        final = False  # created with its final mode: no chmod
        if st.staged:
            flags |= os.O_APPEND
        else:
            flags |= os.O_CREAT | os.O_EXCL
            if end == entry.size and ws.umask is not None:
                perm = ws.options.file_perm(entry.mode)
                if not perm & (~0o777 | ws.umask):
                    mode, final = perm, True
        st.fd = os.open(st.name, flags, mode, dir_fd=self._stage_fd(st))
        st.staged = True
        try:
            _write_all(st.fd, data)
            st.hasher.update(data)
            st.written = end
            if final and ws.options.uid is None and ws.options.gid is None:
                st.sealed = True
            elif end == entry.size:
                self._seal(st)
        finally:
            if st.fd >= 0:  # (never ``_writing``: inline_many let that go)
                fd, st.fd = st.fd, -1
                os.close(fd)

    # ------------------------------------------------------------- commit

    def abort(self) -> None:
        """Discard everything staged (idempotent)."""
        if self._done:
            return
        self._done = True
        for st in self._staging:
            if st is not None:
                with contextlib.suppress(OSError):
                    self._release(st, unlink=True)
        self._dirs.close()
        self._drop_tree()

    def _drop_tree(self) -> None:
        """Remove what is left of the batch's tree (nothing, once every root
        went in; the folders of a root that could not)."""
        tree, self._tree = self._tree, None
        if tree is None:
            return
        tree.dirs.close()
        os.close(tree.fd)
        try:
            os.rmdir(tree.name, dir_fd=self.ws.staging_fd)
        except OSError:
            with contextlib.suppress(OSError):
                shutil.rmtree(tree.name, dir_fd=self.ws.staging_fd)

    def _release(self, st: _Staging, *, unlink: bool) -> None:
        self._close_fd(st)
        self._close_base(st)
        if unlink and st.name:
            name, st.name = st.name, ""
            if st.staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._stage_fd(st))

    def commit(self) -> list[Outcome]:
        """Apply every op in order; each either applies or reports why not.
        What sync wrote is journaled before this returns (and so before the
        batch is acknowledged)."""
        ws = self.ws
        outcomes: list[Outcome] = []
        if self._done:
            raise ProtocolError(f"batch {self.seq} was already committed or discarded")
        problems, staging, dirs, tree = self._problems, self._staging, self._dirs, self._tree
        with ws.lock:
            finished = False
            try:
                for i, op in enumerate(self.ops):
                    if dirs.retired or len(dirs.fds) > dirs.limit:  # (no call: once an op)
                        dirs.trim()
                    st = staging[i]
                    if tree is not None:
                        placed = tree.decided.pop(i, None)
                        if placed is not None:  # its root's folder went in
                            outcomes.append(placed)
                            continue
                    known = problems.get(i) if problems else None
                    if known is not None:
                        outcomes.append(known)
                        if st is not None:
                            self._release(st, unlink=True)
                        continue
                    try:
                        outcome = (
                            tree is not None and i in tree.roots and self._place_tree(i, op)
                        ) or self._apply(op, st)
                    except (UnsafePathError, ProtocolError, OSError) as e:
                        outcome = _failed(op.path, e)
                    finally:
                        if st is not None and (st.fd >= 0 or st.old_fd >= 0 or st.name):
                            with contextlib.suppress(OSError):
                                self._release(st, unlink=True)
                    outcomes.append(outcome)
                    if not outcome.applied and outcome.conflict:
                        ws.counters.conflicts += 1
                finished = True
            finally:
                self._done = True
                if not finished:  # something unexpected broke the loop
                    for left in staging:
                        if left is not None:
                            with contextlib.suppress(OSError):
                                self._release(left, unlink=True)
                self._dirs.close()
                with contextlib.suppress(OSError):
                    self._drop_tree()
            ws.counters.batches_applied += 1
            ws.counters.bytes_received += self.bytes
            ws.save_state(force=False)
        return outcomes

    def _place_tree(self, root: int, op: StagedOp) -> Outcome | None:
        """Rename root ``root``'s staged folder into place, with every member
        whose content is complete and as declared (the others are left out
        and report why), in one ``RENAME_NOREPLACE`` step; then give its
        folders their modes, the deepest first, as ``mkdir`` does. None:
        something is at its place already, or the filesystem cannot refuse
        to replace; then the root and its members go one op at a time, as
        any op does."""
        tree, ws, staging, ops, dirs = self._tree, self.ws, self._staging, self.ops, self._dirs
        assert tree is not None
        members = tree.roots.pop(root)
        if not ws.noreplace:
            return None
        keys: dict[int, StatKey] = {}
        ready: list[int] = []
        for j in members:
            st = staging[j]
            if st is not None:
                problem = self._problems.get(j) or self._verify(st)
                if problem is not None:
                    tree.decided[j] = problem
                    self._release(st, unlink=True)
                    continue
                keys[j] = stat_key(
                    os.stat(st.name, dir_fd=self._stage_fd(st), follow_symlinks=False)
                )
            ready.append(j)
            self._trim_tree()
        head, _, name = op.path.rpartition("/")
        parent = dirs.get(head)
        try:
            placed = rename_noreplace(tree.fd, tree.where[root], parent, name)
        except FileExistsError:
            return None
        if not placed:
            ws.noreplace = False
            return None
        dirs.forget(op.path)
        cache, record, opts = ws.cache, ws._record, ws.options
        for j in reversed(ready):  # op order has a folder before what it holds
            member, st = ops[j], staging[j]
            entry = member.entry
            assert entry is not None
            if st is not None:
                st.name = ""
                st.staged = False
                cache.put(member.path, keys[j], entry.digest)
                ws.counters.files_written += 1
            else:
                where, _, base = member.path.rpartition("/")
                try:
                    self._chmod_chown(
                        dirs.get(where), base, opts.dir_perm(entry.mode), directory=True
                    )
                except (UnsafePathError, OSError) as e:  # as ``mkdir`` would report it
                    tree.decided[j] = _failed(member.path, e)
                    continue
                if dirs.retired or len(dirs.fds) > dirs.limit:
                    dirs.trim()
            record(member.path, entry)
            tree.decided[j] = Outcome(True, member.path)
        return tree.decided.pop(root)

    def _apply(self, op: StagedOp, st: _Staging | None) -> Outcome:
        """Look at the workspace, decide (``devstack.core.sync.decide``),
        and do what the decision says."""
        kind = op.kind
        assert kind is not None  # check_op refused it otherwise
        if kind is _RENAME:
            return self._rename(op)
        ws = self.ws
        path = op.path
        head, _, name = path.rpartition("/")  # _split, without a call
        if creates_without_look(op, replica=ws.replica):
            if kind is _WRITE:
                assert st is not None
                first = self._write_new(st, head, name)
            else:
                first = self._mkdir_new(op, head, name)
            if first is not None:
                return first
        current = ws._current(self._dirs, path)
        state = SyncState.UNTRACKED if current is None else ws.state(path, current)
        decision = decide(op, current, state, replica=ws.replica)
        do = decision.do
        if do is Do.CONFLICT or do is Do.REFUSE:
            assert decision.code is not None
            return not_applied(path, decision.code, f"{path!r}: {decision.why}", decision.actual)
        if do is Do.ADOPT:
            ws._record(path, current)
            return done(path, changed=False)
        parent = self._dirs.get(head)
        step = _Step(op, st, decision, current, state, parent, head, name)
        return _EXECUTE[kind](self, step)

    def _delete(self, s: _Step) -> Outcome:
        ws, dirs, path, current = self.ws, self._dirs, s.op.path, s.current
        if current is None:  # Do.FORGET: gone already
            ws._record(path, None)
            return done(path, changed=False)
        if current.kind == Kind.DIRECTORY:
            try:
                os.rmdir(s.name, dir_fd=s.parent)
            except OSError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    return not_applied(
                        path,
                        Reason.NOT_EMPTY,
                        f"{path!r}: kept, it holds files sync did not create",
                    )
                raise
            dirs.forget(path)
        else:
            os.unlink(s.name, dir_fd=s.parent)
        ws.cache.forget(path)
        ws._record(path, None)
        return done(path)

    def _mkdir(self, s: _Step) -> Outcome:
        entry, current = s.op.entry, s.current
        assert entry is not None
        if s.decision.clear_first:
            assert current is not None
            self._remove(s.parent, s.name, current)
            current = None
        if current is None:
            os.mkdir(s.name, 0o700, dir_fd=s.parent)
        self._chmod_chown(s.parent, s.name, self.ws.options.dir_perm(entry.mode), directory=True)
        self._dirs.forget(s.op.path)
        self.ws._record(s.op.path, entry)
        return done(s.op.path)

    def _chmod(self, s: _Step) -> Outcome:
        entry, current = s.op.entry, s.current
        assert entry is not None and current is not None  # decide: nothing to chmod otherwise
        opts = self.ws.options
        folder = current.kind == Kind.DIRECTORY
        mode = opts.dir_perm(entry.mode) if folder else opts.file_perm(entry.mode)
        self._chmod_chown(s.parent, s.name, mode, directory=folder, chown=False)
        if chmod_tracks(s.state, current, entry):
            self.ws._record(s.op.path, current)
        return done(s.op.path)

    def _symlink(self, s: _Step) -> Outcome:
        ws, dirs, op = self.ws, self._dirs, s.op
        path, entry = op.path, op.entry
        assert entry is not None
        target = entry.target
        try:
            resolve_link(path, target, lambda p: target if p == path else dirs.readlink(p))
        except UnsafePathError as e:
            raise RefusedError(Reason.SYMLINK_ESCAPES, str(e)) from e
        tmp = f"{self._token}-{op.index}.link"
        os.symlink(target, tmp, dir_fd=ws.staging_fd)
        opts = ws.options
        try:
            if opts.uid is not None or opts.gid is not None:
                os.chown(
                    tmp,
                    opts.uid if opts.uid is not None else -1,
                    opts.gid if opts.gid is not None else -1,
                    dir_fd=ws.staging_fd,
                    follow_symlinks=False,
                )
            if s.decision.clear_first:
                assert s.current is not None
                self._remove(s.parent, s.name, s.current)
                dirs.forget(path)
            os.rename(tmp, s.name, src_dir_fd=ws.staging_fd, dst_dir_fd=s.parent)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=ws.staging_fd)
            raise
        if not self._placed(s.parent, s.head):
            os.unlink(s.name, dir_fd=s.parent)
            raise RefusedError(
                Reason.CHANGED_MEANWHILE, f"{path!r}: its folder moved while the link was made"
            )
        ws._record(path, entry)
        return done(path)

    def _write(self, s: _Step) -> Outcome:
        st = s.st
        assert st is not None
        problem = self._verify(st)
        if problem is not None:
            return problem
        if s.decision.clear_first:
            assert s.current is not None
            self._remove(s.parent, s.name, s.current)
            self._dirs.forget(s.op.path)
        os.rename(st.name, s.name, src_dir_fd=self._stage_fd(st), dst_dir_fd=s.parent)
        return self._written(st, s.parent, s.name)

    def _rename(self, op: StagedOp) -> Outcome:
        """Move what sync wrote at ``op.from_path`` to ``op.path``: never
        what the app made or changed (safe mode), never onto something
        (unless a replica), and never a symlink, or a folder holding one,
        to a place where it would lead out. What sync wrote below a moved
        folder is remembered at its new place, so an app's edit in it is
        still a conflict there."""
        ws, dirs, src = self.ws, self._dirs, op.from_path
        head, name = _split(op.path)
        current = ws._current(dirs, src)
        state = SyncState.UNTRACKED if current is None else ws.state(src, current)
        # A source that is not as expected is a conflict before the target is looked at.
        decision = rename_source(op, current, replica=ws.replica)
        if decision is None:
            target_now = ws._current(dirs, op.path)
            decision = decide_rename(op, current, state, target_now, replica=ws.replica)
        if decision.do is not Do.APPLY:
            assert decision.code is not None
            return not_applied(
                op.path, decision.code, f"{op.path!r}: {decision.why}", decision.actual
            )
        assert current is not None
        if current.kind == Kind.SYMLINK:
            self._check_moved_links(src, op.path, [("", current.target)])
        elif current.kind == Kind.DIRECTORY:
            links, longest = self._links_below(src)
            if len(op.path.encode("utf-8", "surrogateescape")) + 1 + longest > MAX_PATH_BYTES:
                raise UnsafePathError(
                    f"rename {src!r} -> {op.path!r}: what it holds would lie deeper than "
                    f"{MAX_PATH_BYTES} bytes, where sync cannot read it back"
                )
            self._check_moved_links(src, op.path, links)
        src_head, src_name = _split(src)
        src_fd, dst_fd = dirs.get(src_head), dirs.get(head)
        os.rename(src_name, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        if current.kind != Kind.FILE and not self._placed(dst_fd, head):
            os.rename(name, src_name, src_dir_fd=dst_fd, dst_dir_fd=src_fd)
            raise RefusedError(
                Reason.CHANGED_MEANWHILE,
                f"rename {src!r} -> {op.path!r}: the folder moved meanwhile",
            )
        dirs.forget(op.path)
        if current.kind == Kind.DIRECTORY:
            dirs.forget(src)
            ws._move_ancestors(src, op.path)
        ws.cache.forget(src)
        ws._record(src, None)
        ws._record(op.path, current)
        return done(op.path)

    def _placed(self, fd: int, folder: str) -> bool:
        """Whether ``fd`` is the folder at ``folder`` now, looked up afresh
        (the check of a symlink's final place after it was put there)."""
        if not folder:
            return fd == self.ws.root_fd
        fresh = _DirCache(self.ws.root_fd)
        try:
            a, b = os.fstat(fd), os.fstat(fresh.get(folder))
        except (OSError, UnsafePathError):
            return False
        finally:
            fresh.close()
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _verify(self, st: _Staging) -> Outcome | None:
        """Why a write's staged content may not go in place (None: it may),
        its staging file created (an empty file's) and sealed."""
        op = st.op
        entry = op.entry
        assert entry is not None
        if st.written != entry.size or st.hasher.digest() != entry.digest:  # else, at once
            problem = content_problem(op.path, entry, st.written, st.hasher.digest())
            if problem is not None:
                return not_applied(op.path, *problem)
        if not st.sealed:  # an empty file: no content created it yet
            self._open_staged(st)
            self._seal(st)
        return None

    def _written(self, st: _Staging, parent: int, name: str) -> Outcome:
        """Record a write that was renamed into place."""
        op = st.op
        assert op.entry is not None
        ws = self.ws
        st.name = ""
        st.staged = False
        stat_ = os.stat(name, dir_fd=parent, follow_symlinks=False)
        ws.cache.put(op.path, stat_key(stat_), op.entry.digest)
        ws._record(op.path, op.entry)
        ws.counters.files_written += 1
        return Outcome(True, op.path)

    def _write_new(self, st: _Staging, head: str, name: str) -> Outcome | None:
        """A write where nothing is expected: renamed into place only if
        nothing is there, in one step (no look first, no window between the
        look and the rename). None: something is there, its content is not
        ready, or the filesystem cannot; the general path decides then."""
        ws = self.ws
        if not ws.noreplace or self._verify(st) is not None:
            return None
        parent = self._dirs.get(head)
        try:
            if not rename_noreplace(self._stage_fd(st), st.name, parent, name):
                ws.noreplace = False
                return None
        except FileExistsError:
            return None
        return self._written(st, parent, name)

    def _mkdir_new(self, op: StagedOp, head: str, name: str) -> Outcome | None:
        """A folder where nothing is expected: made without a look first
        (``mkdir`` refuses if anything is there). None: something is there;
        the general path decides then."""
        assert op.entry is not None
        parent = self._dirs.get(head)
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            return None
        self._chmod_chown(parent, name, self.ws.options.dir_perm(op.entry.mode), directory=True)
        self._dirs.forget(op.path)
        self.ws._record(op.path, op.entry)
        return done(op.path)

    def _links_below(self, folder: str) -> tuple[list[tuple[str, str]], int]:
        """(path relative to ``folder``, target) of every symlink under it,
        and the length in bytes of the longest relative path there. A folder
        below it that cannot be listed or opened refuses the move
        (``UnsafePathError``): a link the sidecar cannot see is not moved."""

        def refuse(e: OSError) -> NoReturn:
            where = f"{folder}/{e.filename}" if isinstance(e.filename, str) else folder
            raise RefusedError(
                Reason.UNREADABLE,
                f"{folder!r}: cannot read {where!r} ({e.strerror}) to recheck the symlinks "
                "in it, so it is not moved",
            ) from e

        out: list[tuple[str, str]] = []
        longest = 0
        walk = os.fwalk(".", dir_fd=self._dirs.get(folder), follow_symlinks=False, onerror=refuse)
        for dirpath, dirnames, filenames, dfd in walk:
            rel = "" if dirpath == "." else dirpath.removeprefix("./")
            for n in (*dirnames, *filenames):
                path = f"{rel}/{n}" if rel else n
                longest = max(longest, len(path.encode("utf-8", "surrogateescape")))
                try:
                    target = os.readlink(n, dir_fd=dfd)
                except OSError as e:
                    if e.errno in (errno.EINVAL, errno.ENOENT):  # not a symlink, or gone
                        continue
                    # a folder the sidecar may list but not search (no x bit):
                    # what it holds cannot be read, so it is not moved
                    e.filename = path
                    refuse(e)
                out.append((path, target))
        return out, longest

    def _check_moved_links(self, src: str, dst: str, links: list[tuple[str, str]]) -> None:
        """Raise ``UnsafePathError`` unless every symlink in ``links`` (paths
        relative to ``src``) passes the rules for a link sync creates at its
        place once ``src`` is renamed to ``dst``: judged before the rename,
        as if it had happened."""
        dirs = self._dirs

        def readlink(p: str) -> str | None:
            if p == dst or p.startswith(dst + "/"):
                return dirs.readlink(src + p[len(dst) :])
            if p == src or p.startswith(src + "/"):
                return None  # gone once moved
            return dirs.readlink(p)

        for rel, target in links:
            new = f"{dst}/{rel}" if rel else dst
            try:
                check_link_target(new, target)
                resolve_link(new, target, readlink)
            except UnsafePathError as e:
                raise RefusedError(Reason.SYMLINK_ESCAPES, f"rename {src!r} -> {dst!r}: {e}") from e

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
        """Set the mode (and, with ``--owner``, the owner) of the folder or
        regular file at ``name``, never through a symlink the app swapped in
        meanwhile, and never blocking on a fifo: it is opened without
        following a final symlink and checked to be that kind first. One the
        sidecar may not read is changed through an ``O_PATH`` descriptor."""
        kind = os.O_DIRECTORY if directory else 0
        path_only = False
        try:
            fd = os.open(name, _O_READ | os.O_NONBLOCK | kind, dir_fd=parent)
        except PermissionError:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | kind, dir_fd=parent)
            path_only = True
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RefusedError(
                    Reason.CHANGED_MEANWHILE, f"{name!r} is no longer what sync made: not changed"
                ) from e
            raise
        try:
            if not (stat.S_ISDIR if directory else stat.S_ISREG)(os.fstat(fd).st_mode):
                raise RefusedError(
                    Reason.CHANGED_MEANWHILE, f"{name!r} is no longer what sync made: not changed"
                )
            opts = self.ws.options
            uid = -1 if opts.uid is None else opts.uid
            gid = -1 if opts.gid is None else opts.gid
            owned = chown and (uid != -1 or gid != -1)
            if path_only:  # an O_PATH descriptor takes no fchmod: its /proc link does
                os.chmod(f"/proc/self/fd/{fd}", mode)
                if owned:
                    os.chown(f"/proc/self/fd/{fd}", uid, gid)
            else:
                os.fchmod(fd, mode)
                if owned:
                    os.fchown(fd, uid, gid)
        finally:
            os.close(fd)


class _Step(NamedTuple):
    """What executing one decided op needs: the op, its staging (a
    write's), the decision, what the workspace holds at its path and in
    which state, and its folder's descriptor, path and its own name there."""

    op: StagedOp
    st: _Staging | None
    decision: Decision
    current: Entry | None
    state: SyncState
    parent: int
    head: str
    name: str


#: How each kind of op is executed once decided (a rename decides and
#: executes in ``Batch._rename``).
_EXECUTE: dict[OpKind, Callable[[Batch, _Step], Outcome]] = {
    OpKind.DELETE: Batch._delete,
    OpKind.MKDIR: Batch._mkdir,
    OpKind.CHMOD: Batch._chmod,
    OpKind.SYMLINK: Batch._symlink,
    OpKind.WRITE: Batch._write,
}


@contextlib.contextmanager
def open_workspace(root: Path, **kwargs: object) -> Iterator[Workspace]:
    ws = Workspace(root, **kwargs)  # type: ignore[arg-type]
    try:
        yield ws
    finally:
        ws.close()


def _failed(path: str, e: UnsafePathError | ProtocolError | OSError) -> Outcome:
    """The outcome of an op at ``path`` that raised ``e`` while applied."""
    if isinstance(e, OSError):
        return not_applied(path, Reason.IO_ERROR, f"{path!r}: {e.strerror or e}")
    return not_applied(path, reason_of(e), str(e))


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a short write is rare)."""
    n = os.write(fd, data)
    if n < len(data):
        view = memoryview(data)[n:]
        while view:
            view = view[os.write(fd, view) :]


def _end_after(st: _Staging, data: bytes) -> int:
    """Where ``st``'s staged content ends once ``data`` is appended; a
    :class:`ProtocolError` if that passes the size the laptop declared."""
    entry = st.op.entry
    assert entry is not None
    end = st.written + len(data)
    if end > entry.size:
        raise ProtocolError(f"{st.op.path!r}: more content than the declared {entry.size} bytes")
    return end
