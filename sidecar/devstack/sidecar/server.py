"""The sidecar's gRPC service (network I/O): translates protocol messages
into workspace calls and back. Disk work runs on a per-session worker
thread, so one slow session never stalls the event loop.

Authentication: ``Session`` checks the token in ``Hello``; ``Status``,
``Exec``, ``Conflicts``, ``Resolve`` and ``ReadFile`` check the
``authorization: Bearer`` metadata. Both compare in
constant time. The standard health service is unauthenticated.

Every resource a client can make the sidecar hold is bounded, whoever the
client is: a stream that sends no ``Hello`` ends after
``HELLO_TIMEOUT_SECONDS`` (at most ``MAX_HANDSHAKES`` wait at once), a
``Hello``'s ignore patterns are limited, at most ``MAX_SESSIONS`` sessions
are open, a session's outgoing messages (``OUTBOX_BYTES``) hold its reader
back when its client does not read them, and an Ack lists at most
``ACK_PROBLEM_BYTES`` of problems.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from devstack.core.delta import signature
from devstack.core.errors import (
    DevstackError,
    ProtocolError,
    StaleViewError,
    WorkspaceIOError,
)
from devstack.core.ignore import IgnoreRules
from devstack.core.logging import clip, get_logger
from devstack.core.manifest import gc_paused
from devstack.core.paths import MAX_PATH_BYTES
from devstack.core.protocol import (
    MAX_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    TOKEN_METADATA,
    StreamDecompressor,
    decode,
    decode_chunk,
    entry_from_pb,
    entry_to_pb,
    manifest_messages,
    token_matches,
)
from devstack.core.sync.model import OpKind, Outcome, StagedOp
from devstack.core.sync.wire import OP_KIND_FROM_PB, reason_to_pb
from devstack.sidecar import conflicts
from devstack.sidecar.execution import run_exec
from devstack.sidecar.workspace import RESOURCE_ERRNOS, Batch, Workspace
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc

if TYPE_CHECKING:
    from devstack.sidecar.reload import Reloader, ReloadEvent

log = get_logger("sidecar.server")
T = TypeVar("T")
P = ParamSpec("P")

SERVICE_NAME = "devstack.sync.v1.Sync"
MAX_SESSIONS = 16
#: Sessions at once with a compressed stream (each holds a window of up to
#: 16 MiB, ``STREAM_WINDOW_LOG``); a session past them gets zlib, file by
#: file, so the streams' memory stays bounded whatever the clients ask. The
#: default of ``SyncService(max_streams=)`` (``--max-streams``; 0: none).
MAX_STREAMS = 4
#: Seconds a new stream has to send its Hello (``DEVSTACK_HELLO_TIMEOUT``
#: overrides it, see ``command``); then it ends with DEADLINE_EXCEEDED.
HELLO_TIMEOUT_SECONDS = 10.0
#: Streams waiting for their Hello at once; more are refused at once with
#: RESOURCE_EXHAUSTED, so a flood of silent streams holds little memory
#: (open sessions, Status, Exec and health are not affected).
MAX_HANDSHAKES = 64
#: Ignore patterns one Hello may carry, and characters in one: each costs
#: the session's thread time to compile.
MAX_IGNORE_PATTERNS = 5000
MAX_PATTERN_CHARS = MAX_PATH_BYTES
#: Bytes of messages a session may have waiting for its client: past them
#: its reader takes no more messages (gRPC flow control then holds the
#: client back) until the client reads.
OUTBOX_BYTES = 4 << 20
#: Bytes of problems an Ack lists, well under ``MAX_MESSAGE_BYTES``; more
#: are only counted (``Ack.problems_omitted``).
ACK_PROBLEM_BYTES = 3 << 20
#: Problems of one batch that are logged, and conflicts sent as events, one
#: by one; the rest are counted in one line.
PROBLEMS_SHOWN = 20
#: Seconds shutdown waits for the session threads after the gRPC server's
#: grace: a thread stuck in a system call never keeps the sidecar running.
DRAIN_SECONDS = 2.0
#: Messages a session's reader hands its disk thread ahead of it: the event
#: loop parses the next message while the thread stages or commits the last
#: (each at most ``MAX_MESSAGE_BYTES``; gRPC flow control holds the client
#: back beyond that).
PIPELINE_DEPTH = 4


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status that ends a session because of ``error``: a bad
    frame is the client's fault; the sidecar's disk running out of
    descriptors or space is RESOURCE_EXHAUSTED (the client retries later);
    anything else is INTERNAL. Each with one readable line. A session whose
    view of the workspace went stale (``devstack resolve`` changed what sync
    last wrote) ends with ABORTED: the client reads the workspace again."""
    if isinstance(error, StaleViewError):
        return grpc.StatusCode.ABORTED, clip(str(error))
    if isinstance(error, WorkspaceIOError | OSError):
        code = error.errno
        if isinstance(error, OSError):
            name = errno.errorcode.get(code or 0, "")
            text = f"{error.strerror or error}" + (f" ({name})" if name else "")
        else:
            text = str(error)
        status = (
            grpc.StatusCode.RESOURCE_EXHAUSTED
            if code in RESOURCE_ERRNOS
            else grpc.StatusCode.INTERNAL
        )
        return status, clip(f"sidecar I/O error: {text}")
    if isinstance(error, DevstackError):
        return grpc.StatusCode.INVALID_ARGUMENT, clip(str(error))
    return grpc.StatusCode.INTERNAL, clip(f"sidecar error: {type(error).__name__}: {error}")


