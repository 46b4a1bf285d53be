"""The laptop side of a sync session: the I/O shell around the pure sync
modules (network and filesystem I/O only).

One round: receive the sidecar's manifest, scan the local tree (digests
cached by stat), ``plan`` the difference, send it in numbered batches with a
window of unacknowledged batches, and record what the sidecar applied.
Watch events only say which paths to look at again; every round ends with
the same comparison, so a lost event, a reconnect or a laptop waking from
sleep converge by the same path as the first sync.

The decisions live in pure modules, each tested with tables:
``devstack.core.plan`` (what to send), ``devstack.core.sync.batching``
(which changes go in which batch), ``devstack.core.sync.acks`` (what an
acknowledgement means for the picture of the workspace) and
``devstack.core.sync.retry`` (what a failed session means). This module
reads files, builds the protobuf messages and runs the gRPC stream.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import getpass
import hashlib
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable

import grpc

from devstack.cli.channel import classify, dial, open_channel, translate
from devstack.core import ignore as ignore_mod
from devstack.core.errors import (
    DevstackError,
    PermanentError,
    StaleViewError,
    TemporaryError,
    UnreachableError,
)
from devstack.core.logging import get_logger
from devstack.core.manifest import (
    DigestCache,
    Entry,
    Kind,
    Manifest,
    StatKey,
    SyncState,
    gc_paused,
    hash_bytes,
    hash_fd,
    make_entry,
    open_regular,
    scan,
)
from devstack.core.paths import folders_above
from devstack.core.plan import Action, Change, Plan, plan
from devstack.core.protocol import (
    COMPRESS_MODES,
    INLINE_MAX,
    MAX_CHUNK_BYTES,
    PROTOCOL_VERSION,
    ContentEncoder,
    StreamCompressor,
    entry_from_pb,
    fill_entry_pb,
    read_manifest_page,
)
from devstack.core.sync.acks import Ack, Ledger, Problem, Stats
from devstack.core.sync.batching import (
    BATCH_BYTES,
    BATCH_OPS,
    WINDOW,
    Carry,
    Limits,
    Packed,
    carry,
    interleave,
    pack,
    wants_delta,
)
from devstack.core.sync.model import Reason
from devstack.core.sync.retry import GiveUp, Retrier, Retry, RetryPolicy, failure_of
from devstack.core.sync.retry import Session as Attempt
from devstack.core.sync.wire import OP_KIND_TO_PB, problem_reason
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc

if TYPE_CHECKING:
    from devstack.core import delta as deltas

__all__ = [
    "BATCH_BYTES",
    "BATCH_OPS",
    "CACHE_SAVE_SECONDS",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_SYNCED",
    "EXIT_OK",
    "EXIT_UNSETTLED",
    "ONCE_ROUNDS",
    "WINDOW",
    "Reconnects",
    "Reporter",
    "RetryPolicy",
    "Stats",
    "Syncer",
    "Target",
    "describe_reload",
]

#: The session-wide compressions ``connect`` offers in Hello, best first.
STREAM_OFFERED: Final[tuple[pb.Compression.ValueType, ...]] = (pb.COMPRESSION_ZSTD_STREAM,)

log = get_logger("connect")
#: The end-of-stream sentinel of grpc.aio calls (missing from grpc-stubs).
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009

#: ``--once``: full rounds (scan, plan, send) before giving up on a tree that
#: keeps changing.
ONCE_ROUNDS = 5
#: Seconds between saves of the digest cache while connected (it is also
#: saved after the first round of each session and at exit).
CACHE_SAVE_SECONDS = 10.0

#: Exit codes of ``devstack connect`` (2, a clear error, comes from the CLI edge).
EXIT_OK = 0
#: ``--once``: conflicts or rejected paths remain.
EXIT_NOT_SYNCED = 3
#: ``--once``: the tree was still changing after ``ONCE_ROUNDS`` rounds.
EXIT_UNSETTLED = 4
#: ``--once`` stopped by Ctrl-C before the trees matched (SIGTERM: 143, from the CLI edge).
EXIT_INTERRUPTED = 130

_T = TypeVar("_T")


class Reporter(Protocol):
    """Where progress and events go (the terminal UI, or a test).
    ``round_started(initial=True)``: the first round of a session (after a
    reconnect, a resync)."""

    def round_started(self, plan: Plan, *, initial: bool) -> None: ...

    def progress(self, files: int, nbytes: int) -> None: ...

    def round_finished(self, stats: Stats) -> None: ...

    def event(self, event: pb.Event) -> None: ...

    def note(self, text: str) -> None: ...


@runtime_checkable
class Reconnects(Protocol):
    """A reporter that shows reconnecting as it goes (the terminal's live
    line); any other gets one ``note`` per attempt."""

    def reconnecting(self, retry: Retry) -> None: ...


@dataclass(frozen=True)
class Target:
    """Where the sidecar is. ``workspace``: the name the sidecar must serve
    (empty: any). The token never shows in a repr or a log."""

    address: str
    token: str = field(repr=False)
    authority: str | None = None
    tls: bool = False
    workspace: str = ""


@dataclass
class _Outgoing:
    change: Change
    #: The op, a part of the batch message being built (filled in place).
    op: pb.Op
    chunked: bool = False
    # (offset, length) ranges to stream from the local file, or delta steps
    literal: list[tuple[int, int]] = field(default_factory=list)
    steps: list[deltas.Copy | deltas.Literal] = field(default_factory=list)
    #: Inline content, raw for now, that goes through the session's stream
    #: when the batch is sent (``Syncer._squeeze``).
    squeeze: bool = False


def default_cache_path(root: Path, target: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "devstack"
    key = hashlib.blake2b(f"{root}\0{target}".encode(), digest_size=8).hexdigest()
    return base / f"manifest-{key}.json"


def client_id() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()}/{os.getpid()}"


def _off_loop(fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
    """Run ``fn(*args)`` on a daemon thread of its own. Unlike
    ``asyncio.to_thread``, nothing waits for it at exit: a scan or a hash
    still running when ``connect`` is stopped does not hold the process."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[_T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(result)
        else:
            fut.set_exception(error)

    def work() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as e:  # handed to whoever awaits
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="connect-io", daemon=True).start()
    return fut


