"""The sidecar's gRPC service (network I/O): translates protocol messages
into workspace calls and back. Disk work runs on a per-session worker
thread, so one slow session never stalls the event loop.

Authentication: ``Session`` checks the token in ``Hello``; ``Status`` and
``Exec`` check the ``authorization: Bearer`` metadata. Both compare in
constant time. The standard health service is unauthenticated.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from devstack.core.delta import signature
from devstack.core.errors import DevstackError, ProtocolError, WorkspaceIOError
from devstack.core.ignore import IgnoreRules
from devstack.core.logging import get_logger
from devstack.core.protocol import (
    MANIFEST_PAGE,
    MAX_CHUNK_BYTES,
    MAX_MESSAGE_BYTES,
    OP_NAMES,
    PROTOCOL_VERSION,
    TOKEN_METADATA,
    decode,
    decode_chunk,
    entry_from_pb,
    entry_to_pb,
    token_matches,
)
from devstack.sidecar.execution import run_exec
from devstack.sidecar.workspace import RESOURCE_ERRNOS, Batch, Outcome, StagedOp, Workspace
from devstack.sync.v1 import sync_pb2 as pb
from devstack.sync.v1 import sync_pb2_grpc

if TYPE_CHECKING:
    from devstack.sidecar.reload import Reloader, ReloadEvent

log = get_logger("sidecar.server")
T = TypeVar("T")

SERVICE_NAME = "devstack.sync.v1.Sync"
MAX_SESSIONS = 16


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status that ends a session because of ``error``: a bad
    frame is the client's fault; the sidecar's disk running out of
    descriptors or space is RESOURCE_EXHAUSTED (the client retries later);
    anything else is INTERNAL. Each with one readable line."""
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
        return status, f"sidecar I/O error: {text}"
    if isinstance(error, DevstackError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    return grpc.StatusCode.INTERNAL, f"sidecar error: {type(error).__name__}: {error}"


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


def _outcome_to_pb(o: Outcome) -> pb.Problem:
    p = pb.Problem(path=o.path, reason=o.reason, message=o.message)
    if o.actual is not None:
        p.actual.CopyFrom(entry_to_pb(o.actual))
    return p


@dataclass
class _Session:
    id: str
    client: str
    out: asyncio.Queue[pb.ServerMessage | BaseException | None] = field(
        default_factory=asyncio.Queue
    )
    #: The batch being staged, if any: discarded if the session ends first.
    batch: Batch | None = None


class SyncService(sync_pb2_grpc.SyncServicer):
    """Serves one workspace to any number of authenticated sessions."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        token: str,
        workspace_name: str,
        reloader: Reloader | None = None,
    ) -> None:
        self.ws = workspace
        self._token = token
        self.workspace_name = workspace_name
        self.reloader = reloader
        self.sessions: dict[str, _Session] = {}
        self.started = time.monotonic()
        self.last_reload: pb.Event | None = None

    # --------------------------------------------------------------- events

    def on_reload_event(self, ev: ReloadEvent) -> None:
        """Reloader callback (event loop thread): broadcast to every session."""
        msg = event_to_pb(ev)
        if ev.kind != "reload-started":
            self.last_reload = msg
        for s in list(self.sessions.values()):
            s.out.put_nowait(pb.ServerMessage(event=msg))

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
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    # --------------------------------------------------------------- Session

    async def Session(
        self,
        request_iterator: AsyncIterator[pb.ClientMessage],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[pb.ServerMessage]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
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
                f"this sidecar serves workspace {self.workspace_name!r}, not {hello.workspace!r}",
            )
        if len(self.sessions) >= MAX_SESSIONS:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many sessions")

        session = _Session(id=secrets.token_hex(4), client=hello.client_id or "?")
        bound = log.bind(session=session.id, client=session.client)
        io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"session-{session.id}")
        loop = asyncio.get_running_loop()

        async def run(fn: Callable[..., T], *args: Any) -> T:
            return await loop.run_in_executor(io, fn, *args)

        try:
            rules = IgnoreRules.from_patterns(list(hello.ignore))
        except Exception as e:  # pathspec raises several error types
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad ignore pattern: {e}")
            return
        try:
            manifest = await run(self.ws.manifest, rules)
        except (OSError, DevstackError) as e:
            bound.warning("session.manifest_failed", error=str(e))
            code, message = status_for(e)
            io.shutdown(wait=False)
            await context.abort(code, message)
            return
        bound.info("session.open", entries=len(manifest))
        yield pb.ServerMessage(
            welcome=pb.Welcome(
                protocol_version=PROTOCOL_VERSION,
                session_id=session.id,
                workspace=self.workspace_name,
                replica=self.ws.replica,
                max_chunk_bytes=MAX_CHUNK_BYTES,
                manifest_entries=len(manifest),
                forces_modes=self.ws.options.forces_modes,
            )
        )
        entries = list(manifest.values())
        for i in range(0, max(len(entries), 1), MANIFEST_PAGE):
            page = [entry_to_pb(e) for e in entries[i : i + MANIFEST_PAGE]]
            yield pb.ServerMessage(
                manifest=pb.ManifestPage(entries=page, last=i + MANIFEST_PAGE >= len(entries))
            )
        self.sessions[session.id] = session
        reader = asyncio.create_task(self._read(request_iterator, session, run, bound))
        try:
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
            reader.cancel()
            if session.batch is not None:
                # Queued behind any write in flight on the session's thread;
                # runs even if this coroutine is torn down right now.
                io.submit(session.batch.abort)
                bound.info("batch.aborted", seq=session.batch.seq)
                session.batch = None
            io.shutdown(wait=False)
            bound.info("session.closed")

    async def _read(
        self,
        requests: AsyncIterator[pb.ClientMessage],
        session: _Session,
        run: Callable[..., Any],
        bound: Any,
    ) -> None:
        last_seq = 0
        try:
            async for msg in requests:
                which = msg.WhichOneof("msg")
                if which == "batch":
                    if session.batch is not None:
                        raise ProtocolError(
                            f"batch {msg.batch.seq} opened before {session.batch.seq} committed"
                        )
                    if msg.batch.seq <= last_seq:
                        raise ProtocolError(
                            f"batch numbers must increase: {msg.batch.seq} after {last_seq}"
                        )
                    last_seq = msg.batch.seq
                    session.batch = await run(self._open_batch, msg.batch)
                elif which == "chunk":
                    ch = msg.chunk
                    batch = session.batch
                    if batch is None or ch.seq != batch.seq:
                        raise ProtocolError(f"chunk for batch {ch.seq}, which is not open")
                    if ch.WhichOneof("body") == "copy":
                        await run(batch.copy, ch.op_index, ch.copy.offset, ch.copy.length)
                    else:
                        await run(batch.write, ch.op_index, decode_chunk(ch.data, ch.compression))
                elif which == "commit":
                    done = session.batch
                    if done is None or msg.commit.seq != done.seq:
                        raise ProtocolError(f"commit of batch {msg.commit.seq}, which is not open")
                    session.batch = None
                    outcomes = await run(done.commit)
                    self._after_commit(session, done, outcomes, bound)
                elif which == "signature_request":
                    session.out.put_nowait(
                        pb.ServerMessage(
                            signature=await run(self._signature, msg.signature_request.path)
                        )
                    )
                else:
                    raise ProtocolError(f"unexpected {which or 'empty'} message in a session")
            session.out.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except (DevstackError, OSError) as e:
            session.out.put_nowait(e)
        except grpc.RpcError as e:  # the peer went away
            bound.info("session.ended", cause=type(e).__name__)
            session.out.put_nowait(None)
        except Exception as e:
            bound.exception("session.crashed")
            session.out.put_nowait(e)

    def _after_commit(
        self, session: _Session, batch: Batch, outcomes: list[Outcome], bound: Any
    ) -> None:
        applied = [o.path for o in outcomes if o.applied]
        problems = [o for o in outcomes if not o.applied]
        ack = pb.Ack(
            seq=batch.seq, applied=len(applied), problems=[_outcome_to_pb(o) for o in problems]
        )
        session.out.put_nowait(pb.ServerMessage(ack=ack))
        bound.info("batch.applied", seq=batch.seq, applied=len(applied), problems=len(problems))
        for o in problems:
            if o.reason == "conflict":
                bound.warning("sync.conflict", path=o.path, message=o.message)
                session.out.put_nowait(
                    pb.ServerMessage(
                        event=pb.Event(kind="conflict", message=o.message, paths=[o.path])
                    )
                )
            else:
                bound.warning("sync.rejected", path=o.path, reason=o.reason, message=o.message)
        if applied:
            session.out.put_nowait(
                pb.ServerMessage(
                    event=pb.Event(
                        kind="applied",
                        message=f"applied {len(applied)} change(s) of batch {batch.seq}",
                        paths=applied[:50],
                    )
                )
            )
            if self.reloader is not None:
                self.reloader.notify(applied)

    def _open_batch(self, msg: pb.Batch) -> Batch:
        ops: list[StagedOp] = []
        for i, o in enumerate(msg.ops):
            kind = OP_NAMES.get(o.kind)
            entry = entry_from_pb(o.entry) if o.HasField("entry") and o.entry.kind else None
            path = o.entry.path
            staged = StagedOp(
                index=i,
                kind=kind or "",
                path=path,
                entry=entry,
                expected=entry_from_pb(o.expected) if o.HasField("expected") else None,
                expected_absent=o.expected_absent,
                from_path=o.from_path,
                force=o.force,
                delta=o.delta,
                chunked=o.chunked,
            )
            if kind is None:
                staged.problem = Outcome(
                    False, path, "bad-op", f"{path!r}: unknown op kind {o.kind}"
                )
            ops.append(staged)
        batch = self.ws.open_batch(msg.seq, ops)
        for i, o in enumerate(msg.ops):
            op = ops[i]
            if op.kind == "write" and not op.chunked and op.problem is None:
                assert op.entry is not None
                try:
                    limit = min(op.entry.size, MAX_CHUNK_BYTES)
                    batch.inline(i, decode(o.content, o.compression, limit=limit))
                except ProtocolError as e:
                    op.problem = Outcome(False, op.path, e.reason, str(e))
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


SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
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