def event_to_pb(ev: ReloadEvent) -> pb.Event:
    return pb.Event(
        kind=ev.kind,
        message=ev.message,
        paths=list(ev.paths),
        exit_code=ev.exit_code,
        reason=ev.reason,
        output_tail=ev.output_tail,
        duration_ms=ev.duration_ms,
        reload_id=ev.reload_id,
    )


def _inline_content(op: StagedOp, o: pb.Op) -> bytes:
    """An op's inline content, decoded."""
    assert op.entry is not None
    return decode(o.content, o.compression, limit=min(op.entry.size, MAX_CHUNK_BYTES))


def _nothing() -> None:
    pass


def _raise(error: BaseException) -> None:
    raise error


def _ignore_rules(patterns: Sequence[str]) -> IgnoreRules:
    """A Hello's ignore rules, compiled (on the session's thread, as it
    takes a while); a ``ProtocolError`` for too many, too long or bad
    patterns."""
    if len(patterns) > MAX_IGNORE_PATTERNS:
        raise ProtocolError(
            f"{len(patterns)} ignore patterns: a Hello may carry at most {MAX_IGNORE_PATTERNS}"
        )
    longest = max(map(len, patterns), default=0)
    if longest > MAX_PATTERN_CHARS:
        raise ProtocolError(
            f"an ignore pattern of {longest} characters: at most {MAX_PATTERN_CHARS} are allowed"
        )
    try:
        return IgnoreRules.from_patterns(patterns)
    except Exception as e:  # pathspec raises several error types
        raise ProtocolError(f"bad ignore pattern: {e}") from e


@dataclass
class _Committed:
    """What one commit tells the client and the log, built on the disk
    thread: the Ack (problems listed up to ``ACK_PROBLEM_BYTES``), the
    applied paths, the first ``PROBLEMS_SHOWN`` problems and how many
    others there are (conflicts among them)."""

    ack: pb.ServerMessage
    applied: list[str]
    #: The applied paths whose content changed on disk (what the app reloads for).
    changed: list[str]
    shown: list[Outcome]
    more: int
    more_conflicts: int


def _committed(seq: int, outcomes: list[Outcome]) -> _Committed:
    applied = [o.path for o in outcomes if o.applied]
    changed = [o.path for o in outcomes if o.applied and o.changed]
    problems = [o for o in outcomes if not o.applied]
    msg = pb.ServerMessage()
    ack = msg.ack
    ack.seq = seq
    ack.applied = len(applied)
    room = ACK_PROBLEM_BYTES
    for i, o in enumerate(problems):
        p = ack.problems.add()
        _fill_problem(p, o)
        room -= p.ByteSize() + 8  # and its tag and length
        if room < 0:
            del ack.problems[-1]
            ack.problems_omitted = len(problems) - i
            break
    rest = problems[PROBLEMS_SHOWN:]
    conflicts = sum(o.conflict for o in rest)
    return _Committed(msg, applied, changed, problems[:PROBLEMS_SHOWN], len(rest), conflicts)