class _Segments:
    """The first scan's entries as it finds them (``scan``'s ``emit``, on
    the scanning thread), for a first round into an empty workspace to send
    while the scan goes on. ``None`` ends them; a scan that fails ends them
    too (its error comes from the scan's own future)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[list[Entry] | None] = asyncio.Queue()
        #: No more segments: the scan returned (or failed).
        self.ended = False

    def feed(self, entries: list[Entry] | None) -> None:
        """Hand over a segment (``None``: the end), from any thread."""
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self._loop.call_soon_threadsafe(self._queue.put_nowait, entries)

    async def next(self, *, wait: bool) -> list[Entry] | None:
        """The next segment; None at the end, or (``wait`` false) when none
        came yet."""
        if self.ended:
            return None
        if wait:
            got = await self._queue.get()
        else:
            try:
                got = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        if got is None:
            self.ended = True
        return got


class _Feed:
    """The changes of a first round into an empty workspace, planned from
    the scan's segments as they come (every entry is a create, so a
    segment's plan needs nothing but the segment).

    Over a slow link the large files are most of the round, so they go out
    from the first batches on, each after a batch of small ones
    (``release``), while the sidecar applies the small ones between them:
    every segment already found is planned at once, and a large file takes
    the folders it is in (those not sent yet) along with it. When the scan
    ends, the large files still waiting go spread among the changes not
    sent yet, as ``interleave`` spreads them in any round."""

    def __init__(
        self,
        segments: _Segments,
        planner: Callable[[Manifest], Plan],
        ended: Callable[[list[Change]], None],
    ) -> None:
        self._segments = segments
        self._planner = planner
        self._ended = ended
        self._large: collections.deque[Change] = collections.deque()
        #: Every change planned so far, in plan order.
        self.planned: list[Change] = []
        self.done = False

    def full(self, changes: list[Change], i: int, limits: Limits) -> bool:
        """Whether the batch at ``changes[i]`` can be packed now: it is
        full (a large file ends a batch), or nothing more will come."""
        if self.done:
            return True
        packed = pack(changes, i, limits)
        ends_large = bool(packed.items) and packed.items[-1][1] is Carry.CHUNKED
        return packed.end < len(changes) or ends_large

    def release(self, changes: list[Change], end: int, packed: Packed | None = None) -> None:
        """After a batch of small changes was packed (up to ``end``), put
        the first waiting large file next, after the folders it is in that
        are not sent yet (moved up from their place; their content stays
        where it is, after them)."""
        if self.done or not self._large:
            return
        if packed is not None and packed.items[-1][1] is Carry.CHUNKED:
            return  # a large file just went: small ones next
        big = self._large.popleft()
        above = set(folders_above(big.path))
        moved: list[Change] = []
        if above:
            for k in range(len(changes) - 1, end - 1, -1):
                ch = changes[k]
                if ch.action is Action.MKDIR and ch.path in above:
                    moved.append(changes.pop(k))
        moved.sort(key=lambda ch: ch.path.count("/"))  # a folder before what it holds
        changes[end:end] = [*moved, big]

    async def top_up(self, changes: list[Change], i: int, limits: Limits, *, wait: bool) -> None:
        """Plan every segment already here, and wait for more (``wait``)
        until the batch at ``i`` is full or the scan ended."""
        full = False
        while not self.done:
            full = full or self.full(changes, i, limits)  # more changes keep it full
            if not full and i == len(changes) and self._large:
                self.release(changes, i)  # nothing else to send: it goes now
                continue
            seg = await self._segments.next(wait=wait and not full)
            if seg is None:
                if not self._segments.ended:
                    return  # none here yet
                self.done = True
                waiting = list(self._large)
                self._large.clear()
                # A large file released next (after the folders moved up with
                # it) keeps its place; the rest is spread.
                head = i
                for k in range(i, len(changes)):
                    if carry(changes[k], limits.inline_max) is Carry.CHUNKED:
                        head = k + 1
                    if changes[k].action is not Action.MKDIR:
                        break
                changes[head:] = interleave([*changes[head:], *waiting], limits.inline_max)
                self._ended(self.planned)
                return
            planned = self._planner({e.path: e for e in seg}).changes
            self.planned += planned
            for ch in planned:
                if carry(ch, limits.inline_max) is Carry.CHUNKED:
                    self._large.append(ch)
                else:
                    changes.append(ch)


def _open_regular(root: str, path: str) -> tuple[int, os.stat_result] | None:
    """An fd on ``root/path`` (never through a final symlink, never blocking
    on a fifo swapped in since the scan) and its stat, or None if it
    vanished or is not a regular file."""
    try:
        return open_regular(f"{root}/{path}")
    except OSError:
        return None


def _read_inline(root: str, entry: Entry) -> tuple[Entry, bytes, StatKey | None] | None:
    """Content of a small file, its entry as actually read (the file may
    have changed since it was scanned, or the scan deferred its digest) and
    the stat key that digest belongs to (None if the file grew while it was
    read). None if it vanished or changed kind."""
    opened = _open_regular(root, entry.path)
    if opened is None:
        return None
    fd, st = opened
    try:
        want = st.st_size + 1
        data = os.read(fd, want)
        if len(data) == want:  # it grew since: read to the end
            chunks = [data]
            while block := os.read(fd, 1 << 20):
                chunks.append(block)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    digest = hash_bytes(data)
    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if digest != entry.digest or len(data) != entry.size:
        entry = make_entry(
            (entry.path, entry.kind, len(data), st.st_mode & 0o7777, digest, "", entry.state)
        )
    return entry, data, key if len(data) == st.st_size else None


def _hash_now(root: str, entry: Entry) -> tuple[Entry, StatKey] | None:
    """The entry of a file whose digest the scan deferred, hashed now, and
    its stat key; None if it vanished, changed kind or cannot be read."""
    opened = _open_regular(root, entry.path)
    if opened is None:
        return None
    fd, st = opened
    try:
        digest = hash_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return entry._replace(size=st.st_size, mode=stat.S_IMODE(st.st_mode), digest=digest), key


class _Session:
    """One open Session stream."""

    def __init__(self, call: Any, reporter: Reporter, stats: Stats, target: str) -> None:
        self.call = call
        self.target = target
        self.reporter = reporter
        self.stats = stats
        self.acks: dict[int, asyncio.Future[pb.Ack]] = {}
        self.sigs: dict[str, list[asyncio.Future[pb.Signature]]] = {}
        self.seq = 0
        self.window = asyncio.Semaphore(WINDOW)
        self.reader: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None

    async def read_loop(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is _EOF:
                    raise UnreachableError("the sidecar closed the session")
                which = msg.WhichOneof("msg")
                if which == "ack":
                    fut = self.acks.pop(msg.ack.seq, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg.ack)
                elif which == "signature":
                    waiters = self.sigs.get(msg.signature.path)
                    if waiters:
                        waiters.pop(0).set_result(msg.signature)
                elif which == "event":
                    ev = msg.event
                    if ev.kind.startswith("reload") or ev.kind == "process-exited":
                        self.stats.last_reload = describe_reload(ev)
                    log.info(
                        "connect.event",
                        kind=ev.kind,
                        message=ev.message,
                        paths=list(ev.paths),
                        reason=ev.reason,
                        exit_code=ev.exit_code,
                        output_tail=ev.output_tail,
                        reload_id=ev.reload_id,
                    )
                    self.reporter.event(ev)
        except BaseException as e:
            self.failed = e
            waiting: list[asyncio.Future[Any]] = [*self.acks.values()]
            for waiters in self.sigs.values():
                waiting.extend(waiters)
            for f in waiting:
                if not f.done():
                    f.set_exception(_as_devstack(e, self.target))
                    f.exception()  # whoever waits raises it; nobody else must log it
            if isinstance(e, asyncio.CancelledError):
                raise

    async def signature(self, path: str) -> pb.Signature:
        fut: asyncio.Future[pb.Signature] = asyncio.get_running_loop().create_future()
        self.sigs.setdefault(path, []).append(fut)
        await self.send(pb.ClientMessage(signature_request=pb.SignatureRequest(path=path)))
        return await fut

    async def send(self, msg: pb.ClientMessage) -> None:
        """Write to the stream; if it has ended, raise why."""
        try:
            await self.call.write(msg)
        except (asyncio.InvalidStateError, grpc.RpcError) as e:
            # A failed write only knows the stream is gone ("RPC already
            # finished", "Internal error from Core"); the reader gets the
            # sidecar's own status from the trailers.
            raise await self.why_ended(e) from e

    async def why_ended(self, e: BaseException) -> BaseException:
        if self.reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self.reader), 5)
            if self.failed is not None and not isinstance(self.failed, asyncio.CancelledError):
                return _as_devstack(self.failed, self.target)
        return await _ended(self.call, e, self.target)


async def _ended(call: Any, e: BaseException, target: str) -> BaseException:
    """The error for a call that failed with ``e``: its final status."""
    if isinstance(e, grpc.RpcError):
        return translate(e, target)
    return classify(await call.code(), await call.details() or "", target)


async def _write(call: Any, msg: pb.ClientMessage, target: str) -> None:
    """Write outside a session (the Hello)."""
    try:
        await call.write(msg)
    except asyncio.InvalidStateError as e:  # grpc.aio: "RPC already finished"
        raise await _ended(call, e, target) from e


def describe_reload(ev: pb.Event) -> str:
    """The status line's "last reload" for a reload event."""
    if ev.kind == "reload-finished":
        return f"ok in {ev.duration_ms} ms"
    if ev.kind == "reload-started":
        return "reloading..."
    return f"{ev.reason or 'failed'} (exit {ev.exit_code})"


