"""The laptop side of a sync session (network and filesystem I/O around the
pure planner).

One round: receive the sidecar's manifest, scan the local tree (digests
cached by stat), ``plan`` the difference, send it in numbered batches with a
window of unacknowledged batches, and record what the sidecar applied.
Watch events only say which paths to look at again; every round ends with
the same comparison, so a lost event, a reconnect or a laptop waking from
sleep converge by the same path as the first sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import socket
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import grpc

from devstack.cli.channel import open_channel, translate
from devstack.core import delta as deltas
from devstack.core import ignore as ignore_mod
from devstack.core.errors import (
    AuthError,
    DevstackError,
    PermanentError,
    TemporaryError,
    UnreachableError,
)
from devstack.core.logging import get_logger
from devstack.core.manifest import (
    DIGEST_SIZE,
    DigestCache,
    Entry,
    Kind,
    Manifest,
    scan,
)
from devstack.core.plan import Action, Change, Plan, apply_to, plan
from devstack.core.protocol import (
    INLINE_MAX,
    MAX_CHUNK_BYTES,
    PROTOCOL_VERSION,
    encode,
    entry_from_pb,
    entry_to_pb,
    worth_compressing,
)
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc

log = get_logger("connect")
#: The end-of-stream sentinel of grpc.aio calls (missing from grpc-stubs).
_EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009

#: Inline content per Batch message (the gRPC limit is 4 MiB).
BATCH_BYTES = 2 * 1024 * 1024
#: Ops per batch.
BATCH_OPS = 2000
#: Batches in flight before waiting for an acknowledgement.
WINDOW = 4

_OP = {
    Action.WRITE: pb.OP_WRITE,
    Action.MKDIR: pb.OP_MKDIR,
    Action.SYMLINK: pb.OP_SYMLINK,
    Action.DELETE: pb.OP_DELETE,
    Action.RENAME: pb.OP_RENAME,
    Action.CHMOD: pb.OP_CHMOD,
    Action.ADOPT: pb.OP_ADOPT,
}


class Reporter(Protocol):
    """Where progress and events go (the terminal UI, or a test)."""

    def round_started(self, plan: Plan, *, initial: bool) -> None: ...

    def progress(self, files: int, nbytes: int) -> None: ...

    def round_finished(self, stats: Stats) -> None: ...

    def event(self, event: pb.Event) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass
class Stats:
    files_synced: int = 0
    bytes_sent: int = 0
    rounds: int = 0
    conflicts: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    last_reload: str = ""
    connected: bool = False


@dataclass(frozen=True)
class Target:
    address: str
    token: str
    authority: str | None = None
    tls: bool = False


@dataclass
class _Outgoing:
    change: Change
    op: pb.Op
    # (offset, length) ranges to stream from the local file, or delta steps
    literal: list[tuple[int, int]] = field(default_factory=list)
    steps: list[deltas.Copy | deltas.Literal] = field(default_factory=list)


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


def _read_inline(root: Path, entry: Entry) -> tuple[Entry, bytes] | None:
    """Content of a small file and its entry as actually read (the file may
    have changed since it was scanned). None if it vanished or changed kind."""
    try:
        fd = os.open(root / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        chunks = []
        while block := os.read(fd, 1 << 20):
            chunks.append(block)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    digest = hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()
    if digest != entry.digest or len(data) != entry.size:
        entry = replace(entry, size=len(data), digest=digest, mode=stat.S_IMODE(st.st_mode))
    return entry, data


class _Session:
    """One open Session stream."""

    def __init__(self, call: Any, reporter: Reporter, stats: Stats) -> None:
        self.call = call
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
                        self.stats.last_reload = _describe_reload(ev)
                    self.reporter.event(ev)
        except BaseException as e:
            self.failed = e
            for f in list(self.acks.values()):
                if not f.done():
                    f.set_exception(_as_devstack(e))
            for waiters in self.sigs.values():
                for w in waiters:
                    if not w.done():
                        w.set_exception(_as_devstack(e))
            if isinstance(e, asyncio.CancelledError):
                raise

    async def signature(self, path: str) -> pb.Signature:
        fut: asyncio.Future[pb.Signature] = asyncio.get_running_loop().create_future()
        self.sigs.setdefault(path, []).append(fut)
        await self.call.write(pb.ClientMessage(signature_request=pb.SignatureRequest(path=path)))
        return await fut


def _describe_reload(ev: pb.Event) -> str:
    if ev.kind == "reload-finished":
        return f"ok in {ev.duration_ms} ms"
    if ev.kind == "reload-started":
        return "reloading..."
    return f"{ev.reason or 'failed'} (exit {ev.exit_code})"


def _as_devstack(e: BaseException) -> BaseException:
    if isinstance(e, grpc.RpcError):
        return translate(e, "sidecar")
    if isinstance(e, DevstackError | asyncio.CancelledError):
        return e
    return UnreachableError(f"session failed: {e}")


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
    ) -> None:
        if not root.is_dir():
            raise PermanentError(f"{root} is not a directory")
        self.root = root.resolve()
        self.target = target
        self.reporter = reporter
        self.force = force
        self.cache_path = cache_path or default_cache_path(self.root, target.address)
        self.cache = DigestCache.load(self.cache_path)
        self.rules = ignore_mod.load(self.root)
        self.local: Manifest = {}
        self.remote: Manifest = {}
        self.held: dict[str, tuple[Entry | None, Entry | None]] = {}
        self.stats = Stats()
        self.debounce_ms = debounce_ms
        self.step_ms = step_ms
        self.rescan_interval = rescan_interval
        self.connect_timeout = connect_timeout
        self.replica = False
        self.modes = True
        self._hints: asyncio.Queue[set[str] | None] = asyncio.Queue()
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()
        self._hints.put_nowait(None)

    # ------------------------------------------------------------ top level

    async def run(self, *, once: bool) -> int:
        """Sync until stopped (or, with ``once``, until the trees match).
        Returns the exit code."""
        watcher = None if once else asyncio.create_task(self._watch())
        delay = 0.2
        ever_connected = False
        try:
            while not self._stop.is_set():
                try:
                    code = await self._connected(once=once)
                    return code
                except AuthError:
                    raise
                except PermanentError:
                    raise
                except (TemporaryError, grpc.RpcError, OSError) as e:
                    err = translate(e, self.target.address) if isinstance(e, grpc.RpcError) else e
                    if isinstance(err, AuthError | PermanentError):
                        raise err from e
                    was_connected = self.stats.connected
                    ever_connected = ever_connected or was_connected
                    self.stats.connected = False
                    if was_connected:
                        delay = 0.2
                    if not ever_connected and (once or self._first_attempt_failed(err)):
                        raise UnreachableError(str(err)) from e
                    self.reporter.note(f"disconnected ({err}); retrying in {delay:.1f}s")
                    log.info("connect.retry", delay=delay, error=str(err))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    delay = min(delay * 2, 10.0)
            return 0
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            self._save_cache()

    def _first_attempt_failed(self, err: BaseException) -> bool:
        """Before any session succeeded, an unreachable sidecar is a bad
        address, not a flaky network: say so instead of retrying forever."""
        return isinstance(err, UnreachableError)

    def _save_cache(self) -> None:
        with contextlib.suppress(OSError):
            if self.cache.dirty:
                self.cache.save(self.cache_path)

    async def _connected(self, *, once: bool) -> int:
        t = self.target
        async with open_channel(t.address, authority=t.authority, tls=t.tls) as channel:
            try:
                await asyncio.wait_for(channel.channel_ready(), self.connect_timeout)
            except TimeoutError as e:
                raise UnreachableError(
                    f"cannot reach the sidecar at {t.address} "
                    f"(no answer in {self.connect_timeout:.0f}s)"
                ) from e
            stub: Any = sync_pb2_grpc.SyncStub(channel)
            call = stub.Session()
            session = _Session(call, self.reporter, self.stats)
            # Scan the local tree while the sidecar scans its workspace.
            prescan = asyncio.create_task(asyncio.to_thread(self._rescan, None))
            try:
                await self._handshake(call)
                await prescan
                self.stats.connected = True
                session.reader = asyncio.create_task(session.read_loop())
                first = await self._round(session, initial=True, scope=None, scanned=True)
                if once:
                    return await self._finish_once(session, first if first.empty else None)
                await self._follow(session)
                return 0
            except grpc.RpcError as e:
                raise translate(e, t.address) from e
            finally:
                if not prescan.done():
                    with contextlib.suppress(BaseException):
                        await prescan
                if session.reader is not None:
                    session.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await session.reader
                call.cancel()

    async def _handshake(self, call: Any) -> None:
        await call.write(
            pb.ClientMessage(
                hello=pb.Hello(
                    protocol_version=PROTOCOL_VERSION,
                    client_id=client_id(),
                    token=self.target.token,
                    max_chunk_bytes=MAX_CHUNK_BYTES,
                    ignore=list(self.rules.patterns),
                )
            )
        )
        first = await call.read()
        if first is _EOF or first.WhichOneof("msg") != "welcome":
            raise UnreachableError("the sidecar ended the session before welcoming it")
        welcome = first.welcome
        self.replica = welcome.replica
        self.modes = not welcome.forces_modes
        remote: Manifest = {}
        while True:
            msg = await call.read()
            if msg is _EOF or msg.WhichOneof("msg") != "manifest":
                raise UnreachableError("the sidecar ended the session while sending its manifest")
            for e in msg.manifest.entries:
                remote[e.path] = entry_from_pb(e)
            if msg.manifest.last:
                break
        self.remote = remote
        log.info("connect.session", session=welcome.session_id, remote_entries=len(remote))

    async def _finish_once(self, session: _Session, settled: Plan | None = None) -> int:
        """``settled``: the last round's plan when it sent nothing, so nothing
        changed since and planning again (100k paths: ~0.3 s) would repeat it."""
        p = settled
        for _ in range(5):
            if p is None:
                p = self._plan(None)
            if p.empty:
                break
            await self._round(session, initial=False, scope=None)
            p = None
        if p is None:
            p = self._plan(None)
        self.stats.conflicts = {c.path: c.reason for c in p.conflicts}
        if p.conflicts or self.stats.problems:
            for path, why in sorted({**self.stats.problems, **self.stats.conflicts}.items()):
                self.reporter.note(f"not synced: {path}: {why}")
            return 3
        return 0

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
                if self.rules.ignored(rel) and not ignore_mod.is_ignore_file(rel):
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
                    raise _as_devstack(session.failed or UnreachableError("session closed"))
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
                raise _as_devstack(session.failed)
            await self._round(session, initial=False, scope=hints)

    # ------------------------------------------------------------ scanning

    def _rescan(self, scope: set[str] | None) -> frozenset[str] | None:
        """Refresh the local manifest (all of it, or the hinted paths) and
        return the paths to plan for (None: everything)."""
        if scope is None or any(ignore_mod.is_ignore_file(p) for p in scope):
            self.rules = ignore_mod.load(self.root)
            self.local = scan(self.root, rules=self.rules, cache=self.cache)
            self.cache.retain(self.local)
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
            fresh = scan(self.root, rules=self.rules, cache=self.cache, under=hint)
            self.local.update(fresh)
            affected.update(old)
            affected.update(fresh)
            affected.add(hint)
            affected.update(p for p in self.remote if p.startswith(prefix))
        return frozenset(affected)

    def _refresh_one(self, path: str) -> None:
        """Re-read a single entry (no recursion): for a hint's ancestors."""
        try:
            st = os.lstat(self.root / path)
        except (FileNotFoundError, NotADirectoryError):
            self.local.pop(path, None)
            return
        if stat.S_ISDIR(st.st_mode) and not self.rules.ignored(path, is_dir=True):
            self.local[path] = Entry(path, Kind.DIRECTORY, 0, stat.S_IMODE(st.st_mode))

    def _plan(self, scope: frozenset[str] | None) -> Plan:
        remote = self.remote
        if scope is None:
            remote = {
                p: e
                for p, e in remote.items()
                if not self.rules.ignored(p, is_dir=e.kind == Kind.DIRECTORY)
            }
        return plan(
            self.local,
            remote,
            replica=self.replica,
            force=self.force,
            modes=self.modes,
            held=self.held,
            scope=scope,
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
        planned_scope = None if scanned else await asyncio.to_thread(self._rescan, scope)
        p = self._plan(planned_scope)
        self.stats.rounds += 1
        self.reporter.round_started(p, initial=initial)
        if not p.empty:
            await self._send(session, p.changes)
        self.stats.conflicts = {c.path: c.reason for c in p.conflicts} | {
            k: v for k, v in self.stats.conflicts.items() if k in self.held
        }
        self.reporter.round_finished(self.stats)
        log.debug(
            "connect.round",
            changes=len(p.changes),
            conflicts=len(p.conflicts),
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return p

    async def _send(self, session: _Session, changes: list[Change]) -> None:
        pending: list[tuple[asyncio.Future[pb.Ack], list[_Outgoing]]] = []
        i = 0
        while i < len(changes):
            if session.failed is not None:
                raise _as_devstack(session.failed)
            outgoing, i = await self._prepare_batch(session, changes, i)
            if not outgoing:
                continue
            await session.window.acquire()
            session.seq += 1
            seq = session.seq
            fut: asyncio.Future[pb.Ack] = asyncio.get_running_loop().create_future()
            session.acks[seq] = fut
            fut.add_done_callback(lambda _f: session.window.release())
            await session.call.write(
                pb.ClientMessage(batch=pb.Batch(seq=seq, ops=[o.op for o in outgoing]))
            )
            for index, out in enumerate(outgoing):
                if out.op.chunked:
                    await self._stream(session, seq, index, out)
            inline = sum(
                o.change.entry.size
                for o in outgoing
                if o.change.action == Action.WRITE and o.change.entry and not o.op.chunked
            )
            self.reporter.progress(len(outgoing), inline)
            await session.call.write(pb.ClientMessage(commit=pb.Commit(seq=seq)))
            pending.append((fut, outgoing))
        for fut, outgoing in pending:
            ack = await fut
            self._record(ack, outgoing)

    def _record(self, ack: pb.Ack, outgoing: list[_Outgoing]) -> None:
        problems = {p.path: p for p in ack.problems}
        for out in outgoing:
            ch = out.change
            prob = problems.get(ch.path)
            if prob is None:
                apply_to(self.remote, ch)
                self.held.pop(ch.path, None)
                self.stats.problems.pop(ch.path, None)
                self.stats.conflicts.pop(ch.path, None)
                if ch.action in (Action.WRITE, Action.SYMLINK, Action.RENAME):
                    self.stats.files_synced += 1
                continue
            actual = (
                entry_from_pb(prob.actual) if prob.HasField("actual") and prob.actual.kind else None
            )
            if prob.reason == "conflict":
                # Remember what the workspace holds; leave the path alone until
                # either side changes again.
                if actual is None:
                    self.remote.pop(ch.path, None)
                else:
                    self.remote[ch.path] = actual
                self.held[ch.path] = (self.local.get(ch.path), self.remote.get(ch.path))
                self.stats.conflicts[ch.path] = prob.message
            elif prob.reason in ("digest-mismatch", "incomplete"):
                # The file changed while it was sent: look at it again.
                self.stats.problems.pop(ch.path, None)
                self._hints.put_nowait({ch.path})
            else:
                self.held[ch.path] = (self.local.get(ch.path), self.remote.get(ch.path))
                self.stats.problems[ch.path] = prob.message
                self.reporter.note(f"rejected: {prob.message}")

    async def _prepare_batch(
        self, session: _Session, changes: list[Change], start: int
    ) -> tuple[list[_Outgoing], int]:
        """Build the next batch from ``changes[start:]``: small files inline,
        large ones chunked or, when the sidecar has an older version, as a
        delta against its signature."""
        outgoing: list[_Outgoing] = []
        inline_bytes = 0
        i = start
        small: list[int] = []
        while i < len(changes) and len(outgoing) < BATCH_OPS:
            ch = changes[i]
            if ch.action == Action.WRITE and ch.entry is not None:
                size = ch.entry.size
                if size <= INLINE_MAX:
                    if inline_bytes + size > BATCH_BYTES and outgoing:
                        break
                    inline_bytes += size
                    small.append(len(outgoing))
                    outgoing.append(_Outgoing(ch, self._op(ch)))
                else:
                    out = await self._large(session, ch)
                    outgoing.append(out)
                    i += 1
                    break  # one large file ends a batch: keep batches bounded
            else:
                outgoing.append(_Outgoing(ch, self._op(ch)))
            i += 1
        if small:
            await asyncio.to_thread(self._fill_inline, [outgoing[k] for k in small])
            outgoing = [o for o in outgoing if o.op.kind != pb.OP_UNSPECIFIED]
        return outgoing, i

    def _op(self, ch: Change, entry: Entry | None = None) -> pb.Op:
        entry = entry or ch.entry
        op = pb.Op(kind=_OP[ch.action], force=ch.force)
        if entry is not None:
            op.entry.CopyFrom(entry_to_pb(entry))
        else:
            op.entry.path = ch.path
        if ch.action == Action.RENAME:
            op.from_path = ch.from_path
        if ch.expected is not None:
            op.expected.CopyFrom(entry_to_pb(ch.expected))
        elif ch.action not in (Action.DELETE, Action.ADOPT):
            op.expected_absent = True
        return op

    def _fill_inline(self, outs: list[_Outgoing]) -> None:
        for out in outs:
            assert out.change.entry is not None
            got = _read_inline(self.root, out.change.entry)
            if got is None:
                out.op.kind = pb.OP_UNSPECIFIED  # vanished: the next round sees it
                continue
            entry, data = got
            if entry != out.change.entry:
                self.local[entry.path] = entry
                out.change = replace(out.change, entry=entry)
                out.op.entry.CopyFrom(entry_to_pb(entry))
            payload, compression = encode(data, compress=worth_compressing(entry.path, entry.size))
            out.op.content = payload
            out.op.compression = compression  # type: ignore[assignment]
            self.stats.bytes_sent += len(payload)

    async def _large(self, session: _Session, ch: Change) -> _Outgoing:
        assert ch.entry is not None
        entry = ch.entry
        op = self._op(ch)
        op.chunked = True
        old = ch.expected
        if old is not None and old.kind == Kind.FILE and old.size >= deltas.DELTA_THRESHOLD:
            sig = await session.signature(ch.path)
            if sig.blocks and bytes(sig.digest) == old.digest:
                blocks = [deltas.Block(b.offset, b.length, b.hash) for b in sig.blocks]
                steps = await asyncio.to_thread(self._delta, entry, blocks)
                if steps is not None:
                    op.delta = True
                    return _Outgoing(ch, op, steps=steps)
        return _Outgoing(ch, op, literal=[(0, entry.size)])

    def _delta(
        self, entry: Entry, blocks: list[deltas.Block]
    ) -> list[deltas.Copy | deltas.Literal] | None:
        try:
            fd = os.open(self.root / entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return deltas.delta(fd, entry.size, blocks)
        finally:
            os.close(fd)

    async def _stream(self, session: _Session, seq: int, index: int, out: _Outgoing) -> None:
        """Send a chunked op's content: literal ranges read from the file in
        bounded pieces, copy ranges as references."""
        assert out.change.entry is not None
        path = self.root / out.change.entry.path
        compress = worth_compressing(out.change.entry.path, out.change.entry.size)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return  # vanished: the sidecar reports it incomplete; the next round sees why
        try:
            steps: Iterable[deltas.Copy | deltas.Literal] = out.steps or [
                deltas.Literal(o, n) for o, n in out.literal
            ]
            for step in steps:
                if isinstance(step, deltas.Copy):
                    await session.call.write(
                        pb.ClientMessage(
                            chunk=pb.Chunk(
                                seq=seq,
                                op_index=index,
                                copy=pb.CopyRange(offset=step.offset, length=step.length),
                            )
                        )
                    )
                    continue
                pos, end = step.offset, step.offset + step.length
                while pos < end:
                    data = await asyncio.to_thread(
                        os.pread, fd, min(MAX_CHUNK_BYTES, end - pos), pos
                    )
                    if not data:
                        return
                    payload, compression = encode(data, compress=compress)
                    self.stats.bytes_sent += len(payload)
                    await session.call.write(
                        pb.ClientMessage(
                            chunk=pb.Chunk(
                                seq=seq,
                                op_index=index,
                                data=payload,
                                compression=compression,  # type: ignore[arg-type]
                            )
                        )
                    )
                    pos += len(data)
                    self.reporter.progress(0, len(data))
        finally:
            os.close(fd)