def _fill_problem(p: pb.Problem, o: Outcome) -> None:
    p.path = o.path  # whole: the client matches it against its ops
    p.reason = o.reason  # what a client that predates ``code`` reads
    p.message = clip(o.message)
    if o.code is not None:
        p.code = reason_to_pb(o.code)
        p.fix = o.fix
    if o.actual is not None:
        p.actual.CopyFrom(entry_to_pb(o.actual))


_Item = pb.ServerMessage | BaseException | None


class _Outbox:
    """A session's messages to its client, in order.

    ``put`` never waits: the disk thread's results and the reloader's
    events arrive in callbacks. Instead the reader waits for ``room``
    before it takes the next client message, so a client that does not
    read its Acks is held back by gRPC flow control rather than growing
    this queue. One message puts a bounded amount (an Ack of at most
    ``ACK_PROBLEM_BYTES``, ``PROBLEMS_SHOWN`` + 2 events, a signature), so
    the outbox holds at most ``OUTBOX_BYTES`` plus the output of the
    ``PIPELINE_DEPTH`` tasks in flight. ``offer`` is for the reloader's
    events, which a client that is behind misses: ``Status.last_reload``
    still has the latest."""

    def __init__(self) -> None:
        self._items: deque[tuple[_Item, int]] = deque()
        self.bytes = 0
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def put(self, item: _Item) -> None:
        size = item.ByteSize() if isinstance(item, pb.ServerMessage) else 0
        self._items.append((item, size))
        self.bytes += size
        self._ready.set()
        if self.bytes >= OUTBOX_BYTES:
            self._room.clear()

    def offer(self, item: pb.ServerMessage) -> bool:
        """``put`` unless the outbox is full; whether it was put."""
        if self.bytes >= OUTBOX_BYTES:
            return False
        self.put(item)
        return True

    async def get(self) -> _Item:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item, size = self._items.popleft()
        self.bytes -= size
        if self.bytes < OUTBOX_BYTES:
            self._room.set()
        return item

    @property
    def full(self) -> bool:
        return not self._room.is_set()

    async def room(self) -> None:
        """Wait until the outbox has room."""
        await self._room.wait()


@dataclass
class _Session:
    id: str
    client: str
    out: _Outbox
    #: The batch being staged, if any: discarded if the session ends first.
    #: Only the session's disk thread touches it.
    batch: Batch | None = None
    #: The session's compressed stream, if Welcome chose one: only the
    #: disk thread feeds it, every piece, in message order.
    stream: StreamDecompressor | None = None