def _as_devstack(e: BaseException, target: str) -> BaseException:
    if isinstance(e, grpc.RpcError):
        return translate(e, target)
    if isinstance(e, DevstackError | asyncio.CancelledError):
        return e
    return UnreachableError(f"session failed: {e}")


def _problem_from_pb(p: pb.Problem) -> Problem:
    """A wire ``Problem``: its reason (the enum, or from a sidecar that
    predates it the ``reason`` string; one this client does not know is an
    op it cannot apply, ``BAD_OP``), message, fix and what the workspace
    holds."""
    reason = problem_reason(p) or Reason.BAD_OP
    actual = entry_from_pb(p.actual) if p.HasField("actual") and p.actual.kind else None
    return Problem(p.path, reason, p.message, p.fix, actual)


def _ack_from_pb(ack: pb.Ack) -> Ack:
    return Ack(ack.seq, tuple(map(_problem_from_pb, ack.problems)), ack.problems_omitted)


def _failure(e: BaseException, target: str) -> DevstackError:
    """One of devstack's errors for what ended a session."""
    if isinstance(e, grpc.RpcError):
        return translate(e, target)
    if isinstance(e, DevstackError):
        return e
    return UnreachableError(str(e))


class Syncer:
    """Keeps a sidecar's workspace equal to a local tree."""

    def __init__(
        self,
        root: Path,
        target: Target,
        *,
        reporter: Reporter,
        force: bool = False,
        cache_path: Path | None = None,
        debounce_ms: int = 50,
        step_ms: int = 2,
        rescan_interval: float = 30.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        compress: str = "auto",
    ) -> None:
        if not root.is_dir():
            raise PermanentError(f"{root} is not a directory")
        if compress not in COMPRESS_MODES:
            raise PermanentError(f"--compress {compress}: use one of {', '.join(COMPRESS_MODES)}")
        self.root = root.resolve()
        self._root_s = os.fspath(self.root)
        self.target = target
        self.reporter = reporter
        self.force = force
        #: ``auto``, ``always`` or ``never`` (see ``ContentEncoder``).
        self.compress = compress
        self.cache_path = cache_path or default_cache_path(self.root, target.address)
        self._cache: DigestCache | None = None
        #: The root's rules (defaults, .gitignore, .devstackignore): sent in Hello.
        self.rules = ignore_mod.load(self.root)
        #: ``rules`` plus every nested .gitignore, scoped: what the scan left
        #: out, so the plan never touches it in the workspace either.
        self.view = self.rules
        #: The nested .gitignore files the last scans applied (folder -> lines).
        self._nested: dict[str, tuple[str, ...]] = {}
        self._view_key: tuple[ignore_mod.IgnoreRules, dict[str, tuple[str, ...]]] | None = None
        #: Local files whose digest the last full scan deferred (new small
        #: files, hashed as they are read to be sent).
        self._deferred: set[str] = set()
        self._reader_pool: concurrent.futures.ThreadPoolExecutor | None = None
        #: Files and bytes sent before the round's totals were told (a
        #: streamed first round tells them when its scan ends); None: told.
        self._early: list[int] | None = None
        self.local: Manifest = {}
        #: The picture of the workspace, the held paths and the stats.
        self.ledger = Ledger()
        self.stats: Stats = self.ledger.stats
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.rescan_interval = rescan_interval
        self.connect_timeout = connect_timeout
        self.retry = retry or RetryPolicy()
        self.replica = False
        self.modes = True
        #: Largest chunk payload and inline file: ours, or the sidecar's if smaller.
        self.chunk_bytes = MAX_CHUNK_BYTES
        self.inline_max = INLINE_MAX
        #: The session's compressed stream (``COMPRESSION_ZSTD_STREAM``), if
        #: the sidecar chose one: a new one for each session.
        self.stream: StreamCompressor | None = None
        self._hints: asyncio.Queue[set[str] | None] = asyncio.Queue()
        self._stop = asyncio.Event()
        #: The run ended because :meth:`stop` was called (not because it was done).
        self.stopped = False
        self._session_task: asyncio.Task[int] | None = None
        #: Whether the current session completed a round (the trees matched).
        self._round_done = False
        self._cache_saved_at: float | None = None
        #: Set while no thread scans, hashes or reads the tree (they update
        #: the cache); ``_busy`` counts them.
        self._idle = threading.Event()
        self._idle.set()
        self._busy = 0
        self._busy_lock = threading.Lock()

    @property
    def remote(self) -> Manifest:
        """What the workspace holds, as far as the laptop knows."""
        return self.ledger.remote

    @remote.setter
    def remote(self, value: Manifest) -> None:
        self.ledger.remote = value

    @property
    def held(self) -> dict[str, tuple[Entry | None, Entry | None]]:
        """Conflicts and refusals left alone until either side changes."""
        return self.ledger.held

    @property
    def cache(self) -> DigestCache:
        """The digest cache, loaded on first use (by the first scan, on its
        thread, while the channel opens)."""
        if self._cache is None:
            self._cache = DigestCache.load(self.cache_path)
        return self._cache

    def stop(self) -> None:
        """Stop now, in whatever state: the session in flight is cancelled
        and its channel closed (the sidecar discards a batch that was not
        committed), a backoff ends, and no scan or hash still running is
        waited for."""
        self._stop.set()
        self._hints.put_nowait(None)
        task = self._session_task
        if task is not None and not task.done():
            task.cancel()

    def _cache_thread(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        """``fn`` (a scan, hash or read that updates the cache) on a daemon
        thread; ``_idle`` is clear until every such thread returned."""

        def working() -> _T:
            try:
                return fn(*args)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    if not self._busy:
                        self._idle.set()

        with self._busy_lock:
            self._busy += 1
            self._idle.clear()
        return _off_loop(working)

    # ------------------------------------------------------------ top level

    async def run(self, *, once: bool) -> int:
        """Sync until stopped (or, with ``once``, until the trees match).
        Returns the exit code: ``EXIT_OK``, ``EXIT_NOT_SYNCED``,
        ``EXIT_UNSETTLED``, or when stopped, ``EXIT_OK`` while watching and
        ``EXIT_INTERRUPTED`` under ``once`` (``stopped`` is then true).
        Raises ``PermanentError`` for what retrying cannot fix, and per
        ``RetryPolicy`` gives up on the rest."""
        watcher = None if once else asyncio.create_task(self._watch())
        retrier = Retrier(self.retry, once=once)
        self.ledger.quiet = once  # --once lists what is not in sync at the end
        try:
            while not self._stop.is_set():
                self._round_done = False
                started = time.monotonic()
                task = asyncio.create_task(self._connected(once=once))
                self._session_task = task
                try:
                    code = await task
                    # Watching, a session ends without an error only when stopped.
                    self.stopped = not once and self._stop.is_set()
                    return code
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if self._stop.is_set() and (current is None or not current.cancelling()):
                        break
                    raise
                except (TemporaryError, grpc.RpcError, OSError) as e:
                    err = _failure(e, self.target.address)
                    attempt = Attempt(
                        connected=self.stats.connected,
                        round_done=self._round_done,
                        seconds=time.monotonic() - started,
                    )
                    self.stats.connected = False
                    decision = retrier.decide(err, attempt)
                    if isinstance(decision, GiveUp):
                        if decision.error is e:
                            raise
                        raise decision.error from e
                    if retrier.ever_connected:  # before that, the one line is the final error
                        self._tell(decision)
                    log.info(
                        "connect.retry",
                        delay=decision.delay,
                        error=str(err),
                        failure=failure_of(err).value,
                        attempt=retrier.attempts,
                    )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), decision.delay)
                finally:
                    self._session_task = None
            self.stopped = True
            return EXIT_INTERRUPTED if once else EXIT_OK
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if self._reader_pool is not None:
                self._reader_pool.shutdown(wait=False)
                self._reader_pool = None
            self._save_cache()

    def _tell(self, retry: Retry) -> None:
        if isinstance(self.reporter, Reconnects):
            self.reporter.reconnecting(retry)
        else:
            self.reporter.note(retry.legacy_line)

    def _save_cache(self) -> None:
        if not self._idle.is_set():
            return  # a thread still updates it (stopped mid-scan): the last save stands
        with contextlib.suppress(OSError):
            if self._cache is not None and self._cache.dirty:
                self._cache.save(self.cache_path)
                self._cache_saved_at = time.monotonic()

    async def _save_cache_now_and_then(self) -> None:
        """Save the digest cache (atomically: temp file + rename) after the
        first round of a session and then every ``CACHE_SAVE_SECONDS``, so a
        killed ``connect`` does not hash the tree again."""
        if self._cache is None or not self._cache.dirty:
            return
        last = self._cache_saved_at
        if last is not None and time.monotonic() - last < CACHE_SAVE_SECONDS:
            return
        await _off_loop(self._save_cache)

    async def _connected(self, *, once: bool) -> int:
        t = self.target
        log.info("connect.dial", address=t.address)
        async with open_channel(t.address, authority=t.authority, tls=t.tls) as channel:
            await dial(channel, t.address, timeout=self.connect_timeout)
            stub: Any = sync_pb2_grpc.SyncStub(channel)
            call = stub.Session()
            session = _Session(call, self.reporter, self.stats, t.address)
            # Scan the local tree while the sidecar scans its workspace, and
            # hash what the scan left unhashed until its manifest is here.
            segments = _Segments(asyncio.get_running_loop())
            welcomed = threading.Event()
            prescan = asyncio.ensure_future(
                self._cache_thread(self._scan_and_hash_ahead, segments, welcomed)
            )
            self._cache_saved_at = None
            try:
                try:
                    await self._handshake(call)
                finally:
                    welcomed.set()
                streamed = self._streams_first_round()
                if not streamed:
                    await prescan
                self.stats.connected = True
                session.reader = asyncio.create_task(session.read_loop())
                if streamed:
                    first = await self._streamed_round(session, segments, prescan)
                else:
                    first = await self._round(session, initial=True, scope=None, scanned=True)
                if once:
                    return await self._finish_once(session, first)
                await self._follow(session)
                return EXIT_OK
            except grpc.RpcError as e:
                raise translate(e, t.address) from e
            finally:
                if not prescan.done() and not self._stop.is_set():
                    # The scan thread cannot be interrupted; let it finish so
                    # the next session's scan does not run beside it. When
                    # stopping, nothing else will touch the manifest.
                    with contextlib.suppress(BaseException):
                        await asyncio.shield(prescan)
                if session.reader is not None:
                    session.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await session.reader
                call.cancel()

    async def _handshake(self, call: Any) -> None:
        await _write(
            call,
            pb.ClientMessage(
                hello=pb.Hello(
                    protocol_version=PROTOCOL_VERSION,
                    client_id=client_id(),
                    workspace=self.target.workspace,
                    token=self.target.token,
                    max_chunk_bytes=MAX_CHUNK_BYTES,
                    ignore=list(self.rules.patterns),
                    columnar_manifest=True,
                    stream_compressions=[] if self.compress == "never" else list(STREAM_OFFERED),
                )
            ),
            self.target.address,
        )
        first = await call.read()
        if first is _EOF or first.WhichOneof("msg") != "welcome":
            raise UnreachableError("the sidecar ended the session before welcoming it")
        welcome = first.welcome
        self.replica = welcome.replica
        self.modes = not welcome.forces_modes
        # Never send a chunk larger than the sidecar accepts (0: it did not say).
        self.chunk_bytes = min(MAX_CHUNK_BYTES, welcome.max_chunk_bytes or MAX_CHUNK_BYTES)
        self.inline_max = min(INLINE_MAX, self.chunk_bytes)
        # A new session, a new stream (zlib, file by file, for an older sidecar).
        chosen = welcome.stream_compression == pb.COMPRESSION_ZSTD_STREAM
        self.stream = StreamCompressor() if chosen and self.compress != "never" else None
        remote: Manifest = {}
        while True:
            msg = await call.read()
            if msg is _EOF or msg.WhichOneof("msg") != "manifest":
                raise UnreachableError("the sidecar ended the session while sending its manifest")
            read_manifest_page(msg.manifest, remote)
            if msg.manifest.last:
                break
        self.remote = remote
        log.info(
            "connect.session",
            session=welcome.session_id,
            workspace=welcome.workspace,
            remote_entries=len(remote),
            max_chunk_bytes=self.chunk_bytes,
            stream=bool(self.stream),
        )

    async def _finish_once(self, session: _Session, last: Plan) -> int:
        """Round after round until one finds nothing to send: only a round
        that scanned afresh and planned nothing shows the trees match (the
        tree may change while it is sent). ``last``: the first round's plan;
        when it sent nothing, nothing changed since its scan."""
        p, rounds = last, 1
        while not p.empty:
            if rounds >= ONCE_ROUNDS:
                self.reporter.note(
                    f"not in sync: the tree was still changing after {rounds} rounds "
                    f"({len(p.changes)} change(s) pending)"
                )
                return EXIT_UNSETTLED
            p = await self._round(session, initial=False, scope=None)
            rounds += 1
        unsynced = self.ledger.unsynced()
        for path, why in unsynced:
            self.reporter.note(f"not synced: {path}: {why}")
        return EXIT_NOT_SYNCED if unsynced else EXIT_OK

    # ------------------------------------------------------------ watching

    async def _watch(self) -> None:
        import watchfiles

        root = str(self.root)
        prefix = root.rstrip(os.sep) + os.sep
        async for changes in watchfiles.awatch(
            root,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=self._stop,
            ignore_permission_denied=True,
            watch_filter=None,
        ):
            hints: set[str] = set()
            for _, abspath in changes:
                if not abspath.startswith(prefix):
                    continue
                rel = abspath[len(prefix) :].replace(os.sep, "/")
                if self.view.ignored(rel) and not ignore_mod.is_ignore_file(rel):
                    continue
                hints.add(rel)
            if hints:
                self._hints.put_nowait(hints)

    async def _follow(self, session: _Session) -> None:
        """After the initial sync: apply hints as they come, and rescan all
        every ``rescan_interval`` seconds as a safety net."""
        assert session.reader is not None
        while not self._stop.is_set():
            get = asyncio.ensure_future(self._hints.get())
            done, _ = await asyncio.wait(
                {get, session.reader},
                timeout=self.rescan_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if get not in done:
                get.cancel()
                if session.reader in done:  # the sidecar went away while idle
                    raise _as_devstack(
                        session.failed or UnreachableError("session closed"), self.target.address
                    )
                await self._round(session, initial=False, scope=None)
                continue
            hints = get.result()
            if hints is None:
                return
            while not self._hints.empty():
                more = self._hints.get_nowait()
                if more is None:
                    self._stop.set()
                    break
                hints |= more
            if session.failed is not None:
                raise _as_devstack(session.failed, self.target.address)
            await self._round(session, initial=False, scope=hints)

    # ------------------------------------------------------------ scanning

    def _rescan(
        self, scope: set[str] | None, segments: _Segments | None = None
    ) -> frozenset[str] | None:
        """Refresh the local manifest (all of it, or the hinted paths) and
        return the paths to plan for (None: everything). A full scan defers
        hashing the small files the cache does not know (see
        ``_resolve_digests``). With ``segments``, a full scan fills
        ``local`` in place as it goes and hands its entries to them too."""
        cache = self.cache
        if scope is None or any(ignore_mod.is_ignore_file(p) for p in scope):
            self.rules = ignore_mod.load(self.root)
            nested: dict[str, tuple[str, ...]] = {}
            deferred: list[str] = []
            into: Manifest | None = None
            if segments is not None:
                into = self.local = {}
            try:
                with gc_paused():
                    self.local = scan(
                        self.root,
                        rules=self.rules,
                        cache=cache,
                        nested=nested,
                        deferred=deferred,
                        defer_max=INLINE_MAX,
                        into=into,
                        emit=None if segments is None else segments.feed,
                    )
            finally:
                if segments is not None:
                    segments.feed(None)
            cache.retain(self.local)
            self._nested = nested
            self._deferred = set(deferred)
            self._refresh_view()
            return None
        affected: set[str] = set()
        for hint in sorted(scope):
            parts = hint.split("/")
            for i in range(1, len(parts)):
                anc = "/".join(parts[:i])
                affected.add(anc)
                self._refresh_one(anc)
            prefix = hint + "/"
            old = [p for p in self.local if p == hint or p.startswith(prefix)]
            for p in old:
                del self.local[p]
            nested = {}
            fresh = scan(self.root, rules=self.rules, cache=cache, under=hint, nested=nested)
            self.local.update(fresh)
            stale = [f for f in self._nested if f == hint or f.startswith(prefix)]
            if stale or nested:  # e.g. a folder with a .gitignore moved in or out
                for f in stale:
                    del self._nested[f]
                self._nested.update(nested)
                self._refresh_view()
            affected.update(old)
            affected.update(fresh)
            affected.add(hint)
            affected.update(p for p in self.remote if p.startswith(prefix))
        return frozenset(affected)

    def _scan_and_hash_ahead(self, segments: _Segments, welcomed: threading.Event) -> None:
        """A session's first scan (see ``_rescan``), then, until
        ``welcomed`` is set (the sidecar's manifest is here), the files it
        left unhashed. The sidecar hashes its own workspace meanwhile; when
        that holds these files too (a workspace seeded from the image),
        ``_resolve_digests`` then finds most of them hashed already. Into
        an empty workspace the manifest is usually here before the scan
        ends, and this hashes nothing."""
        self._rescan(None, segments)
        cache = self.cache
        for path in list(self._deferred):
            if welcomed.is_set() or self._stop.is_set():
                break
            self._hash_deferred(cache, path)

    def _resolve_digests(self) -> None:
        """Hash now the deferred files whose digest is needed before they
        are read to be sent: a file the workspace holds too (the plan
        compares digests), one as large as a file the workspace holds and
        the laptop no longer has (a rename's source has the same digest),
        and one too large to travel inline (its digest goes before its
        chunks). The rest are new files sent inline, hashed as read."""
        deferred, local, remote = self._deferred, self.local, self.remote
        if not deferred:
            return
        gone_sizes = {
            e.size
            for e in map(remote.__getitem__, remote.keys() - local.keys())
            if e.kind == Kind.FILE and e.state == SyncState.SYNCED
        }
        cache = self.cache
        for p in [p for p in deferred if p in remote]:
            deferred.discard(p)
            self._hash_deferred(cache, p)
        for p in [p for p in deferred if p not in local or local[p].digest]:
            deferred.discard(p)
        for p in deferred:
            if local[p].size in gone_sizes or local[p].size > self.inline_max:
                self._hash_deferred(cache, p)
        deferred.clear()  # the rest: hashed as they are read to be sent

    def _hash_deferred(self, cache: DigestCache, path: str) -> None:
        e = self.local.get(path)
        if e is None or e.digest:
            return
        got = _hash_now(self._root_s, e)
        if got is None:
            del self.local[path]  # as a scan leaves out what it cannot read
            return
        entry, key = got
        self.local[path] = entry
        cache.put(path, key, entry.digest)

    def _refresh_one(self, path: str) -> None:
        """Re-read a single entry (no recursion): for a hint's ancestors."""
        try:
            st = os.lstat(self.root / path)
        except (FileNotFoundError, NotADirectoryError):
            self.local.pop(path, None)
            return
        if stat.S_ISDIR(st.st_mode) and not self.view.excludes(path, is_dir=True):
            self.local[path] = Entry(path, Kind.DIRECTORY, 0, stat.S_IMODE(st.st_mode))

    def _refresh_view(self) -> None:
        """``view``: the root's rules plus every nested .gitignore the scans
        applied, compiled again only when they changed."""
        if self._view_key is None or self._view_key != (self.rules, self._nested):
            self._view_key = (self.rules, dict(self._nested))
            self.view = ignore_mod.with_nested(self.rules, self._nested)

    def _plan(self, scope: frozenset[str] | None, local: Manifest | None = None) -> Plan:
        # Entries the sidecar listed although they are ignored here (its
        # workspace lacks a nested .gitignore, or holds an older one) stay
        # out of the plan; the whole remote still goes in, so a folder that
        # holds them is not deleted either.
        memo: dict[str, bool] = {}
        view = self.view

        def hidden(path: str, entry: Entry) -> bool:
            return view.excludes(path, is_dir=entry.kind == Kind.DIRECTORY, memo=memo)

        return plan(
            self.local if local is None else local,
            self.remote,
            replica=self.replica,
            force=self.force,
            modes=self.modes,
            held=self.held,
            scope=scope,
            hidden=hidden,
        )

    # ------------------------------------------------------------ sending

    async def _round(
        self,
        session: _Session,
        *,
        initial: bool,
        scope: set[str] | None,
        scanned: bool = False,
    ) -> Plan:
        started = time.perf_counter()
        planned_scope = None if scanned else await self._cache_thread(self._rescan, scope)
        if self._deferred:
            await self._cache_thread(self._resolve_digests)
        p = self._plan(planned_scope)
        self.stats.rounds += 1
        self.reporter.round_started(p, initial=initial)
        if not p.empty:
            await self._send(session, p.changes)
        await self._round_ended(p, planned_scope, started, initial=initial)
        return p

    async def _round_ended(
        self,
        p: Plan,
        scope: frozenset[str] | None,
        started: float,
        *,
        initial: bool,
        streamed: bool = False,
    ) -> None:
        """Book a round's plan, tell it, save the cache now and then."""
        self.ledger.round_done(p.conflicts, p.changes, scope)
        self._round_done = True
        self.reporter.round_finished(self.stats)
        await self._save_cache_now_and_then()
        log.debug(
            "connect.round",
            changes=len(p.changes),
            conflicts=len(p.conflicts),
            first_of_session=initial,
            streamed=streamed,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    def _streams_first_round(self) -> bool:
        """Whether the first round sends while the scan goes on: the
        workspace is empty (every entry is a create, so no entry waits for
        another to be planned), nothing is held, and every file the scan
        leaves unhashed travels inline (hashed as it is read)."""
        return not self.remote and not self.held and self.inline_max >= INLINE_MAX

    async def _streamed_round(
        self, session: _Session, segments: _Segments, prescan: asyncio.Future[Any]
    ) -> Plan:
        """A session's first round into an empty workspace: the scan's
        segments are planned and sent as they come, so the sidecar applies
        while the laptop still scans. The round's totals are told when the
        scan ends; what was sent by then is told with them."""
        started = time.perf_counter()
        self._early = [0, 0]

        def told(planned: list[Change]) -> None:
            early, self._early = self._early, None
            self.reporter.round_started(Plan(list(planned)), initial=True)
            if early is not None and early[0]:
                self.reporter.progress(early[0], early[1])

        feed = _Feed(segments, lambda local: self._plan(None, local), told)
        try:
            await self._send(session, [], feed)
        finally:
            self._early = None
        await prescan
        self._deferred.clear()  # each was hashed as it was read to be sent
        p = Plan(feed.planned)
        self.stats.rounds += 1
        await self._round_ended(p, None, started, initial=True, streamed=True)
        return p

    def _progress(self, files: int, nbytes: int) -> None:
        if self._early is None:
            self.reporter.progress(files, nbytes)
        else:
            self._early[0] += files
            self._early[1] += nbytes

    async def _send(
        self, session: _Session, changes: list[Change], feed: _Feed | None = None
    ) -> None:
        """Send ``changes`` in batches, and those ``feed`` plans as the scan
        goes on. The next batch is built (its files read, hashed and
        encoded on worker threads) while this one is written to the stream
        and its chunks streamed, so reading and compressing overlap with
        sending; a batch that asks the sidecar for a signature is built
        only once the batch before it is sent. Large files go spread among
        the small ones (``interleave``), so the sidecar applies small files
        while a large one crosses the link."""
        pending: list[tuple[asyncio.Future[pb.Ack], list[_Outgoing]]] = []
        limits = Limits(self.inline_max)
        changes = interleave(changes, self.inline_max)
        ahead: asyncio.Future[tuple[pb.ClientMessage, list[_Outgoing]]] | None = None
        i = 0
        try:
            while i < len(changes) or ahead is not None or (feed is not None and not feed.done):
                if session.failed is not None:
                    raise _as_devstack(session.failed, self.target.address)
                if ahead is None:
                    if feed is not None:
                        await feed.top_up(changes, i, limits, wait=True)
                        if i >= len(changes):
                            continue
                    packed = pack(changes, i, limits)
                    i = packed.end
                    if feed is not None:
                        feed.release(changes, i, packed)
                    ahead = asyncio.ensure_future(self._build_batch(session, packed))
                building, ahead = ahead, None
                msg, outgoing = await building
                if feed is not None:
                    await feed.top_up(changes, i, limits, wait=False)
                if i < len(changes) and (feed is None or feed.full(changes, i, limits)):
                    packed = pack(changes, i, limits)
                    if not any(
                        how is Carry.CHUNKED and wants_delta(ch) for ch, how in packed.items
                    ):
                        i = packed.end
                        if feed is not None:
                            feed.release(changes, i, packed)
                        ahead = asyncio.ensure_future(self._build_batch(session, packed))
                if not outgoing:
                    continue
                await self._send_batch(session, msg, outgoing, pending)
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
        for fut, outgoing in pending:
            ack = await fut
            self._record(ack, outgoing)

    async def _send_batch(
        self,
        session: _Session,
        msg: pb.ClientMessage,
        outgoing: list[_Outgoing],
        pending: list[tuple[asyncio.Future[pb.Ack], list[_Outgoing]]],
    ) -> None:
        """Send one built batch: the batch message (in the window), its
        chunked files' content, and its commit."""
        await session.window.acquire()
        session.seq += 1
        seq = session.seq
        fut: asyncio.Future[pb.Ack] = asyncio.get_running_loop().create_future()
        session.acks[seq] = fut
        fut.add_done_callback(lambda _f: session.window.release())
        msg.batch.seq = seq
        squeezed = [o.op for o in outgoing if o.squeeze]
        if squeezed:
            # On the thread that encodes chunks, after the last batch's:
            # the stream takes its pieces in the order they are sent.
            assert self.stream is not None
            work = self._readers().submit(self._squeeze, self.stream, squeezed)
            self.stats.bytes_sent += await asyncio.wrap_future(work)
        await session.send(msg)
        for index, out in enumerate(outgoing):
            if out.chunked:
                await self._stream(session, seq, index, out)
        inline = sum(
            o.change.entry.size
            for o in outgoing
            if o.change.action == Action.WRITE and o.change.entry and not o.chunked
        )
        self._progress(len(outgoing), inline)
        commit = pb.ClientMessage()
        commit.commit.seq = seq
        await session.send(commit)
        pending.append((fut, outgoing))

    def _record(self, ack: pb.Ack, outgoing: list[_Outgoing]) -> None:
        """Book an acknowledgement (``devstack.core.sync.acks``)."""
        done = self.ledger.record(_ack_from_pb(ack), [o.change for o in outgoing], self.local)
        for note in done.notes:
            self.reporter.note(note)
        if done.rescan:
            self._hints.put_nowait(set(done.rescan))
        if done.stale is not None:
            raise StaleViewError(done.stale)

    async def _build_batch(
        self, session: _Session, packed: Packed
    ) -> tuple[pb.ClientMessage, list[_Outgoing]]:
        """The batch message for ``packed``, its ops filled in place: small
        files inline, a large one chunked or, when the sidecar has an older
        version, as a delta against its signature."""
        msg = pb.ClientMessage()
        ops = msg.batch.ops
        outgoing: list[_Outgoing] = []
        small: list[_Outgoing] = []
        for ch, how in packed.items:
            if how is Carry.CHUNKED:
                outgoing.append(await self._large(session, ch, ops.add()))
                continue
            out = _Outgoing(ch, self._op(ops.add(), ch))
            if how is Carry.INLINE:
                small.append(out)
            outgoing.append(out)
        if small:
            # Two worker threads: reading, hashing and zlib release the GIL.
            half = (len(small) + 1) // 2
            parts = [small[:half], small[half:]] if len(small) > 1 else [small]
            sent = await asyncio.gather(*(self._cache_thread(self._fill_inline, p) for p in parts))
            self.stats.bytes_sent += sum(sent)
            gone = [k for k, o in enumerate(outgoing) if o.op.kind == pb.OP_UNSPECIFIED]
            if gone:  # vanished: the next round sees it
                for k in reversed(gone):
                    del ops[k]
                    del outgoing[k]
        return msg, outgoing

    def _op(self, op: pb.Op, ch: Change) -> pb.Op:
        """Fill ``op`` (a part of the batch message) for ``ch``."""
        entry = ch.entry
        op.kind = OP_KIND_TO_PB[ch.action]
        if ch.force:
            op.force = True
        if entry is not None:
            fill_entry_pb(op.entry, entry)
        else:
            op.entry.path = ch.path
        if ch.action == Action.RENAME:
            op.from_path = ch.from_path
        if ch.expected is not None:
            fill_entry_pb(op.expected, ch.expected)
        elif ch.action not in (Action.DELETE, Action.ADOPT):
            op.expected_absent = True
        return op

    @staticmethod
    def _squeeze(stream: StreamCompressor, ops: list[pb.Op]) -> int:
        """Compress ops' raw inline content through the session's stream, in
        order (on the reader thread); returns the bytes of payload."""
        sent = 0
        for op in ops:
            op.content = payload = stream.compress(op.content)
            op.compression = pb.COMPRESSION_ZSTD_STREAM
            sent += len(payload)
        return sent

    def _fill_inline(self, outs: list[_Outgoing]) -> int:
        """Read, hash and encode small files into their ops (on a worker
        thread; two at a time, each with its own ops). A file the scan did
        not hash is hashed here, in the same pass as it is read. Content for
        the session's stream stays raw here (``_squeeze`` compresses it when
        the batch is sent, in sending order). Returns the bytes of payload
        encoded here."""
        root, mode, cache, stream = self._root_s, self.compress, self.cache, self.stream
        sent = 0
        for out in outs:
            scanned = out.change.entry
            assert scanned is not None
            got = _read_inline(root, scanned)
            if got is None:
                out.op.kind = pb.OP_UNSPECIFIED
                continue
            entry, data, key = got
            if entry != scanned:
                self.local[entry.path] = entry
                ch = out.change
                out.change = Change(ch.action, ch.path, entry, ch.expected, ch.from_path, ch.force)
                fill_entry_pb(out.op.entry, entry)
                if key is not None:
                    cache.put(entry.path, key, entry.digest)
            encoder = ContentEncoder(entry.path, entry.size, mode, stream)
            if stream is not None and encoder.worth(data):
                out.op.content = data
                out.squeeze = True
                continue
            payload, compression = encoder.encode(data)
            out.op.content = payload
            if compression:
                out.op.compression = compression  # type: ignore[assignment]
            sent += len(payload)
        return sent

    async def _large(self, session: _Session, ch: Change, op: pb.Op) -> _Outgoing:
        from devstack.core import delta as deltas

        assert ch.entry is not None
        entry = ch.entry
        self._op(op, ch)
        op.chunked = True
        old = ch.expected
        if old is not None and wants_delta(ch):
            sig = await session.signature(ch.path)
            if sig.blocks and bytes(sig.digest) == old.digest:
                blocks = [deltas.Block(b.offset, b.length, b.hash) for b in sig.blocks]
                steps = await _off_loop(self._delta, entry, blocks)
                if steps is not None:
                    op.delta = True
                    return _Outgoing(ch, op, chunked=True, steps=steps)
        return _Outgoing(ch, op, chunked=True, literal=[(0, entry.size)])

    def _delta(
        self, entry: Entry, blocks: list[deltas.Block]
    ) -> list[deltas.Copy | deltas.Literal] | None:
        from devstack.core import delta as deltas

        opened = _open_regular(self._root_s, entry.path)
        if opened is None:
            return None
        fd = opened[0]
        try:
            return deltas.delta(fd, entry.size, blocks)
        finally:
            os.close(fd)

    @staticmethod
    def _piece(fd: int, pos: int, n: int, encoder: ContentEncoder) -> tuple[int, bytes, int]:
        """Read and encode one chunk (on a worker thread): (bytes read,
        payload, Compression); 0 bytes read at the end of the file."""
        data = os.pread(fd, n, pos)
        if not data:
            return 0, b"", pb.COMPRESSION_NONE
        payload, compression = encoder.encode(data)
        return len(data), payload, compression

    async def _stream(self, session: _Session, seq: int, index: int, out: _Outgoing) -> None:
        """Send a chunked op's content: literal ranges read from the file in
        bounded pieces, copy ranges as references. The next piece is read
        and encoded on a worker thread while this one is sent."""
        from devstack.core import delta as deltas

        assert out.change.entry is not None
        entry = out.change.entry
        opened = _open_regular(self._root_s, entry.path)
        if opened is None:
            return  # vanished: the sidecar reports it incomplete; the next round sees why
        fd = opened[0]
        encoder = ContentEncoder(entry.path, entry.size, self.compress, self.stream)
        reading: concurrent.futures.Future[tuple[int, bytes, int]] | None = None

        def read(pos: int, end: int) -> concurrent.futures.Future[tuple[int, bytes, int]]:
            n = min(self.chunk_bytes, end - pos)
            return self._readers().submit(self._piece, fd, pos, n, encoder)

        try:
            steps: Iterable[deltas.Copy | deltas.Literal] = out.steps or [
                deltas.Literal(o, n) for o, n in out.literal
            ]
            for step in steps:
                msg = pb.ClientMessage()
                chunk = msg.chunk
                chunk.seq = seq
                chunk.op_index = index
                if isinstance(step, deltas.Copy):
                    chunk.copy.offset = step.offset
                    chunk.copy.length = step.length
                    await session.send(msg)
                    continue
                pos, end = step.offset, step.offset + step.length
                if pos >= end:
                    continue
                reading = read(pos, end)
                while reading is not None:
                    n, payload, compression = await asyncio.wrap_future(reading)
                    reading = None
                    if not n:
                        return
                    pos += n
                    if pos < end:
                        reading = read(pos, end)
                    chunk.data = payload
                    if compression:
                        chunk.compression = compression  # type: ignore[assignment]
                    self.stats.bytes_sent += len(payload)
                    await session.send(msg)
                    self._progress(0, n)
                    if reading is not None:
                        msg = pb.ClientMessage()
                        chunk = msg.chunk
                        chunk.seq = seq
                        chunk.op_index = index
        finally:
            if reading is not None:
                # A worker thread may still read the file: close it after
                # (at once if it is done already).
                reading.add_done_callback(lambda _f: os.close(fd))
            else:
                os.close(fd)

    def _readers(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread that reads and encodes chunks ahead of sending them."""
        if self._reader_pool is None:
            self._reader_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="connect-read"
            )
        return self._reader_pool