class _DiskThread(Executor):
    """A session's disk thread: runs what it is given, in order.

    A daemon thread, unlike ``ThreadPoolExecutor``'s, which the interpreter
    joins at exit: a thread stuck in a system call (a file the app made
    that never ends, a read that blocks) must not keep a stopped sidecar
    from exiting. Shutdown waits for it at most ``DRAIN_SECONDS``."""

    def __init__(self, name: str) -> None:
        self._tasks: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]
        self._tasks = queue.SimpleQueue()
        self._closed = False
        self.thread = threading.Thread(target=self._work, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._closed:
            raise RuntimeError("the session's disk thread is shut down")
        future: Future[T] = Future()
        self._tasks.put((future, lambda: fn(*args, **kwargs)))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if not self._closed:
            self._closed = True
            self._tasks.put(None)
        if wait:
            self.thread.join()

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, call = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as e:
                future.set_exception(e)
            else:
                future.set_result(result)
            del task, future, call


class _Skipped:
    """What a task queued after a failed one returns: it did not run."""


_SKIPPED = _Skipped()


class _Pipeline:
    """A session's disk work, in message order, on the session's own thread.

    ``submit`` waits for room (at most ``PIPELINE_DEPTH`` tasks queued), not
    for the task: the event loop parses the next message while the thread
    stages or commits the last. Each task's ``then`` runs on the event loop
    thread, in submission order, with the task's result. The first task to
    raise ends the session (its error goes to the session's output, after
    everything before it) and every task queued after it is skipped, so
    nothing is staged or committed past a failure.

    One thread, not more: the work is many short system calls, and threads
    sharing them spend more handing the GIL to each other than they save."""

    def __init__(
        self,
        io: _DiskThread,
        loop: asyncio.AbstractEventLoop,
        session: _Session,
        bound: Any,
    ) -> None:
        self._io = io
        self._loop = loop
        self._session = session
        self._bound = bound
        self._room = asyncio.Semaphore(PIPELINE_DEPTH)
        self._broken = False  # the disk thread's view: a task raised
        #: The event loop's view: a failure was reported, read no further.
        self.failed = False

    async def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        then: Callable[[Any], None] | None = None,
    ) -> None:
        await self._room.acquire()
        try:
            future = self._io.submit(self._guarded, fn, args)
        except BaseException:
            self._room.release()
            raise
        future.add_done_callback(lambda f: self._post(f, then))

    def _guarded(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """Runs on the disk thread."""
        if self._broken:
            return _SKIPPED
        try:
            return fn(*args)
        except BaseException:
            self._broken = True
            raise

    def _post(self, future: Future[Any], then: Callable[[Any], None] | None) -> None:
        """Runs on the disk thread, task after task: hand the outcome to the
        event loop, which runs these callbacks in the order they come."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self._loop.call_soon_threadsafe(self._done, future, then)

    def _done(self, future: Future[Any], then: Callable[[Any], None] | None) -> None:
        self._room.release()
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            result = future.result()
            if result is _SKIPPED or then is None:
                return
            try:
                then(result)
                return
            except Exception as e:
                error = e
        self.fail(error)

    def fail(self, error: BaseException) -> None:
        """Report ``error`` as the session's end (only the first one)."""
        if self.failed:
            return
        self.failed = True
        if not isinstance(error, DevstackError | OSError):
            self._bound.error("session.crashed", exc_info=error)
        self._session.out.put(error)


class SyncService(sync_pb2_grpc.SyncServicer):
    """Serves one workspace to any number of authenticated sessions."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        token: str,
        workspace_name: str,
        reloader: Reloader | None = None,
        hello_timeout: float = HELLO_TIMEOUT_SECONDS,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.ws = workspace
        self._token = token
        self.workspace_name = workspace_name
        self.reloader = reloader
        self.hello_timeout = hello_timeout
        #: Sessions at once with a compressed stream (``MAX_STREAMS``).
        self.max_streams = max_streams
        #: Every session from the moment its Hello is accepted (its slot).
        self.sessions: dict[str, _Session] = {}
        self._handshakes = 0
        self._threads: set[_DiskThread] = set()
        self.started = time.monotonic()
        self.last_reload: pb.Event | None = None
        #: The conflicts batches reported, for ``Conflicts``.
        self.conflict_log = conflicts.ConflictLog()

    # --------------------------------------------------------------- events

    def on_reload_event(self, ev: ReloadEvent) -> None:
        """Reloader callback (event loop thread): broadcast to every session
        that has room for it; a session whose client is behind misses it
        (see ``_Outbox``). Never waits."""
        msg = event_to_pb(ev)
        if ev.kind != "reload-started":
            self.last_reload = msg
        for s in list(self.sessions.values()):
            if not s.out.offer(pb.ServerMessage(event=msg)):
                log.info("session.event_dropped", session=s.id, kind=ev.kind, queued=s.out.bytes)

    async def drain(self, timeout: float = DRAIN_SECONDS) -> int:
        """Wait up to ``timeout`` seconds for the session threads to finish
        their work (each discards its open batch last); how many are still
        busy, stuck in a system call or on something that never ends."""
        deadline = time.monotonic() + timeout
        threads = [t.thread for t in self._threads]

        def join() -> int:
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            return sum(t.is_alive() for t in threads)

        return await asyncio.to_thread(join)

    # --------------------------------------------------------------- auth

    def _authorized(self, context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_METADATA and isinstance(value, str):
                given = value.removeprefix("Bearer ").strip()
                return token_matches(self._token, given)
        return False

    async def _require_auth(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if not self._authorized(context):
            log.warning("auth.refused", peer=context.peer(), rpc="metadata")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or invalid token: pass the sidecar's token (authorization: Bearer)",
            )

    # --------------------------------------------------------------- Status

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusResponse:
        await self._require_auth(context)
        c = self.ws.counters
        resp = pb.StatusResponse(
            protocol_version=PROTOCOL_VERSION,
            workspace=self.workspace_name,
            sessions=len(self.sessions),
            batches_applied=c.batches_applied,
            files_written=c.files_written,
            bytes_received=c.bytes_received,
            conflicts=c.conflicts,
            uptime_seconds=time.monotonic() - self.started,
            replica=self.ws.replica,
        )
        if self.last_reload is not None:
            resp.last_reload.CopyFrom(self.last_reload)
        return resp

    # --------------------------------------------------------------- Exec

    async def Exec(
        self, request: pb.ExecRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.ExecEvent]:
        await self._require_auth(context)
        try:
            async for ev in run_exec(self.ws.root, request):
                yield ev
        except DevstackError as e:
            log.warning("exec.refused", error=str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, clip(str(e)))

    # --------------------------------------------------------------- Session

    async def Session(
        self,
        request_iterator: AsyncIterator[pb.ClientMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ServerMessage]:
        first = await self._hello(request_iterator, context)
        if first is None:
            return
        if first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "a session starts with Hello")
        hello = first.hello
        if not hello.token or not token_matches(self._token, hello.token):
            log.warning("auth.refused", peer=context.peer(), client=hello.client_id, rpc="session")
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid token: use the token from the sidecar's --token-file",
            )
        if hello.protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"protocol version {hello.protocol_version} is not supported; "
                f"this sidecar speaks {PROTOCOL_VERSION}",
            )
        if hello.workspace and hello.workspace != self.workspace_name:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this sidecar serves workspace {self.workspace_name!r}, "
                f"not {clip(hello.workspace)!r}",
            )
        if len(self.sessions) >= MAX_SESSIONS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions")

        # The slot is taken before anything is awaited, and given back
        # however the session ends.
        session = _Session(id=secrets.token_hex(4), client=hello.client_id or "?", out=_Outbox())
        streams = sum(1 for s in self.sessions.values() if s.stream is not None)
        if pb.COMPRESSION_ZSTD_STREAM in hello.stream_compressions and streams < self.max_streams:
            session.stream = StreamDecompressor()
        self.sessions[session.id] = session
        bound = log.bind(session=session.id, client=session.client)
        io = _DiskThread(f"session-{session.id}")
        self._threads = {t for t in self._threads if t.thread.is_alive()} | {io}
        loop = asyncio.get_running_loop()
        reader: asyncio.Task[None] | None = None

        async def run(fn: Callable[..., T], *args: Any) -> T:
            return await loop.run_in_executor(io, fn, *args)

        try:
            try:
                rules = await run(_ignore_rules, list(hello.ignore))
            except ProtocolError as e:
                bound.warning("session.refused", error=str(e))
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, clip(str(e)))
                return
            try:
                entries, pages = await run(self._manifest_pages, rules, hello.columnar_manifest)
            except (OSError, DevstackError) as e:
                code, message = status_for(e)
                bound.warning("session.manifest_failed", status=code.name, error=message)
                await context.abort(code, message)
                return
            bound.info("session.open", entries=entries, stream=session.stream is not None)
            yield pb.ServerMessage(
                welcome=pb.Welcome(
                    protocol_version=PROTOCOL_VERSION,
                    session_id=session.id,
                    workspace=self.workspace_name,
                    replica=self.ws.replica,
                    max_chunk_bytes=MAX_CHUNK_BYTES,
                    manifest_entries=entries,
                    forces_modes=self.ws.options.forces_modes,
                    stream_compression=(
                        pb.COMPRESSION_ZSTD_STREAM if session.stream else pb.COMPRESSION_NONE
                    ),
                )
            )
            for page in pages:
                yield page
            del pages
            pipe = _Pipeline(io, loop, session, bound)
            reader = asyncio.create_task(self._read(request_iterator, session, pipe, bound))
            while True:
                item = await session.out.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    code, message = status_for(item)
                    bound.warning("session.failed", status=code.name, error=message)
                    await context.abort(code, message)
                yield item
        finally:
            self.sessions.pop(session.id, None)
            if reader is not None:
                reader.cancel()
            # Queued behind the work in flight on the session's thread (which
            # owns the open batch); runs even if this coroutine is torn down
            # right now.
            io.submit(self._abort_open, session, bound)
            io.shutdown(wait=False)
            bound.info("session.closed")

    async def _hello(
        self,
        requests: AsyncIterator[pb.ClientMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.ClientMessage | None:
        """A new stream's first message (None if it ends first), within
        ``hello_timeout`` and while at most ``MAX_HANDSHAKES`` streams wait."""
        if self._handshakes >= MAX_HANDSHAKES:
            # Debug: a flood would flood the log. The streams that wait log
            # their timeout, at most MAX_HANDSHAKES per HELLO_TIMEOUT_SECONDS.
            log.debug("session.handshakes_full", peer=context.peer())
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "too many streams waiting to send Hello"
            )
        self._handshakes += 1
        try:
            return await asyncio.wait_for(anext(aiter(requests), None), self.hello_timeout)
        except TimeoutError:
            log.info("session.hello_timeout", peer=context.peer(), seconds=self.hello_timeout)
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no Hello within {self.hello_timeout:g} s: a session starts with Hello",
            )
            raise  # abort raises; never reached
        finally:
            self._handshakes -= 1

    async def _read(
        self,
        requests: AsyncIterator[pb.ClientMessage],
        session: _Session,
        pipe: _Pipeline,
        bound: Any,
    ) -> None:
        """Check each message's place in the session and hand its work to
        the session's disk thread without waiting for it."""
        last_seq = 0
        open_seq: int | None = None  # the batch being staged
        out = session.out
        try:
            async for msg in requests:
                if pipe.failed:
                    return
                if out.full:
                    bound.debug("session.backpressure", seq=last_seq, queued=out.bytes)
                    await out.room()
                which = msg.WhichOneof("msg")
                if which == "chunk":
                    ch = msg.chunk
                    if ch.seq != open_seq:
                        raise ProtocolError(f"chunk for batch {ch.seq}, which is not open")
                    await pipe.submit(self._chunk, session, ch)
                elif which == "batch":
                    seq = msg.batch.seq
                    if open_seq is not None:
                        raise ProtocolError(f"batch {seq} opened before {open_seq} committed")
                    if seq <= last_seq:
                        raise ProtocolError(f"batch numbers must increase: {seq} after {last_seq}")
                    last_seq = open_seq = seq
                    await pipe.submit(self._open, session, msg.batch)
                elif which == "commit":
                    if msg.commit.seq != open_seq:
                        raise ProtocolError(f"commit of batch {msg.commit.seq}, which is not open")
                    open_seq = None

                    def acknowledge(done: _Committed) -> None:
                        self._after_commit(session, done, bound)

                    await pipe.submit(self._commit, session, then=acknowledge)
                elif which == "signature_request":
                    await pipe.submit(
                        self._signature,
                        msg.signature_request.path,
                        then=lambda sig: out.put(pb.ServerMessage(signature=sig)),
                    )
                else:
                    raise ProtocolError(f"unexpected {which or 'empty'} message in a session")
            # The end of the stream, after everything queued before it.
            await pipe.submit(_nothing, then=lambda _: out.put(None))
        except asyncio.CancelledError:
            raise
        except (DevstackError, OSError) as e:
            # After what is already queued (an earlier commit is still acked).
            await pipe.submit(_raise, e)
        except grpc.RpcError as e:  # the peer went away
            bound.info("session.ended", cause=type(e).__name__)
            out.put(None)
        except Exception as e:
            pipe.fail(e)

    # The session's disk thread (see _Pipeline): each runs there, in the
    # order of the messages.

    def _open(self, session: _Session, msg: pb.Batch) -> None:
        session.batch = self._open_batch(msg, session.stream)

    def _chunk(self, session: _Session, ch: pb.Chunk) -> None:
        batch = session.batch
        if batch is None or batch.seq != ch.seq:  # the reader checked; cannot happen
            raise ProtocolError(f"chunk for batch {ch.seq}, which is not open")
        if ch.WhichOneof("body") == "copy":
            batch.copy(ch.op_index, ch.copy.offset, ch.copy.length)
        else:
            batch.write(ch.op_index, decode_chunk(ch.data, ch.compression, session.stream))

    def _commit(self, session: _Session) -> _Committed:
        batch, session.batch = session.batch, None
        if batch is None:  # the reader checked; cannot happen
            raise ProtocolError("commit of a batch that is not open")
        outcomes = batch.commit()
        self.conflict_log.observe(outcomes)
        return _committed(batch.seq, outcomes)

    def _abort_open(self, session: _Session, bound: Any) -> None:
        batch, session.batch = session.batch, None
        if batch is not None:
            batch.abort()
            bound.info("batch.aborted", seq=batch.seq)

    def _manifest_pages(
        self, rules: IgnoreRules, columnar: bool
    ) -> tuple[int, list[pb.ServerMessage]]:
        """The workspace manifest's size and its pages, built in bulk on the
        session's thread (columns, if the client reads them). Its entries are
        dropped before the garbage collector runs again: they hold no cycles,
        and walking them would only cost time."""
        with gc_paused():
            manifest = self.ws.manifest(rules)
            entries = len(manifest)
            pages = manifest_messages(list(manifest.values()), columnar=columnar)
            del manifest
        return entries, pages

    def _after_commit(self, session: _Session, done: _Committed, bound: Any) -> None:
        """Acknowledge a commit (event loop thread): the Ack, the first
        problems as log lines (conflicts also as events), one line and one
        event for the rest, and the applied paths to the reloader."""
        ack = done.ack.ack
        out = session.out
        out.put(done.ack)
        bound.info(
            "batch.applied",
            seq=ack.seq,
            applied=ack.applied,
            problems=len(done.shown) + done.more,
            unlisted=ack.problems_omitted,
        )
        for o in done.shown:
            if o.conflict:
                bound.warning("sync.conflict", path=o.path, message=o.message)
                event = pb.Event(kind="conflict", message=clip(o.message), paths=[o.path])
                out.put(pb.ServerMessage(event=event))
            else:
                bound.warning(
                    "sync.rejected",
                    path=o.path,
                    reason=o.reason,
                    code=o.code.value if o.code else "",
                    message=o.message,
                )
        if done.more:
            bound.warning(
                "sync.more_problems", seq=ack.seq, problems=done.more, conflicts=done.more_conflicts
            )
        if done.more_conflicts:
            message = f"{done.more_conflicts} more conflict(s) in batch {ack.seq}"
            out.put(pb.ServerMessage(event=pb.Event(kind="conflict", message=message)))
        if done.applied:
            out.put(
                pb.ServerMessage(
                    event=pb.Event(
                        kind="applied",
                        message=f"applied {len(done.applied)} change(s) of batch {ack.seq}",
                        paths=done.applied[:50],
                    )
                )
            )
            if self.reloader is not None and done.changed:
                self.reloader.notify(done.changed)

    def _open_batch(self, msg: pb.Batch, stream: StreamDecompressor | None) -> Batch:
        # Every stream piece first, in op order, whatever becomes of its op:
        # the stream needs each one (a StreamError ends the session).
        streamed = {
            i: decode(
                o.content, o.compression, limit=min(o.entry.size, MAX_CHUNK_BYTES), stream=stream
            )
            for i, o in enumerate(msg.ops)
            if o.compression == pb.COMPRESSION_ZSTD_STREAM
        }
        ops: list[StagedOp] = []
        kinds = OP_KIND_FROM_PB
        for i, o in enumerate(msg.ops):
            e = o.entry  # an unset entry reads as the default one, kind 0
            ops.append(
                StagedOp(
                    i,
                    kinds.get(o.kind),  # None (refused, bad-op) for one it does not know
                    e.path,
                    entry_from_pb(e) if e.kind else None,
                    entry_from_pb(o.expected) if o.HasField("expected") else None,
                    o.expected_absent,
                    o.from_path,
                    o.force,
                    o.delta,
                    o.chunked,
                )
            )
        batch = self.ws.open_batch(msg.seq, ops)
        write = OpKind.WRITE
        inline = [
            (op.index, o)
            for op, o in zip(ops, msg.ops, strict=True)
            if op.kind is write and not op.chunked
        ]

        def content(op: StagedOp, o: pb.Op) -> bytes:
            got = streamed.get(op.index)
            return _inline_content(op, o) if got is None else got

        batch.inline_many(inline, content)
        return batch

    def _signature(self, path: str) -> pb.Signature:
        try:
            src = self.ws.signature_source(path)
        except DevstackError:
            src = None
        if src is None:
            return pb.Signature(path=path)
        fd, size, digest = src
        try:
            blocks = signature(fd, size)
        finally:
            os.close(fd)
        return pb.Signature(
            path=path,
            digest=digest,
            blocks=[pb.Block(offset=b.offset, length=b.length, hash=b.hash) for b in blocks],
        )

    # --------------------------------------------------------------- conflicts

    async def _abort_for(self, context: grpc.aio.ServicerContext[Any, Any], e: Exception) -> None:
        """End a call for ``e``: a bad or unsafe path is INVALID_ARGUMENT,
        nothing there NOT_FOUND, a folder FAILED_PRECONDITION, the rest as
        ``status_for`` says."""
        if isinstance(e, FileNotFoundError | NotADirectoryError):
            await context.abort(grpc.StatusCode.NOT_FOUND, "nothing is there in the workspace")
        if isinstance(e, IsADirectoryError):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, "a folder in the workspace, not a file"
            )
        code, message = status_for(e)
        await context.abort(code, message)

    async def Conflicts(
        self, request: pb.ConflictsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ConflictsResponse:
        await self._require_auth(context)
        try:
            rules = await asyncio.to_thread(_ignore_rules, list(request.ignore))
            return await asyncio.to_thread(
                conflicts.pod_entries, self.ws, rules, list(request.paths), self.conflict_log
            )
        except (DevstackError, OSError) as e:
            log.warning("conflicts.refused", error=str(e))
            await self._abort_for(context, e)
            raise  # abort raises; never reached

    async def Resolve(
        self, request: pb.ResolveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ResolveResponse:
        await self._require_auth(context)
        if request.take not in (pb.SIDE_LAPTOP, pb.SIDE_POD):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "take: laptop or pod")
        try:
            results = await asyncio.to_thread(
                conflicts.settle, self.ws, list(request.items), self.conflict_log
            )
        except (DevstackError, OSError) as e:
            log.warning("resolve.refused", error=str(e))
            await self._abort_for(context, e)
            raise  # abort raises; never reached
        done = [r.path for r in results if r.resolved]
        side = "laptop" if request.take == pb.SIDE_LAPTOP else "pod"
        log.info("conflicts.resolved", take=side, resolved=len(done), asked=len(results))
        notified = 0
        if done:
            message = f"{len(done)} path(s) settled: the {side}'s version is kept"
            event = pb.ServerMessage(
                event=pb.Event(kind="resolved", message=message, paths=done[:50])
            )
            for s in list(self.sessions.values()):
                s.out.offer(event)
                if request.take == pb.SIDE_LAPTOP:
                    # Its view of these paths is stale: it reads the
                    # workspace again, and then sends the laptop's version.
                    s.out.put(
                        StaleViewError(
                            f"devstack resolve --take laptop settled {len(done)} path(s): "
                            "reading the workspace again"
                        )
                    )
                notified += 1
        return pb.ResolveResponse(results=results, sessions_notified=notified)

    async def ReadFile(
        self, request: pb.ReadFileRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.FileChunk]:
        await self._require_auth(context)
        path = request.path
        try:
            entry, fd = await asyncio.to_thread(conflicts.open_for_read, self.ws, path)
        except (DevstackError, OSError) as e:
            log.warning("read_file.refused", path=path, error=str(e))
            await self._abort_for(context, e)
            return
        try:
            yield pb.FileChunk(entry=entry_to_pb(entry))
            if fd is None:  # a symlink: its target is the content
                return
            hasher = conflicts.content_hasher()
            offset, left = 0, entry.size
            while left > 0:
                data = await asyncio.to_thread(conflicts.read_piece, fd, offset, left, hasher)
                if not data:
                    break  # it shrank meanwhile: the digest says so
                offset += len(data)
                left -= len(data)
                yield pb.FileChunk(data=data)
            yield pb.FileChunk(digest=hasher.digest())
            log.info("read_file.sent", path=path, bytes=offset)
        except OSError as e:
            log.warning("read_file.failed", path=path, error=str(e))
            await self._abort_for(context, e)
        finally:
            if fd is not None:
                os.close(fd)


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Streams per connection (a client opens more connections for more),
    # and connections with no call for two minutes are closed. No maximum
    # connection age: a session lives as long as `connect` runs.
    ("grpc.max_concurrent_streams", 100),
    ("grpc.max_connection_idle_ms", 120_000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


async def start_server(
    service: SyncService, listen: str
) -> tuple[grpc.aio.Server, HealthServicer, int]:
    """Bind and start; returns the server, its health servicer and the port."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    sync_pb2_grpc.add_SyncServicer_to_server(service, server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return server, health, port
